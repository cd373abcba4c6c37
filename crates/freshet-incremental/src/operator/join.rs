//! Equi-joins of every kind, with residual conditions.
//!
//! Both inputs are kept, indexed by join key. Matched pairs follow the bilinear rule
//! `Δ(L ⋈ R) = ΔL ⋈ R + L' ⋈ ΔR` (with `L' = L + ΔL`), so an epoch costs the size of the
//! changes times the matching rows. What depends on whether a row has a match at all — the
//! NULL-padded rows of outer joins, the rows of semi and anti joins — is recomputed for the
//! keys an epoch touches: their old output is retracted and their new output inserted.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use freshet_common::{Result, RowKey};

use super::{Compiled, Epoch, Operator, StateSize};
use crate::delta::{Delta, internal, multiply};
use crate::rows::RowCodec;

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

/// One input's rows, by key: key bytes → row bytes → multiplicity.
struct Index {
    codec: RowCodec,
    rows: HashMap<RowKey, Multiset>,
    count: u64,
    bytes: u64,
}

impl Index {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::new(schema.fields().iter().map(|f| f.data_type().clone()))?,
            rows: HashMap::new(),
            count: 0,
            bytes: 0,
        })
    }

    fn apply(&mut self, changes: &Encoded) -> Result<()> {
        for (i, key) in changes.keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let row: &[u8] = changes.rows.row(i).data();
            let weight = changes.delta.weights.value(i);
            let entry = self.rows.entry(key.clone()).or_default();
            match entry.get_mut(row) {
                Some(n) => {
                    *n += weight;
                    if *n == 0 {
                        entry.remove(row);
                        self.count -= 1;
                        self.bytes -= (row.len() + 40) as u64;
                    } else if *n < 0 {
                        return Err(internal("a joined row's multiplicity went below zero"));
                    }
                }
                None if weight < 0 => return Err(internal("a join input deleted a row it never had")),
                None => {
                    entry.insert(row.into(), weight);
                    self.count += 1;
                    self.bytes += (row.len() + 40) as u64;
                }
            }
            if entry.is_empty() {
                self.rows.remove(key);
            }
        }
        Ok(())
    }

    /// The rows of `key` as columns, with their multiplicities.
    fn columns(&self, key: &[u8]) -> Result<Option<(Vec<ArrayRef>, Vec<i64>)>> {
        let Some(rows) = self.rows.get(key) else {
            return Ok(None);
        };
        let parser = self.codec.parser();
        let columns = self.codec.decode(rows.keys().map(|r| parser.parse(r)))?;
        Ok(Some((columns, rows.values().copied().collect())))
    }
}

/// A delta with its rows and keys encoded.
struct Encoded {
    delta: Delta,
    rows: datafusion::arrow::row::Rows,
    /// The key of each row; `None` when a key column is NULL and NULL matches nothing.
    keys: Vec<Option<RowKey>>,
}

/// The join operator.
pub(crate) struct Join {
    left: Box<dyn Operator>,
    right: Box<dyn Operator>,
    spec: JoinSpec,
    keys: RowCodec,
    left_index: Index,
    right_index: Index,
    /// `NOT IN`: the left rows with a NULL key, and the right side's rows and NULL-key rows.
    left_nulls: Multiset,
    right_rows: i64,
    right_null_rows: i64,
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
    pub(crate) fn new(left: Box<dyn Operator>, right: Box<dyn Operator>, spec: JoinSpec) -> Result<Self> {
        Ok(Self {
            keys: RowCodec::new(spec.key_types.clone())?,
            left_index: Index::new(&spec.left_schema)?,
            right_index: Index::new(&spec.right_schema)?,
            left,
            right,
            spec,
            left_nulls: HashMap::new(),
            right_rows: 0,
            right_null_rows: 0,
        })
    }

    fn encode(&self, delta: Delta, side: Side) -> Result<Encoded> {
        let (exprs, index) = match side {
            Side::Left => (&self.spec.left_keys, &self.left_index),
            Side::Right => (&self.spec.right_keys, &self.right_index),
        };
        let key_columns = exprs
            .iter()
            .map(|e| e.evaluate(&delta.data))
            .collect::<Result<Vec<_>>>()?;
        // A cross join has no key columns: every row gets the same key.
        let key_rows = self.keys.encode(&key_columns, delta.len())?;
        let keys = (0..delta.len())
            .map(|i| {
                let null = !self.spec.nulls_equal && key_columns.iter().any(|c| c.is_null(i));
                (!null).then(|| key_rows.row(i).as_ref().into())
            })
            .collect();
        let rows = index.codec.encode(delta.data.columns(), delta.len())?;
        Ok(Encoded { delta, rows, keys })
    }

    fn index(&self, side: Side) -> &Index {
        match side {
            Side::Left => &self.left_index,
            Side::Right => &self.right_index,
        }
    }

    /// Pairs of the changed rows of `side` with the stored rows of the other side.
    fn pairs(&self, changes: &Encoded, side: Side) -> Result<Delta> {
        let other = self.index(opposite(side));
        let mut changed = Vec::new();
        let mut stored: Vec<&[u8]> = Vec::new();
        let mut weights = Vec::new();
        for (i, key) in changes.keys.iter().enumerate() {
            let Some(matches) = key.as_ref().and_then(|k| other.rows.get(k)) else {
                continue;
            };
            let weight = changes.delta.weights.value(i);
            for (row, n) in matches {
                changed.push(i as u32);
                stored.push(row);
                weights.push(multiply(weight, *n)?);
            }
        }
        if changed.is_empty() {
            return Ok(Delta::empty(self.spec.pair_schema.clone()));
        }
        let changed = UInt32Array::from(changed);
        let changed_columns = changes
            .delta
            .data
            .columns()
            .iter()
            .map(|c| take(c, &changed, None).map_err(internal))
            .collect::<Result<Vec<_>>>()?;
        let parser = other.codec.parser();
        let stored_columns = other.codec.decode(stored.iter().map(|r| parser.parse(r)))?;
        let columns = match side {
            Side::Left => [changed_columns, stored_columns].concat(),
            Side::Right => [stored_columns, changed_columns].concat(),
        };
        let pairs = Delta::from_columns(&self.spec.pair_schema, columns, Int64Array::from(weights))?;
        self.filtered(pairs)
    }

    fn filtered(&self, pairs: Delta) -> Result<Delta> {
        match &self.spec.filter {
            Some(filter) if !pairs.is_empty() => pairs.filter(&filter.mask(&pairs.data)?),
            _ => Ok(pairs),
        }
    }

    /// The rows of `side` at `key` whose having a match is `matched`, as output rows.
    fn by_match(&self, key: &[u8], side: Side, matched: bool) -> Result<Option<Delta>> {
        let Some((columns, weights)) = self.index(side).columns(key)? else {
            return Ok(None);
        };
        let n = weights.len();
        let has_match: Vec<bool> = match (self.index(opposite(side)).columns(key)?, &self.spec.filter) {
            (None, _) => vec![false; n],
            (Some(_), None) => vec![true; n],
            (Some((other, other_weights)), Some(filter)) => {
                // Every pair of this key, to evaluate the condition on.
                let m = other_weights.len();
                let mine = UInt32Array::from_iter_values((0..n as u32).flat_map(|i| std::iter::repeat_n(i, m)));
                let theirs = UInt32Array::from_iter_values((0..n).flat_map(|_| 0..m as u32));
                let take_all = |cols: &[ArrayRef], idx: &UInt32Array| {
                    cols.iter()
                        .map(|c| take(c, idx, None).map_err(internal))
                        .collect::<Result<Vec<_>>>()
                };
                let (left, right) = match side {
                    Side::Left => (take_all(&columns, &mine)?, take_all(&other, &theirs)?),
                    Side::Right => (take_all(&other, &theirs)?, take_all(&columns, &mine)?),
                };
                let pairs =
                    RecordBatch::try_new(self.spec.pair_schema.clone(), [left, right].concat()).map_err(internal)?;
                let mask = filter.mask(&pairs)?;
                (0..n)
                    .map(|i| (0..m).any(|j| !mask.is_null(i * m + j) && mask.value(i * m + j)))
                    .collect()
            }
        };
        let keep: UInt32Array = (0..n as u32).filter(|&i| has_match[i as usize] == matched).collect();
        if keep.is_empty() {
            return Ok(None);
        }
        let columns = columns
            .iter()
            .map(|c| take(c, &keep, None).map_err(internal))
            .collect::<Result<Vec<_>>>()?;
        let weights: Int64Array = keep.values().iter().map(|&i| weights[i as usize]).collect();
        self.output_of(side, columns, weights).map(Some)
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
    fn match_output(&self, touched: &[&[u8]]) -> Result<Vec<Delta>> {
        let mut parts = Vec::new();
        for side in [Side::Left, Side::Right] {
            let Some(matched) = self.spec.kind.by_match(side) else {
                continue;
            };
            for key in touched {
                parts.extend(self.by_match(key, side, matched)?);
            }
        }
        Ok(parts)
    }

    /// Rows whose key never matches (a NULL key) that the join outputs anyway.
    fn unmatchable(&self, changes: &Encoded, side: Side) -> Result<Option<Delta>> {
        if self.spec.kind.by_match(side) != Some(false) {
            return Ok(None);
        }
        let indices: UInt32Array = (0..changes.keys.len() as u32)
            .filter(|&i| changes.keys[i as usize].is_none())
            .collect();
        if indices.is_empty() {
            return Ok(None);
        }
        let rows = changes.delta.take(&indices)?;
        self.output_of(side, rows.data.columns().to_vec(), rows.weights)
            .map(Some)
    }
}

impl Join {
    /// One epoch of a null-aware anti join (`NOT IN`). While what it outputs depends on the
    /// keys (neither empty nor blocked by a NULL), only the touched keys are recomputed; when
    /// the right side becomes empty or gains or loses its NULLs, the whole output is.
    fn step_not_in(&mut self, left: Encoded, right: Encoded) -> Result<Delta> {
        let before = NotIn::of(self.right_rows, self.right_null_rows);
        let (mut rows, mut null_rows) = (self.right_rows, self.right_null_rows);
        for (i, key) in right.keys.iter().enumerate() {
            let weight = right.delta.weights.value(i);
            rows += weight;
            if key.is_none() {
                null_rows += weight;
            }
        }
        let after = NotIn::of(rows, null_rows);
        let mut parts = Vec::new();
        match (before, after) {
            (NotIn::Normal, NotIn::Normal) => {
                let touched_keys = touched_keys(&left, &right);
                let touched: Vec<&[u8]> = touched_keys.iter().map(|k| k.as_ref()).collect();
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
        self.left_index.apply(left)?;
        self.right_index.apply(right)?;
        for (i, key) in left.keys.iter().enumerate() {
            if key.is_some() {
                continue;
            }
            let row: &[u8] = left.rows.row(i).data();
            let n = self.left_nulls.entry(row.into()).or_default();
            *n += left.delta.weights.value(i);
            if *n < 0 {
                return Err(internal("a NOT IN input deleted a row it never had"));
            }
            if *n == 0 {
                self.left_nulls.remove(row);
            }
        }
        if rows < 0 || null_rows < 0 {
            return Err(internal("a NOT IN subquery's row count went below zero"));
        }
        self.right_rows = rows;
        self.right_null_rows = null_rows;
        Ok(())
    }

    /// The whole output of a null-aware anti join in its current state.
    fn not_in_output(&self) -> Result<Vec<Delta>> {
        let mode = NotIn::of(self.right_rows, self.right_null_rows);
        if mode == NotIn::Blocked {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = self.left_index.rows.keys().map(|k| k.as_ref()).collect();
        let mut parts = self.match_output(&keys)?;
        if mode == NotIn::Empty && !self.left_nulls.is_empty() {
            let parser = self.left_index.codec.parser();
            let columns = self
                .left_index
                .codec
                .decode(self.left_nulls.keys().map(|r| parser.parse(r)))?;
            let weights: Int64Array = self.left_nulls.values().copied().collect();
            parts.push(self.output_of(Side::Left, columns, weights)?);
        }
        Ok(parts)
    }
}

/// The keys an epoch's changes touch, each once, in first-seen order.
fn touched_keys(left: &Encoded, right: &Encoded) -> Vec<RowKey> {
    let mut seen = HashSet::new();
    left.keys
        .iter()
        .chain(&right.keys)
        .flatten()
        .filter(|k| seen.insert(*k))
        .cloned()
        .collect()
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Left => Side::Right,
        Side::Right => Side::Left,
    }
}

impl Operator for Join {
    fn step(&mut self, epoch: &Epoch) -> Result<Delta> {
        let left = self.left.step(epoch)?;
        let right = self.right.step(epoch)?;
        if left.is_empty() && right.is_empty() {
            return Ok(Delta::empty(self.spec.schema.clone()));
        }
        let left = self.encode(left, Side::Left)?;
        let right = self.encode(right, Side::Right)?;
        if self.spec.null_aware {
            return self.step_not_in(left, right);
        }
        let touched_keys = touched_keys(&left, &right);
        let touched: Vec<&[u8]> = touched_keys.iter().map(|k| k.as_ref()).collect();

        let mut parts = Vec::new();
        for old in self.match_output(&touched)? {
            parts.push(old.negate()?);
        }
        let mut pairs = Vec::new();
        if self.spec.kind.pairs() {
            pairs.push(self.pairs(&left, Side::Left)?);
        }
        self.left_index.apply(&left)?;
        if self.spec.kind.pairs() {
            pairs.push(self.pairs(&right, Side::Right)?);
        }
        self.right_index.apply(&right)?;
        for pair in pairs {
            parts.push(pair.with_schema(&self.spec.schema)?);
        }
        parts.extend(self.match_output(&touched)?);
        parts.extend(self.unmatchable(&left, Side::Left)?);
        parts.extend(self.unmatchable(&right, Side::Right)?);
        Delta::concat(&self.spec.schema, &parts)
    }

    fn describe(&self) -> String {
        self.spec.display.clone()
    }

    fn state_kind(&self) -> &'static str {
        "both inputs, indexed by join key"
    }

    fn state_size(&self) -> StateSize {
        let nulls: u64 = self.left_nulls.keys().map(|r| r.len() as u64 + 40).sum();
        StateSize {
            rows: self.left_index.count + self.right_index.count + self.left_nulls.len() as u64,
            bytes: self.left_index.bytes + self.right_index.bytes + nulls,
        }
    }

    fn inputs(&self) -> Vec<&dyn Operator> {
        vec![self.left.as_ref(), self.right.as_ref()]
    }
}
