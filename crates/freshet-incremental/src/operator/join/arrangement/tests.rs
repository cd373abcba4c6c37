//! The arrangement against the multiset it must hold.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, Int32Array, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;

use super::*;
use crate::operator::join::frozen::SavedIndex;

/// Keys of one or two columns (an integer key, or a row-format one), of the key column.
struct Codec {
    codec: KeyCodec,
    two_columns: bool,
}

impl Codec {
    fn new(two_columns: bool) -> Self {
        let types = if two_columns {
            vec![DataType::Int32, DataType::Int32]
        } else {
            vec![DataType::Int32]
        };
        Self {
            codec: KeyCodec::new(&types).unwrap(),
            two_columns,
        }
    }

    fn encode(&self, column: &ArrayRef) -> Keys {
        let columns = if self.two_columns {
            vec![column.clone(), column.clone()]
        } else {
            vec![column.clone()]
        };
        self.codec.encode(&columns).unwrap()
    }
}

/// The multiset kept at each key, from the entries: (key, text) → weight.
fn contents(arrangement: &Arrangement, codec: &Codec, keys: &[i32]) -> BTreeMap<(i32, Option<String>), i64> {
    let mut out = BTreeMap::new();
    for &key in keys {
        let encoded = codec.encode(&(Arc::new(Int32Array::from(vec![key])) as ArrayRef));
        let (rows, weights): (Vec<u64>, Vec<i64>) = arrangement.entries(encoded.key(0)).unzip();
        let columns = arrangement.gather(&rows).unwrap();
        let Some(texts) = columns.get(1) else { continue };
        let texts = texts.as_any().downcast_ref::<StringArray>().unwrap();
        let mut total = 0;
        for (i, weight) in weights.iter().enumerate() {
            let text = texts.is_valid(i).then(|| texts.value(i).to_string());
            *out.entry((key, text)).or_default() += weight;
            total += weight;
        }
        assert_eq!(arrangement.weight(encoded.key(0)), total);
    }
    out.retain(|_, weight| *weight != 0);
    out
}

/// The multiset a checkpoint saves ([`Arrangement::contents`]): (key, text) → weight.
fn saved(arrangement: &Arrangement) -> BTreeMap<(i32, Option<String>), i64> {
    let mut out = BTreeMap::new();
    for change in arrangement.contents().unwrap().0 {
        let data = change.data();
        let keys = data.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        let texts = data.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for (i, weight) in change.weights().values().iter().enumerate() {
            let text = texts.is_valid(i).then(|| texts.value(i).to_string());
            *out.entry((keys.value(i), text)).or_default() += weight;
        }
    }
    out.retain(|_, weight| *weight != 0);
    out
}

/// The arrangement as a checkpoint saves it with its index and a restore takes it back.
fn refrozen(arrangement: &Arrangement, codec: &Codec) -> Arrangement {
    let (changes, _) = arrangement.contents().unwrap();
    let keys: Vec<Keys> = changes.iter().map(|c| codec.encode(c.data().column(0))).collect();
    let (index, positions) = super::super::frozen::build_index(&keys).unwrap();
    let weights = changes.iter().map(|c| c.weights().clone()).collect();
    let frozen = Frozen::new(&index, &positions, weights).unwrap();
    let data = changes.iter().map(ChangeBatch::data).collect();
    Arrangement::with_frozen(&arrangement.schema, &codec.codec, data, frozen, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Epochs of inserts and deletes of a few keys' rows: the entries always sum to the
    /// multiset inserted minus the one deleted, through consolidation (at once — of any delta,
    /// or of one deleting only rows held before it, whose keys can be replaced whole — or left
    /// to a later epoch as a replayed delta leaves it), batch merging and rewriting, and
    /// through saving with an index and taking the rows back frozen after some epochs — some
    /// taken back as a whole state with the epoch after it as two deltas indexed beside it (see
    /// [`Arrangement::freeze_more`]), which later epochs change — and through epochs deferred
    /// while the arrangement held no other rows, indexed at once when settled (see
    /// [`Arrangement::defer`]) (integer and row-format keys).
    #[test]
    fn entries_sum_to_the_multiset(epochs in prop::collection::vec((
        prop::collection::vec((0..4i32, prop::option::of(0..3u8), 1..3i64, any::<bool>()), 0..20),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    ), 1..40), two_columns in any::<bool>()) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let codec = Codec::new(two_columns);
        let mut arrangement = Arrangement::new(&schema, &codec.codec).unwrap();
        let mut expected: BTreeMap<(i32, Option<String>), i64> = BTreeMap::new();
        let mut deferred = 0;
        for (epoch, freeze, later, replacing, as_delta, defer) in epochs {
            let deferring = defer && arrangement.can_defer();
            if !deferring {
                arrangement.settle().unwrap();
            }
            let whole = (as_delta && !deferring).then(|| refrozen(&arrangement, &codec));
            // A deletion takes away what is there, never more; with `replacing`, only what was
            // there before the epoch (as an aggregate's output, or a projection of it, deletes).
            let mut rows = Vec::new();
            let mut pending = expected.clone();
            let mut earlier = expected.clone();
            for (key, text, weight, delete) in epoch {
                let row = (key, text.map(|t| format!("text {t}")));
                let have = match replacing {
                    true => *earlier.get(&row).unwrap_or(&0),
                    false => *pending.get(&row).unwrap_or(&0),
                };
                let weight = if delete { -weight.min(have) } else { weight };
                if weight < 0 {
                    *earlier.entry(row.clone()).or_default() += weight;
                }
                *pending.entry(row.clone()).or_default() += weight;
                rows.push((row, weight));
            }
            let data = RecordBatch::try_new(schema.clone(), vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|((k, _), _)| *k))),
                Arc::new(StringArray::from_iter(rows.iter().map(|((_, t), _)| t.clone()))),
            ]).unwrap();
            let weights = Int64Array::from_iter_values(rows.iter().map(|(_, w)| *w));
            let keys = codec.encode(data.column(0));
            let consolidate = match (later, replacing) {
                (true, _) => Consolidate::Later,
                (false, true) => Consolidate::DueReplacing,
                (false, false) => Consolidate::Due,
            };
            pending.retain(|_, weight| *weight != 0);
            expected = pending;
            if deferring {
                arrangement.defer(&codec.codec, &data, &weights, &keys, &vec![true; rows.len()]).unwrap();
                deferred += rows.iter().filter(|(_, w)| *w != 0).count() as u64;
                prop_assert_eq!(arrangement.len(), deferred);
                prop_assert_eq!(arrangement.contents().is_err(), deferred > 0, "saved with rows not indexed");
                continue;
            }
            arrangement.apply(&data, &weights, &keys, &vec![true; rows.len()], consolidate).unwrap();
            prop_assert_eq!(&contents(&arrangement, &codec, &[0, 1, 2, 3]), &expected);
            prop_assert_eq!(&saved(&arrangement), &expected);
            prop_assert!(arrangement.stored >= arrangement.len());
            let keys: BTreeMap<i32, ()> = expected.keys().map(|(k, _)| (*k, ())).collect();
            let listed = arrangement.keys().filter(|&key| arrangement.weight(key) != 0).count();
            prop_assert_eq!(listed, keys.len());
            if let Some(mut layered) = whole {
                // The epoch's changed rows as two deltas, each saved with its index.
                let changed: Vec<u32> = (0..rows.len() as u32).filter(|&i| weights.value(i as usize) != 0).collect();
                let (first, second) = changed.split_at(changed.len() / 2);
                prop_assert!(layered.layer_room() > 0);
                let mut deltas = Vec::new();
                for half in [first, second] {
                    let half = UInt32Array::from(half.to_vec());
                    let data = datafusion::arrow::compute::take_record_batch(&data, &half).unwrap();
                    let weights = datafusion::arrow::compute::take(&weights, &half, None).unwrap();
                    let weights = weights.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                    let delta_keys = codec.encode(data.column(0));
                    let (per_key, positions) = super::super::frozen::build_index(&[delta_keys]).unwrap();
                    deltas.push((vec![data], SavedIndex { per_key, positions, weights: vec![weights] }));
                }
                layered.freeze_more(deltas).unwrap();
                prop_assert_eq!(&contents(&layered, &codec, &[0, 1, 2, 3]), &expected);
                prop_assert_eq!(&saved(&layered), &expected);
                let listed: Vec<Key<'_>> = layered.keys().filter(|&key| layered.weight(key) != 0).collect();
                prop_assert_eq!(listed.len(), keys.len());
                arrangement = layered;
            } else if freeze {
                arrangement = refrozen(&arrangement, &codec);
                prop_assert_eq!(&contents(&arrangement, &codec, &[0, 1, 2, 3]), &expected);
                prop_assert_eq!(&saved(&arrangement), &expected);
            }
        }
        arrangement.settle().unwrap();
        prop_assert_eq!(&contents(&arrangement, &codec, &[0, 1, 2, 3]), &expected);
        prop_assert_eq!(&saved(&arrangement), &expected);
    }
}

#[test]
fn deleting_a_row_never_inserted_is_an_internal_error() {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)]));
    let codec = KeyCodec::new(&[DataType::Int32]).unwrap();
    let mut arrangement = Arrangement::new(&schema, &codec).unwrap();
    let data = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![7]))]).unwrap();
    let keys = codec.encode(&[data.column(0).clone()]).unwrap();
    let error = arrangement
        .apply(&data, &Int64Array::from(vec![-1]), &keys, &[true], Consolidate::Due)
        .unwrap_err();
    assert!(error.to_string().contains("deleted a row it never had"), "{error}");
}

/// An epoch deleting only rows held before it, and every row of a key it inserts at (an
/// aggregate replacing its groups' rows), keeps the insertions without looking at the rows:
/// frozen ones shadowed, no row gathered, and the same multiset as a consolidation by
/// comparing rows.
#[test]
fn an_epoch_deleting_earlier_rows_replaces_whole_keys() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let codec = Codec::new(true);
    let batch = |rows: &[(i32, &str, i64)]| {
        let data = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let weights = Int64Array::from_iter_values(rows.iter().map(|r| r.2));
        (data, weights)
    };
    let apply = |arrangement: &mut Arrangement, rows: &[(i32, &str, i64)], consolidate: Consolidate| {
        let (data, weights) = batch(rows);
        let keys = codec.encode(data.column(0));
        arrangement
            .apply(&data, &weights, &keys, &vec![true; rows.len()], consolidate)
            .unwrap();
    };
    let expected: BTreeMap<(i32, Option<String>), i64> = [
        ((0, Some("new".to_string())), 1),
        ((1, Some("kept".to_string())), 2),
        ((1, Some("new".to_string())), 1),
        ((2, Some("new".to_string())), 3),
    ]
    .into_iter()
    .collect();
    for (frozen, consolidate) in [
        (false, Consolidate::DueReplacing),
        (true, Consolidate::DueReplacing),
        (false, Consolidate::Due),
        (true, Consolidate::Due),
    ] {
        let mut arrangement = Arrangement::new(&schema, &codec.codec).unwrap();
        // Key 0 one row, key 1 two rows (one of them twice), key 2 one row twice.
        let first = [(0, "old", 1), (1, "old", 1), (1, "kept", 2), (2, "old", 2)];
        apply(&mut arrangement, &first, Consolidate::Due);
        if frozen {
            arrangement = refrozen(&arrangement, &codec);
        }
        // Key 0 and 2 replaced whole; key 1 loses one row of three (not whole).
        let second = [
            (0, "old", -1),
            (0, "new", 1),
            (1, "old", -1),
            (1, "new", 1),
            (2, "old", -2),
            (2, "new", 3),
        ];
        apply(&mut arrangement, &second, consolidate);
        assert_eq!(
            contents(&arrangement, &codec, &[0, 1, 2]),
            expected,
            "{frozen} {consolidate:?}"
        );
        assert_eq!(saved(&arrangement), expected, "{frozen} {consolidate:?}");
        assert_eq!(arrangement.len(), 4, "{frozen} {consolidate:?}");
        if consolidate == Consolidate::DueReplacing {
            for key in [0, 2] {
                let keys = codec.encode(&(Arc::new(Int32Array::from(vec![key])) as ArrayRef));
                let entries: Vec<(u64, i64)> = arrangement.entries(keys.key(0)).collect();
                assert_eq!(entries.len(), 1, "key {key}: the insertion alone ({frozen})");
            }
        }
    }
}
