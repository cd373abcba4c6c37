//! The arrangement against the multiset it must hold.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Int32Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;

use super::*;

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
    /// multiset inserted minus the one deleted, through consolidation (at once, or left to a
    /// later epoch as a replayed delta leaves it), batch merging and rewriting, and through
    /// saving with an index and taking the rows back frozen after some epochs (integer and
    /// row-format keys).
    #[test]
    fn entries_sum_to_the_multiset(epochs in prop::collection::vec((
        prop::collection::vec((0..4i32, prop::option::of(0..3u8), 1..3i64, any::<bool>()), 0..20),
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
        for (epoch, freeze, later) in epochs {
            // A deletion takes away what is there, never more.
            let mut rows = Vec::new();
            let mut pending = expected.clone();
            for (key, text, weight, delete) in epoch {
                let row = (key, text.map(|t| format!("text {t}")));
                let have = pending.entry(row.clone()).or_default();
                let weight = if delete { -weight.min(*have) } else { weight };
                *have += weight;
                rows.push((row, weight));
            }
            let data = RecordBatch::try_new(schema.clone(), vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|((k, _), _)| *k))),
                Arc::new(StringArray::from_iter(rows.iter().map(|((_, t), _)| t.clone()))),
            ]).unwrap();
            let weights = Int64Array::from_iter_values(rows.iter().map(|(_, w)| *w));
            let keys = codec.encode(data.column(0));
            let consolidate = if later { Consolidate::Later } else { Consolidate::Due };
            arrangement.apply(&data, &weights, &keys, &vec![true; rows.len()], consolidate).unwrap();
            pending.retain(|_, weight| *weight != 0);
            expected = pending;
            prop_assert_eq!(&contents(&arrangement, &codec, &[0, 1, 2, 3]), &expected);
            prop_assert_eq!(&saved(&arrangement), &expected);
            prop_assert!(arrangement.stored >= arrangement.len());
            let keys: BTreeMap<i32, ()> = expected.keys().map(|(k, _)| (*k, ())).collect();
            let listed = arrangement.keys().filter(|&key| arrangement.weight(key) != 0).count();
            prop_assert_eq!(listed, keys.len());
            if freeze {
                arrangement = refrozen(&arrangement, &codec);
                prop_assert_eq!(&contents(&arrangement, &codec, &[0, 1, 2, 3]), &expected);
                prop_assert_eq!(&saved(&arrangement), &expected);
            }
        }
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
