//! Equi-joins of every kind, with residual conditions.
//!
//! Both inputs are kept, indexed by join key (see the `arrangement` module). Matched pairs follow the bilinear rule
//! `Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR` (with `L' = L + ΔL`), so an epoch costs the size of the
//! changes times the matching rows. What depends on whether a row has a match at all — the
//! NULL-padded rows of outer joins, the rows of semi and anti joins — is recomputed for the
//! keys an epoch touches: their old output is retracted and their new output inserted.

mod arrangement;
mod batches;
mod checkpoint;
mod frozen;

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::take_arrays;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use freshet_common::{Key, KeyCodec, Keys, PARALLEL_MIN_ROWS, Result, RowKey, by_part, run_parts};

use super::{Compiled, Epoch, Operator, StateSize};
use crate::checkpoint::{SavedState, mismatch};
use crate::delta::{Delta, internal, multiply};
use crate::rows::RowCodec;
use arrangement::{Arrangement, Consolidate};

/// Pairs whose residual condition is evaluated at once when looking for a row's matches.
const PAIR_BATCH: usize = 8_192;

/// The join types maintained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    LeftSemi,
    LeftAnti,
    RightSemi,
    RightAnti,
}

impl JoinKind {
    /// Whether matched pairs are output.
    fn pairs(self) -> bool {
        matches!(
            self,
            JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full
        )
    }

    /// Rows of `side` output depending on whether they match: `Some(false)` the unmatched ones
    /// (padded for outer joins), `Some(true)` the matched ones (semi joins).
    fn by_match(self, side: Side) -> Option<bool> {
        match (self, side) {
            (JoinKind::Left | JoinKind::Full | JoinKind::LeftAnti, Side::Left) => Some(false),
            (JoinKind::Right | JoinKind::Full | JoinKind::RightAnti, Side::Right) => Some(false),
            (JoinKind::LeftSemi, Side::Left) | (JoinKind::RightSemi, Side::Right) => Some(true),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// What the planner found in the plan's join.
pub(crate) struct JoinSpec {
    pub kind: JoinKind,
    pub left_keys: Vec<Compiled>,
    pub right_keys: Vec<Compiled>,
    pub key_types: Vec<DataType>,
    /// `IS NOT DISTINCT FROM` keys (EXCEPT, INTERSECT): NULL matches NULL.
    pub nulls_equal: bool,
    /// A null-aware anti join (`NOT IN`): no row is output while the right side holds a NULL
    /// key, every left row (NULL keys too) while it is empty.
    pub null_aware: bool,
    /// The residual condition, over the left columns followed by the right ones.
    pub filter: Option<Compiled>,
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    /// Left columns followed by right columns, as their inputs have them.
    pub pair_schema: SchemaRef,
    /// The join's output.
    pub schema: SchemaRef,
    pub display: String,
}

/// Rows (encoded) and their multiplicities.
type Multiset = HashMap<RowKey, i64>;

/// A delta with the join keys of its rows.
struct Encoded {
    delta: Delta,
    keys: Keys,
    /// Whether a row's key can match: not when a key column is NULL and NULL matches nothing.
    matchable: Vec<bool>,
}

impl Encoded {
    /// The rows at `rows`, in that order.
    fn take(&self, codec: &KeyCodec, rows: &[u32]) -> Result<Encoded> {
        Ok(Encoded {
            delta: self.delta.take(&UInt32Array::from(rows.to_vec()))?,
            keys: codec.take(&self.keys, rows)?,
            matchable: rows.iter().map(|&i| self.matchable[i as usize]).collect(),
        })
    }

    /// The distinct keys of the rows that can match.
    fn matchable_keys(&self) -> impl Iterator<Item = Key<'_>> {
        (0..self.matchable.len())
            .filter(|&i| self.matchable[i])
            .map(|i| self.keys.key(i))
    }
}

/// The join operator.
///
/// Its state is split into parts by a hash of the join key (see `freshet_common::run_parts`),
/// as an aggregate's groups are: an epoch's changes are dealt to the part of their key, and
/// the parts step at once on threads of their own. A key's rows on both sides are in one part,
/// so each part is a join of its own. A null-aware anti join, whose output depends on the whole
/// right side, keeps one part.
pub(crate) struct Join {
    left: Box<dyn Operator>,
    right: Box<dyn Operator>,
    spec: Arc<JoinSpec>,
    keys: KeyCodec,
    parts: Vec<Part>,
    /// Per side (left, right), when its rows stop matching as the other side's watermark
    /// passes their time.
    expiry: [Option<SideExpiry>; 2],
    state_ttl_ms: Option<i64>,
    /// Each side's changes since the state was last saved or restored, for a delta checkpoint
    /// (`None` until then, and for `NOT IN`, which saves its whole state).
    changes: Option<[Vec<(Delta, i64)>; 2]>,
    /// With a state TTL: the epochs' time (ms) the rows applied now come at.
    now_ms: i64,
}

/// The rows of both sides at the keys of one part, and what is computed from them.
struct Part {
    spec: Arc<JoinSpec>,
    /// How an epoch's changes of each side (left, right) consolidate.
    due: [Consolidate; 2],
    left_rows: Arrangement,
    right_rows: Arrangement,
    /// `NOT IN`: the left rows with a NULL key (encoded with `left_codec`), and the right side's
    /// rows and NULL-key rows.
    left_codec: RowCodec,
    left_nulls: Multiset,
    right_count: i64,
    right_null_count: i64,
}

/// When a side's rows can no longer match: an inner join over streams whose condition bounds
/// this side's time from below by the other side's (`a.ts >= b.ts - INTERVAL ...`, or equal
/// window ends). A row whose time is below the other side's combined watermark less
/// `offset_ms` is dropped.
#[derive(Debug, Clone)]
pub(crate) struct SideExpiry {
    /// The column of the side's rows holding their time.
    pub column: usize,
    /// The join's sources, whose combined watermark bounds the other side's future rows'
    /// times (and this side's own retractions).
    pub sources: Vec<String>,
    pub offset_ms: i64,
    /// For EXPLAIN.
    pub display: String,
}

/// What a null-aware anti join outputs, from its right side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotIn {
    /// The right side is empty: every left row.
    Empty,
    /// The right side holds a NULL: nothing.
    Blocked,
    /// The left rows with a key and no match.
    Normal,
}

impl NotIn {
    fn of(rows: i64, null_rows: i64) -> Self {
        if rows == 0 {
            NotIn::Empty
        } else if null_rows > 0 {
            NotIn::Blocked
        } else {
            NotIn::Normal
        }
    }
}

impl Join {
    /// A join whose state is split into `parts` parts (a null-aware anti join has one).
    pub(crate) fn new(left: Box<dyn Operator>, right: Box<dyn Operator>, spec: JoinSpec, parts: usize) -> Result<Self> {
        // A cross join has no key columns: every row gets the same key, a constant.
        let key_types = if spec.key_types.is_empty() {
            vec![DataType::Int64]
        } else {
            spec.key_types.clone()
        };
        let keys = KeyCodec::new(&key_types)?;
        let spec = Arc::new(spec);
        let parts = if spec.null_aware { 1 } else { parts.max(1) };
        let parts = (0..parts)
            .map(|_| {
                Part::new(
                    &spec,
                    &keys,
                    [left.deletes_only_earlier_rows(), right.deletes_only_earlier_rows()],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            keys,
            left,
            right,
            spec,
            parts,
            expiry: [None, None],
            state_ttl_ms: None,
            changes: None,
            now_ms: i64::MIN,
        })
    }

    /// Drops a side's rows as the other side's watermark passes their time (see
    /// [`SideExpiry`]); `left` says which side.
    pub(crate) fn with_expiry(mut self, left: bool, expiry: SideExpiry) -> Self {
        for part in &mut self.parts {
            let rows = if left {
                &mut part.left_rows
            } else {
                &mut part.right_rows
            };
            rows.set_expiry(expiry.column);
        }
        self.expiry[usize::from(!left)] = Some(expiry);
        self
    }

    /// Forgets each side's rows once they have been kept for `ttl_ms` on the epochs' clock
    /// (`table.exec.state.ttl`): a regular join over streams keeps bounded state, as in Flink,
    /// at the price of missing matches with rows older than that.
    pub(crate) fn with_state_ttl(mut self, ttl_ms: i64) -> Self {
        for part in &mut self.parts {
            part.left_rows.set_ttl(ttl_ms);
            part.right_rows.set_ttl(ttl_ms);
        }
        self.state_ttl_ms = Some(ttl_ms);
        self
    }

    /// Drops the rows the watermarks say can no longer match.
    fn expire(&mut self, epoch: &Epoch) -> Result<()> {
        for (slot, expiry) in self.expiry.iter().enumerate() {
            let Some(expiry) = expiry else { continue };
            let Some(watermark) = epoch.watermark(&expiry.sources) else {
                continue;
            };
            let bound = watermark.saturating_sub(expiry.offset_ms);
            for part in &mut self.parts {
                let rows = if slot == 0 {
                    &mut part.left_rows
                } else {
                    &mut part.right_rows
                };
                rows.expire(bound)?;
            }
        }
        Ok(())
    }

    fn encode(&self, delta: Delta, side: Side) -> Result<Encoded> {
        let exprs = match side {
            Side::Left => &self.spec.left_keys,
            Side::Right => &self.spec.right_keys,
        };
        let mut key_columns = exprs
            .iter()
            .map(|e| e.evaluate(&delta.data))
            .collect::<Result<Vec<_>>>()?;
        let matchable = (0..delta.len())
            .map(|i| self.spec.nulls_equal || !key_columns.iter().any(|c| c.is_null(i)))
            .collect();
        if key_columns.is_empty() {
            key_columns.push(Arc::new(Int64Array::from(vec![0; delta.len()])));
        }
        let keys = self.keys.encode(&key_columns)?;
        Ok(Encoded { delta, keys, matchable })
    }

    /// `changes` dealt to the parts by the part of each row's key.
    fn deal(&self, changes: Encoded) -> Result<Vec<Encoded>> {
        let parts = self.parts.len();
        if parts == 1 {
            return Ok(vec![changes]);
        }
        let rows = changes.delta.len();
        let dealt = by_part(rows, parts, |i| changes.keys.key(i));
        let Some(all) = dealt.iter().position(|part| part.len() == rows) else {
            return dealt.iter().map(|part| changes.take(&self.keys, part)).collect();
        };
        // Every row in one part (a cross join's constant key, a single key, no rows): that part
        // takes them as they are.
        let mut dealt = (1..parts)
            .map(|_| changes.take(&self.keys, &[]))
            .collect::<Result<Vec<_>>>()?;
        dealt.insert(all, changes);
        Ok(dealt)
    }
}

impl Part {
    /// A part of a join whose inputs delete only rows of earlier epochs or not (`replacing`:
    /// left, right; see [`Operator::deletes_only_earlier_rows`]).
    fn new(spec: &Arc<JoinSpec>, keys: &KeyCodec, replacing: [bool; 2]) -> Result<Self> {
        let due = replacing.map(|replacing| match replacing {
            true => Consolidate::DueReplacing,
            false => Consolidate::Due,
        });
        Ok(Self {
            due,
            spec: spec.clone(),
            left_rows: Arrangement::new(&spec.left_schema, keys)?,
            right_rows: Arrangement::new(&spec.right_schema, keys)?,
            left_codec: RowCodec::new(spec.left_schema.fields().iter().map(|f| f.data_type().clone()))?,
            left_nulls: HashMap::new(),
            right_count: 0,
            right_null_count: 0,
        })
    }

    fn rows(&self, side: Side) -> &Arrangement {
        match side {
            Side::Left => &self.left_rows,
            Side::Right => &self.right_rows,
        }
    }

    fn has_deferred(&self) -> bool {
        self.left_rows.deferred_rows() + self.right_rows.deferred_rows() > 0
    }

    fn rows_mut(&mut self, side: Side) -> &mut Arrangement {
        match side {
            Side::Left => &mut self.left_rows,
            Side::Right => &mut self.right_rows,
        }
    }

    /// Keeps `changes` in the arrangement of `side`: deferred (see [`Arrangement::defer`])
    /// when `defer` and it can take them, else indexed now.
    fn keep(&mut self, changes: &Encoded, side: Side, defer: bool, codec: &KeyCodec) -> Result<()> {
        let rows = self.rows_mut(side);
        if defer && rows.can_defer() {
            return rows.defer(
                codec,
                &changes.delta.data,
                &changes.delta.weights,
                &changes.keys,
                &changes.matchable,
            );
        }
        self.apply(changes, side, self.due[side as usize])
    }

    fn apply(&mut self, changes: &Encoded, side: Side, consolidate: Consolidate) -> Result<()> {
        self.rows_mut(side).apply(
            &changes.delta.data,
            &changes.delta.weights,
            &changes.keys,
            &changes.matchable,
            consolidate,
        )
    }

    /// Pairs of the changed rows of `side` with the stored rows of the other side.
    fn pairs(&self, changes: &Encoded, side: Side) -> Result<Delta> {
        let other = self.rows(opposite(side));
        let probe = other.probe((0..changes.delta.len()).map(|i| changes.keys.key(i)));
        let mut changed = Vec::new();
        let mut stored = Vec::new();
        let mut weights = Vec::new();
        for &i in &probe.order {
            let i = i as usize;
            if !changes.matchable[i] {
                continue;
            }
            let weight = changes.delta.weights.value(i);
            for (row, n) in other.entries_hashed(changes.keys.key(i), probe.hash(i)) {
                changed.push(i as u32);
                stored.push(row);
                weights.push(multiply(weight, n)?);
            }
        }
        if changed.is_empty() {
            return Ok(Delta::empty(self.spec.pair_schema.clone()));
        }
        let columns = self.pair_columns(side, changes.delta.data.columns(), &UInt32Array::from(changed), &stored)?;
        let pairs = Delta::from_columns(&self.spec.pair_schema, columns, Int64Array::from(weights))?;
        self.filtered(pairs)
    }

    /// The columns of pairs of rows of `side` (`mine`, its rows `indices`) with the other
    /// side's stored rows `theirs`: left columns, then right ones.
    fn pair_columns(
        &self,
        side: Side,
        mine: &[ArrayRef],
        indices: &UInt32Array,
        theirs: &[u64],
    ) -> Result<Vec<ArrayRef>> {
        let mine = take_arrays(mine, indices, None).map_err(internal)?;
        let theirs = self.rows(opposite(side)).gather(theirs)?;
        Ok(match side {
            Side::Left => [mine, theirs].concat(),
            Side::Right => [theirs, mine].concat(),
        })
    }

    fn filtered(&self, pairs: Delta) -> Result<Delta> {
        match &self.spec.filter {
            Some(filter) if !pairs.is_empty() => pairs.filter(&filter.mask(&pairs.data)?),
            _ => Ok(pairs),
        }
    }

    /// Of rows of `side` (`columns`, with `weights`, the row `i` at key `keys[i]`), those whose
    /// having a match on the other side is `matched`, as output rows.
    fn select_by_match(
        &self,
        side: Side,
        keys: &[Key<'_>],
        columns: Vec<ArrayRef>,
        weights: &[i64],
        matched: bool,
    ) -> Result<Option<Delta>> {
        let has_match = self.has_match(side, keys, &columns)?;
        let keep: UInt32Array = (0..weights.len() as u32)
            .filter(|&i| has_match[i as usize] == matched)
            .collect();
        if keep.is_empty() {
            return Ok(None);
        }
        let columns = take_arrays(&columns, &keep, None).map_err(internal)?;
        let weights: Int64Array = keep.values().iter().map(|&i| weights[i as usize]).collect();
        self.output_of(side, columns, weights).map(Some)
    }

    /// Whether each row of `side` (`columns`, the row `i` at key `keys[i]`) has a match on the
    /// other side.
    fn has_match(&self, side: Side, keys: &[Key<'_>], columns: &[ArrayRef]) -> Result<Vec<bool>> {
        let other = self.rows(opposite(side));
        // A key's entries may hold a row and its deletion not yet consolidated: a row has a
        // match when the weights of the other side's rows it matches sum to more than zero.
        let Some(filter) = &self.spec.filter else {
            return Ok(keys.iter().map(|&key| other.weight(key) > 0).collect());
        };
        // The pairs of a row with the other side's rows at its key, to evaluate the condition
        // on, a batch of them at a time: a hot key's rows times the other side's need not be
        // held at once.
        let mut sums = vec![0i64; keys.len()];
        let mut mine = Vec::with_capacity(PAIR_BATCH);
        let mut theirs = Vec::with_capacity(PAIR_BATCH);
        let mut their_weights = Vec::with_capacity(PAIR_BATCH);
        let mut evaluate = |mine: &mut Vec<u32>, theirs: &mut Vec<u64>, their_weights: &mut Vec<i64>| -> Result<()> {
            if mine.is_empty() {
                return Ok(());
            }
            let indices = UInt32Array::from_iter_values(mine.drain(..));
            let columns = self.pair_columns(side, columns, &indices, theirs)?;
            let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
            let pairs = RecordBatch::try_new_with_options(self.spec.pair_schema.clone(), columns, &options)
                .map_err(internal)?;
            let mask = filter.mask(&pairs)?;
            for (p, &i) in indices.values().iter().enumerate() {
                if mask.is_valid(p) && mask.value(p) {
                    sums[i as usize] += their_weights[p];
                }
            }
            theirs.clear();
            their_weights.clear();
            Ok(())
        };
        for (i, &key) in keys.iter().enumerate() {
            if other.weight(key) == 0 {
                continue;
            }
            for (row, weight) in other.entries(key) {
                mine.push(i as u32);
                theirs.push(row);
                their_weights.push(weight);
                if mine.len() == PAIR_BATCH {
                    evaluate(&mut mine, &mut theirs, &mut their_weights)?;
                }
            }
        }
        evaluate(&mut mine, &mut theirs, &mut their_weights)?;
        Ok(sums.into_iter().map(|sum| sum > 0).collect())
    }

    /// Rows of one side as output rows: alone (semi, anti) or padded with NULLs (outer).
    fn output_of(&self, side: Side, columns: Vec<ArrayRef>, weights: Int64Array) -> Result<Delta> {
        if !self.spec.kind.pairs() {
            return Delta::from_columns(&self.spec.schema, columns, weights);
        }
        let n = weights.len();
        let nulls = |schema: &SchemaRef| -> Vec<ArrayRef> {
            schema
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), n))
                .collect()
        };
        let columns = match side {
            Side::Left => [columns, nulls(&self.spec.right_schema)].concat(),
            Side::Right => [nulls(&self.spec.left_schema), columns].concat(),
        };
        Delta::from_columns(&self.spec.schema, columns, weights)
    }

    /// The match-dependent output of the keys `touched`, from the current state.
    fn match_output(&self, touched: &[Key<'_>]) -> Result<Vec<Delta>> {
        let mut parts = Vec::new();
        for side in [Side::Left, Side::Right] {
            parts.extend(self.by_match(side, touched.iter().copied())?);
        }
        Ok(parts)
    }

    /// The match-dependent output of each side at its keys in `keys` (left, right).
    fn match_output_of(&self, keys: &[HashSet<Key<'_>>; 2]) -> Result<Vec<Delta>> {
        let mut parts = Vec::new();
        for side in [Side::Left, Side::Right] {
            parts.extend(self.by_match(side, keys[side as usize].iter().copied())?);
        }
        Ok(parts)
    }

    /// The rows of `side` at `keys` that the join outputs for having a match or not.
    fn by_match<'k>(&self, side: Side, keys: impl Iterator<Item = Key<'k>>) -> Result<Option<Delta>> {
        let Some(matched) = self.spec.kind.by_match(side) else {
            return Ok(None);
        };
        let stored = self.rows(side);
        let mut row_keys = Vec::new();
        let mut rows = Vec::new();
        let mut weights = Vec::new();
        for key in keys {
            for (row, weight) in stored.entries(key) {
                row_keys.push(key);
                rows.push(row);
                weights.push(weight);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = stored.gather(&rows)?;
        self.select_by_match(side, &row_keys, columns, &weights, matched)
    }

    /// The changed rows of `side` at keys not `recomputed` whose having a match (which the
    /// epoch did not change) is what the join outputs them for.
    fn changed_by_match(&self, side: Side, changes: &Encoded, recomputed: &HashSet<Key<'_>>) -> Result<Option<Delta>> {
        let Some(matched) = self.spec.kind.by_match(side) else {
            return Ok(None);
        };
        let (indices, keys): (Vec<u32>, Vec<Key<'_>>) = (0..changes.matchable.len())
            .filter(|&i| changes.matchable[i])
            .map(|i| (i as u32, changes.keys.key(i)))
            .filter(|(_, key)| !recomputed.contains(key))
            .unzip();
        if indices.is_empty() {
            return Ok(None);
        }
        let rows = changes.delta.take(&UInt32Array::from(indices))?;
        self.select_by_match(
            side,
            &keys,
            rows.data.columns().to_vec(),
            rows.weights.values(),
            matched,
        )
    }

    /// Rows whose key never matches (a NULL key) that the join outputs anyway.
    fn unmatchable(&self, changes: &Encoded, side: Side) -> Result<Option<Delta>> {
        if self.spec.kind.by_match(side) != Some(false) {
            return Ok(None);
        }
        let indices: UInt32Array = (0..changes.matchable.len() as u32)
            .filter(|&i| !changes.matchable[i as usize])
            .collect();
        if indices.is_empty() {
            return Ok(None);
        }
        let rows = changes.delta.take(&indices)?;
        self.output_of(side, rows.data.columns().to_vec(), rows.weights)
            .map(Some)
    }
}

impl Part {
    /// One epoch of a null-aware anti join (`NOT IN`). While what it outputs depends on the
    /// keys (neither empty nor blocked by a NULL), only the touched keys are recomputed; when
    /// the right side becomes empty or gains or loses its NULLs, the whole output is.
    fn step_not_in(&mut self, left: Encoded, right: Encoded) -> Result<Delta> {
        let before = NotIn::of(self.right_count, self.right_null_count);
        let (mut rows, mut null_rows) = (self.right_count, self.right_null_count);
        for (i, &matchable) in right.matchable.iter().enumerate() {
            let weight = right.delta.weights.value(i);
            rows += weight;
            if !matchable {
                null_rows += weight;
            }
        }
        let after = NotIn::of(rows, null_rows);
        let mut parts = Vec::new();
        match (before, after) {
            (NotIn::Normal, NotIn::Normal) => {
                let touched = touched_keys(&left, &right);
                for old in self.match_output(&touched)? {
                    parts.push(old.negate()?);
                }
                self.apply_not_in(&left, &right, rows, null_rows)?;
                parts.extend(self.match_output(&touched)?);
            }
            (NotIn::Blocked, NotIn::Blocked) => self.apply_not_in(&left, &right, rows, null_rows)?,
            (NotIn::Empty, NotIn::Empty) => {
                self.apply_not_in(&left, &right, rows, null_rows)?;
                parts.push(left.delta.with_schema(&self.spec.schema)?);
            }
            _ => {
                for old in self.not_in_output()? {
                    parts.push(old.negate()?);
                }
                self.apply_not_in(&left, &right, rows, null_rows)?;
                parts.extend(self.not_in_output()?);
            }
        }
        Delta::concat(&self.spec.schema, &parts)
    }

    fn apply_not_in(&mut self, left: &Encoded, right: &Encoded, rows: i64, null_rows: i64) -> Result<()> {
        self.apply(left, Side::Left, self.due[Side::Left as usize])?;
        self.apply(right, Side::Right, self.due[Side::Right as usize])?;
        if left.matchable.iter().any(|&m| !m) {
            let encoded = self.left_codec.encode(left.delta.data.columns(), left.delta.len())?;
            for (i, &matchable) in left.matchable.iter().enumerate() {
                if matchable {
                    continue;
                }
                let row: &[u8] = encoded.row(i).data();
                let n = self.left_nulls.entry(row.into()).or_default();
                *n += left.delta.weights.value(i);
                if *n < 0 {
                    return Err(internal("a NOT IN input deleted a row it never had"));
                }
                if *n == 0 {
                    self.left_nulls.remove(row);
                }
            }
        }
        if rows < 0 || null_rows < 0 {
            return Err(internal("a NOT IN subquery's row count went below zero"));
        }
        self.right_count = rows;
        self.right_null_count = null_rows;
        Ok(())
    }

    /// The whole output of a null-aware anti join in its current state.
    fn not_in_output(&self) -> Result<Vec<Delta>> {
        let mode = NotIn::of(self.right_count, self.right_null_count);
        if mode == NotIn::Blocked {
            return Ok(Vec::new());
        }
        let keys: Vec<Key<'_>> = self.left_rows.keys().collect();
        let mut parts = self.match_output(&keys)?;
        if mode == NotIn::Empty && !self.left_nulls.is_empty() {
            let parser = self.left_codec.parser();
            let columns = self
                .left_codec
                .decode(self.left_nulls.keys().map(|r| parser.parse(r)))?;
            let weights: Int64Array = self.left_nulls.values().copied().collect();
            parts.push(self.output_of(Side::Left, columns, weights)?);
        }
        Ok(parts)
    }
}

/// Which keys' match-dependent output (outer joins' padded rows, semi and anti joins' rows)
/// an epoch recomputes, per side (left, right): where a row's having a match may change. With
/// no residual condition a key's rows match as long as the other side has rows at the key, so
/// only the keys whose other side becomes empty or stops being empty are recomputed; with one,
/// every key at which the other side changes. At the other keys the output changes by the
/// changed rows alone.
struct MatchChanges<'a> {
    recomputed: [HashSet<Key<'a>>; 2],
}

impl<'a> MatchChanges<'a> {
    fn of(join: &Part, left: &'a Encoded, right: &'a Encoded) -> Self {
        let mut recomputed = [HashSet::new(), HashSet::new()];
        for (side, other_changes) in [(Side::Left, right), (Side::Right, left)] {
            if join.spec.kind.by_match(side).is_none() {
                continue;
            }
            let other = join.rows(opposite(side));
            let mut weights: HashMap<Key<'a>, i64> = HashMap::new();
            for i in 0..other_changes.matchable.len() {
                if other_changes.matchable[i] {
                    *weights.entry(other_changes.keys.key(i)).or_default() += other_changes.delta.weights.value(i);
                }
            }
            recomputed[side as usize] = weights
                .into_iter()
                .filter(|&(key, change)| {
                    let before = other.weight(key);
                    join.spec.filter.is_some() || (before > 0) != (before + change > 0)
                })
                .map(|(key, _)| key)
                .collect();
        }
        Self { recomputed }
    }
}

/// The keys an epoch's changes touch, each once, in first-seen order.
fn touched_keys<'a>(left: &'a Encoded, right: &'a Encoded) -> Vec<Key<'a>> {
    let mut seen = HashSet::new();
    left.matchable_keys()
        .chain(right.matchable_keys())
        .filter(|k| seen.insert(*k))
        .collect()
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Left => Side::Right,
        Side::Right => Side::Left,
    }
}

impl Part {
    /// One epoch of this part's keys: `left` and `right` are the changes at them.
    ///
    /// A join input that holds no rows yet defers indexing the rows it is given until they are
    /// looked up, and then indexes them all at once (see [`Arrangement::defer`]): in a state
    /// build, whose epochs (`building`) read the sources one after the other, most are not
    /// looked up before the build's last epoch. No rows stay deferred after an epoch that is
    /// not building.
    fn step(&mut self, left: Encoded, right: Encoded, building: bool, codec: &KeyCodec) -> Result<Delta> {
        let output = self.step_rows(left, right, codec);
        if !building {
            self.left_rows.settle()?;
            self.right_rows.settle()?;
        }
        output
    }

    fn step_rows(&mut self, left: Encoded, right: Encoded, codec: &KeyCodec) -> Result<Delta> {
        if left.delta.is_empty() && right.delta.is_empty() {
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        if self.spec.null_aware {
            self.left_rows.settle()?;
            self.right_rows.settle()?;
            return self.step_not_in(left, right);
        }
        // A side is looked up for the other side's changes, and for its own when the other
        // side's output depends on its matches (its weight at their keys before the epoch).
        // Such a side's changes are indexed now, the other's may be deferred.
        let (changed_left, changed_right) = (!left.delta.is_empty(), !right.delta.is_empty());
        let read_left = changed_right || (changed_left && self.spec.kind.by_match(Side::Right).is_some());
        let read_right = changed_left || (changed_right && self.spec.kind.by_match(Side::Left).is_some());
        if read_left {
            self.left_rows.settle()?;
        }
        if read_right {
            self.right_rows.settle()?;
        }
        let changes = MatchChanges::of(self, &left, &right);

        let mut parts = Vec::new();
        for old in self.match_output_of(&changes.recomputed)? {
            parts.push(old.negate()?);
        }
        let mut pairs = Vec::new();
        if self.spec.kind.pairs() && changed_left {
            pairs.push(self.pairs(&left, Side::Left)?);
        }
        self.keep(&left, Side::Left, !read_left, codec)?;
        if self.spec.kind.pairs() && changed_right {
            pairs.push(self.pairs(&right, Side::Right)?);
        }
        self.keep(&right, Side::Right, !read_right, codec)?;
        for pair in pairs {
            parts.push(pair.with_schema(&self.spec.schema)?);
        }
        parts.extend(self.match_output_of(&changes.recomputed)?);
        for (side, changed) in [(Side::Left, &left), (Side::Right, &right)] {
            parts.extend(self.changed_by_match(side, changed, &changes.recomputed[side as usize])?);
        }
        parts.extend(self.unmatchable(&left, Side::Left)?);
        parts.extend(self.unmatchable(&right, Side::Right)?);
        Delta::concat(&self.spec.schema, &parts)
    }
}

impl Operator for Join {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let left = self.left.step(epoch)?;
        let right = self.right.step(epoch)?;
        if self.state_ttl_ms.is_some()
            && let Some(now) = epoch.time_ns()
        {
            let now = now.div_euclid(1_000_000);
            self.now_ms = now;
            for part in &mut self.parts {
                part.left_rows.forget_old(now)?;
                part.right_rows.forget_old(now)?;
            }
        }
        let building = epoch.is_building();
        // Rows deferred by the building epochs are indexed by the first one that is not.
        let settling = !building && self.parts.iter().any(Part::has_deferred);
        if left.is_empty() && right.is_empty() && !settling {
            self.expire(epoch)?;
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        if let Some([lefts, rights]) = &mut self.changes {
            // Deltas share their columns: a copy of the arrays' handles, not of the rows.
            lefts.push((left.clone(), self.now_ms));
            rights.push((right.clone(), self.now_ms));
        }
        let parallel = settling || left.len() + right.len() >= PARALLEL_MIN_ROWS;
        let left = self.deal(self.encode(left, Side::Left)?)?;
        let right = self.deal(self.encode(right, Side::Right)?)?;
        let mut work: Vec<(&mut Part, Option<(Encoded, Encoded)>)> = self
            .parts
            .iter_mut()
            .zip(left.into_iter().zip(right))
            .map(|(part, changes)| (part, Some(changes)))
            .collect();
        let codec = &self.keys;
        let outputs = run_parts(&mut work, parallel, |_, (part, changes)| match changes.take() {
            Some((left, right)) => part.step(left, right, building, codec),
            None => Err(internal("a join part stepped twice")),
        });
        let outputs = outputs.into_iter().collect::<Result<Vec<_>>>()?;
        self.expire(epoch)?;
        Delta::concat(&self.spec.schema, &outputs)
    }

    fn updates(&self) -> bool {
        !matches!(
            self.spec.kind,
            JoinKind::Inner | JoinKind::LeftSemi | JoinKind::RightSemi
        )
    }

    fn describe(&self) -> String {
        let expiries: Vec<&str> = self.expiry.iter().flatten().map(|e| e.display.as_str()).collect();
        let ttl = match self.state_ttl_ms {
            Some(ttl) => format!(" forgetting rows kept for {ttl} ms (table.exec.state.ttl)"),
            None => String::new(),
        };
        if expiries.is_empty() {
            format!("{}{ttl}", self.spec.display)
        } else {
            format!("{} dropping rows {}{ttl}", self.spec.display, expiries.join(" and "))
        }
    }

    fn state_kind(&self) -> &'static str {
        "both inputs, indexed by join key"
    }

    fn state_size(&self) -> StateSize {
        let mut size = StateSize::default();
        for part in &self.parts {
            let nulls: u64 = part.left_nulls.keys().map(|r| r.len() as u64 + 40).sum();
            size.rows += part.left_rows.len() + part.right_rows.len() + part.left_nulls.len() as u64;
            size.bytes += part.left_rows.bytes() + part.right_rows.bytes() + nulls;
        }
        for (delta, _) in self.changes.iter().flatten().flatten() {
            size.bytes += delta.data.get_array_memory_size() as u64 + delta.weights.get_array_memory_size() as u64;
        }
        size
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.left.as_ref(), self.right.as_ref()]
    }

    fn inputs_mut(&mut self) -> Vec<&mut dyn Operator> {
        vec![self.left.as_mut(), self.right.as_mut()]
    }

    fn can_save_state(&self) -> bool {
        true
    }

    fn save_state(&self) -> Result<SavedState> {
        self.save()
    }

    fn save_delta(&self) -> Result<Option<Vec<RecordBatch>>> {
        self.save_changes()
    }

    fn delta_rows(&self) -> u64 {
        self.changes
            .iter()
            .flatten()
            .flatten()
            .map(|(d, _)| d.len() as u64)
            .sum()
    }

    fn track_changes(&mut self) {
        if !self.spec.null_aware {
            self.changes = Some([Vec::new(), Vec::new()]);
        }
    }

    fn apply_delta(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        if self.spec.null_aware {
            return Err(mismatch("a NOT IN join saves its whole state"));
        }
        self.restore(batches)
    }

    fn apply_deltas(&mut self, deltas: Vec<Vec<RecordBatch>>) -> Result<()> {
        if self.spec.null_aware {
            return Err(mismatch("a NOT IN join saves its whole state"));
        }
        self.restore_deltas(deltas)
    }

    fn restore_state(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        self.restore(batches)
    }
}
