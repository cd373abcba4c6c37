//! One join input's rows, kept in the batches they arrived in and indexed by join key.
//!
//! A join's state is mostly copies of its inputs, intermediate joins' results included; row
//! by row, encoding every row and hashing it into a map of its own cost several times what
//! computing the join in batch does. So the rows stay columnar: an epoch's batch is kept as it
//! came (no copy), and the index holds, per key, a chain of entries — a row's place among the
//! kept batches and its weight. Matching a change gathers the matched rows from the batches
//! column by column.
//!
//! A deleted row is not looked for: its deletion is one more entry, of negative weight, in its
//! key's chain, and what is matched against the chain sums to the right multiset anyway. A
//! key's chain is consolidated — equal rows found by their row encoding and their weights
//! summed — once its negative entries are a quarter of it, so that consolidating costs no more
//! than a constant per change. Rows no entry refers to any more are dropped when they are as
//! many as the live ones, by copying the live rows into new batches.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use foldhash::{HashMap, HashMapExt};
use freshet_common::{ChangeBatch, Key, KeyCodec, KeyMap, Keys, Probe, Result};

pub(super) use super::batches::compact_views;
use super::batches::gather;
use super::frozen::{Frozen, Places};
use crate::delta::internal;
use crate::rows::RowCodec;

/// The end of a chain.
const NIL: u32 = u32::MAX;
/// Batches smaller than this are merged with the next ones, so that an index of many small
/// epochs does not keep many small batches.
const MERGE_ROWS: usize = if cfg!(test) { 64 } else { 1 << 20 };
/// Unreferenced rows are dropped once there are at least this many (and as many as live ones).
const GARBAGE_ROWS: u64 = if cfg!(test) { 32 } else { 1 << 16 };
/// Rows per batch when live rows are copied into new batches.
const REWRITE_ROWS: usize = if cfg!(test) { 50 } else { 1 << 20 };

/// A row's place among the kept batches and its weight in the multiset.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Global row number: rows are numbered across the batches in the order they were kept.
    row: u64,
    weight: i64,
    /// The next entry of the key's chain, or `NIL`.
    next: u32,
}

/// The entries of one key.
#[derive(Debug, Clone, Copy)]
struct Chain {
    head: u32,
    len: u32,
    negatives: u32,
    /// The sum of the entries' weights: the key's rows, counted with multiplicity.
    weight: i64,
    /// Listed for consolidation at the end of this `apply`.
    due: bool,
    /// The key's rows in the frozen rows (see [`Frozen`]) are in the chain's entries, or were
    /// consolidated away: the frozen ones are not looked at.
    shadows: bool,
}

impl Chain {
    const EMPTY: Chain = Chain {
        head: NIL,
        len: 0,
        negatives: 0,
        weight: 0,
        due: false,
        shadows: false,
    };
}

/// Whether [`Arrangement::apply`] consolidates the chains its deletions make due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consolidate {
    /// As an epoch does: a chain whose deletions reach a quarter of its entries (with its
    /// frozen rows) is consolidated before `apply` returns.
    Due,
    /// Only once a later epoch deletes at the key (replaying a checkpoint's delta, which the
    /// process that saved it consolidated already). Most keys a delta deleted at are never
    /// touched again — a TPC-H order deleted with its line items — and consolidating them
    /// at every restore (looking their frozen rows up, gathering and comparing them) was two
    /// thirds of replaying a delta. Until then a key's deleted rows and the negative entries
    /// that delete them both stay, which lookups pair as they are (the pairs cancel) and a
    /// checkpoint saves as they are (as it saves any chain not consolidated yet).
    Later,
    /// As `Due`, for a delta whose deletions take only rows held before it (an input whose
    /// epochs delete only rows of earlier ones: an aggregate's output, a projection of it): a
    /// due key whose deletions take as many rows as it held before the epoch has lost all of
    /// them, so it keeps the epoch's insertions as they are — no row gathered, encoded or
    /// compared. An aggregate's output replaces its groups' rows this way.
    DueReplacing,
}

/// A key listed for consolidation by [`Arrangement::apply`]: its hash in the chains' map, and
/// the places of its frozen rows (see [`Frozen::find`]; empty when its chain shadows them), found
/// once for the due check and used by every step after it.
struct Due<'k> {
    key: Key<'k>,
    hash: u64,
    frozen: Places,
}

/// Adds an entry for row `row` of weight `weight` at the head of `chain`.
fn push_entry(entries: &mut Vec<Entry>, chain: &mut Chain, row: u64, weight: i64) -> Result<()> {
    let index = u32::try_from(entries.len())
        .ok()
        .filter(|&index| index != NIL)
        .ok_or_else(|| internal("a join input holds more than 4 billion entries"))?;
    entries.push(Entry {
        row,
        weight,
        next: chain.head,
    });
    chain.head = index;
    chain.len += 1;
    chain.weight += weight;
    Ok(())
}

/// The rows of the small kept batches a checkpoint concatenates into one (larger ones go as
/// they are; see [`Arrangement::contents`]).
const SAVED_BATCH_ROWS: usize = 1 << 16;

/// One input's rows by join key (see the module's documentation).
pub(super) struct Arrangement {
    schema: SchemaRef,
    /// Encodes whole rows, to find equal ones when a chain is consolidated.
    rows: RowCodec,
    batches: Vec<RecordBatch>,
    /// The global number of each batch's first row.
    starts: Vec<u64>,
    /// Rows in the batches: the next global row number.
    stored: u64,
    entries: Vec<Entry>,
    chains: KeyMap<Chain>,
    /// Entries in chains.
    live: u64,
    /// Memory of the kept batches.
    batch_bytes: u64,
    /// With expiry: the column of a row's time, the newest time kept (ms), and the bound at
    /// which the next pass over the rows is due.
    expiry: Option<Expiry>,
    /// With a state TTL: rows are forgotten once they have been kept that long.
    ttl: Option<Ttl>,
    /// Rows a checkpoint saved with their index, taken back as they are: the first
    /// `frozen_batches` batches, their keys found in the saved index rather than in `chains`
    /// (unless a chain shadows them).
    frozen: Option<Frozen>,
    frozen_batches: usize,
    /// Frozen rows of keys no chain shadows.
    frozen_live: u64,
    /// Rows kept but not indexed yet: all of the arrangement's (see [`Arrangement::defer`]).
    deferred: Option<deferred::Deferred>,
}

/// Rows that can never match again, by time (see [`Arrangement::expire`]).
#[derive(Debug, Clone, Copy)]
struct Expiry {
    column: usize,
    newest: i64,
    next_pass: i64,
}

/// Rows forgotten a time after they came (`table.exec.state.ttl`).
#[derive(Debug, Clone)]
struct Ttl {
    ttl_ms: i64,
    /// The time (ms) rows applied now come at.
    now_ms: i64,
    /// When each entry came (ms), by entry index.
    born: Vec<i64>,
    /// The time (ms) at which the next pass over the rows is due.
    next_pass: i64,
}

impl Arrangement {
    pub(super) fn new(schema: &SchemaRef, keys: &KeyCodec) -> Result<Self> {
        Ok(Self {
            schema: schema.clone(),
            rows: RowCodec::new(schema.fields().iter().map(|f| f.data_type().clone()))?,
            batches: Vec::new(),
            starts: Vec::new(),
            stored: 0,
            entries: Vec::new(),
            chains: keys.map(),
            live: 0,
            batch_bytes: 0,
            expiry: None,
            ttl: None,
            frozen: None,
            frozen_batches: 0,
            frozen_live: 0,
            deferred: None,
        })
    }

    /// Indexes the frozen rows no chain shadows into the chains, as if applied, and drops the
    /// frozen index: before any pass over every row (expiry, TTL, garbage collection).
    fn thaw(&mut self) -> Result<()> {
        let Some(frozen) = self.frozen.take() else {
            return Ok(());
        };
        for (key, rows) in frozen.keys() {
            if self.chains.get(key).is_some_and(|chain| chain.shadows) {
                continue;
            }
            let mut chain = self.chains.get(key).copied().unwrap_or(Chain::EMPTY);
            for row in rows {
                let weight = frozen.weight(row);
                push_entry(&mut self.entries, &mut chain, row, weight)?;
                if let Some(ttl) = &mut self.ttl {
                    ttl.born.push(ttl.now_ms);
                }
                chain.negatives += u32::from(weight < 0);
                self.live += 1;
            }
            self.chains.insert(key, chain);
        }
        self.frozen_live = 0;
        self.frozen_batches = 0;
        self.chains.retain(|chain| {
            chain.shadows = false;
            chain.len > 0
        });
        Ok(())
    }

    /// Takes a due key's frozen rows into its chain as entries and marks the chain as
    /// shadowing them (before the chain is consolidated).
    fn shadow(&mut self, due: &Due<'_>) -> Result<()> {
        let Due { key, hash, .. } = *due;
        let Some(frozen) = &self.frozen else {
            return Ok(());
        };
        if self.chains.get_hashed(key, hash).is_some_and(|chain| chain.shadows) {
            return Ok(());
        }
        let rows: Vec<(u64, i64)> = frozen.rows_at(due.frozen.clone()).collect();
        let mut chain = self.chains.get_hashed(key, hash).copied().unwrap_or(Chain::EMPTY);
        for (row, weight) in rows {
            push_entry(&mut self.entries, &mut chain, row, weight)?;
            chain.negatives += u32::from(weight < 0);
            self.live += 1;
            self.frozen_live -= 1;
        }
        chain.shadows = true;
        self.chains.insert_hashed(key, hash, chain);
        Ok(())
    }

    /// Rows kept for longer than `ttl_ms` (by the times given to [`Arrangement::forget_old`])
    /// are dropped.
    pub(super) fn set_ttl(&mut self, ttl_ms: i64) {
        self.ttl = Some(Ttl {
            ttl_ms,
            now_ms: i64::MIN,
            born: vec![i64::MIN; self.entries.len()],
            next_pass: i64::MIN,
        });
    }

    /// Rows applied from now on come at `now_ms`; drops the rows that came more than the TTL
    /// before it, in a pass over the rows at most every half TTL.
    pub(super) fn forget_old(&mut self, now_ms: i64) -> Result<()> {
        if self.ttl.is_none() {
            return Ok(());
        }
        self.settle()?;
        self.thaw()?;
        let Some(ttl) = &mut self.ttl else {
            return Ok(());
        };
        ttl.now_ms = now_ms;
        if now_ms < ttl.next_pass || self.live == 0 {
            return Ok(());
        }
        ttl.next_pass = now_ms.saturating_add(ttl.ttl_ms / 2);
        let horizon = now_ms.saturating_sub(ttl.ttl_ms);
        let expired: Vec<bool> = ttl.born.iter().map(|&born| born <= horizon).collect();
        if expired.iter().any(|&e| e) {
            self.drop_marked(&expired);
        }
        self.collect_garbage()
    }

    /// Rows whose time (column `column`) falls below a bound given to [`Arrangement::expire`]
    /// are dropped.
    pub(super) fn set_expiry(&mut self, column: usize) {
        self.expiry = Some(Expiry {
            column,
            newest: i64::MIN,
            next_pass: i64::MIN,
        });
    }

    /// Drops the rows whose time is below `bound` (ms): a watermark says no row that could
    /// match them will come. A pass over the rows costs their number, so one runs only once
    /// the bound has moved half way from the last pass's to the newest time kept: each row is
    /// looked at a few times in its life.
    pub(super) fn expire(&mut self, bound: i64) -> Result<()> {
        let Some(expiry) = self.expiry else {
            return Ok(());
        };
        self.settle()?;
        self.thaw()?;
        if bound <= expiry.next_pass || self.live == 0 {
            return Ok(());
        }
        let mut members = Vec::with_capacity(self.live as usize);
        for (_, chain) in self.chains.iter() {
            let mut next = chain.head;
            while let Some(entry) = self.entries.get(next as usize) {
                members.push(next);
                next = entry.next;
            }
        }
        let rows: Vec<u64> = members.iter().map(|&m| self.entries[m as usize].row).collect();
        let column = self.gather_column(expiry.column, &rows)?;
        let times = crate::operator::millis(&column)?;
        let mut expired = vec![false; self.entries.len()];
        let mut any = false;
        for (member, time) in members.iter().zip(times.iter()) {
            if time.is_some_and(|t| t < bound) {
                expired[*member as usize] = true;
                any = true;
            }
        }
        if any {
            self.drop_marked(&expired);
        }
        let newest = expiry.newest.max(bound);
        if let Some(expiry) = &mut self.expiry {
            expiry.next_pass = bound.saturating_add(newest.saturating_sub(bound) / 2);
        }
        self.collect_garbage()
    }

    /// Takes the entries marked in `expired` (by index) out of their chains.
    fn drop_marked(&mut self, expired: &[bool]) {
        let entries = &mut self.entries;
        let mut dropped = 0;
        self.chains.retain(|chain| {
            let (mut head, mut len, mut negatives, mut weight) = (NIL, 0, 0, 0);
            let mut kept = Vec::new();
            let mut next = chain.head;
            while let Some(entry) = entries.get(next as usize) {
                if expired[next as usize] {
                    dropped += 1;
                } else {
                    kept.push(next);
                }
                next = entry.next;
            }
            for &member in kept.iter().rev() {
                let entry = &mut entries[member as usize];
                entry.next = head;
                head = member;
                len += 1;
                weight += entry.weight;
                negatives += u32::from(entry.weight < 0);
            }
            *chain = Chain {
                head,
                len,
                negatives,
                weight,
                due: false,
                shadows: chain.shadows,
            };
            len > 0 || chain.shadows
        });
        self.live -= dropped;
    }

    /// One column of the rows with global numbers `rows`.
    fn gather_column(&self, column: usize, rows: &[u64]) -> Result<ArrayRef> {
        let batches = self
            .batches
            .iter()
            .map(|b| b.project(&[column]).map_err(internal))
            .collect::<Result<Vec<_>>>()?;
        Ok(gather(&batches, &self.starts, rows)?.remove(0))
    }

    /// Entries kept (distinct rows, once consolidated).
    pub(super) fn len(&self) -> u64 {
        self.live + self.frozen_live + self.deferred_rows()
    }

    /// Memory of the rows and the index, approximately.
    pub(super) fn bytes(&self) -> u64 {
        self.batch_bytes
            + (self.entries.len() * size_of::<Entry>() + self.chains.bytes()) as u64
            + self.frozen.as_ref().map_or(0, Frozen::bytes)
            + self.deferred_bytes()
    }

    /// The number of rows at `key`, with multiplicity.
    pub(super) fn weight(&self, key: Key<'_>) -> i64 {
        debug_assert!(self.deferred.is_none(), "a join input looked up with rows not indexed");
        let chain = self.chains.get(key);
        chain.map_or(0, |chain| chain.weight) + self.frozen_of(key, chain).map(|(_, w)| w).sum::<i64>()
    }

    /// Every key with rows.
    pub(super) fn keys(&self) -> impl Iterator<Item = Key<'_>> {
        debug_assert!(self.deferred.is_none(), "a join input looked up with rows not indexed");
        let frozen = self
            .frozen
            .iter()
            .flat_map(|frozen| frozen.distinct_keys().filter(|key| self.chains.get(*key).is_none()));
        self.chains
            .iter()
            .filter(|(_, chain)| chain.len > 0)
            .map(|(key, _)| key)
            .chain(frozen)
    }

    /// The entries at `key`: global row numbers and weights.
    pub(super) fn entries(&self, key: Key<'_>) -> impl Iterator<Item = (u64, i64)> + '_ {
        debug_assert!(self.deferred.is_none(), "a join input looked up with rows not indexed");
        self.chain_entries(key, self.chains.get(key))
    }

    /// [`Arrangement::entries`] of a key whose hash `probe` gave (see [`Arrangement::probe`]).
    pub(super) fn entries_hashed(&self, key: Key<'_>, hash: u64) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.chain_entries(key, self.chains.get_hashed(key, hash))
    }

    fn chain_entries<'a>(&'a self, key: Key<'_>, chain: Option<&Chain>) -> impl Iterator<Item = (u64, i64)> + use<'a> {
        let mut next = chain.map_or(NIL, |chain| chain.head);
        std::iter::from_fn(move || {
            let entry = self.entries.get(next as usize)?;
            next = entry.next;
            Some((entry.row, entry.weight))
        })
        .chain(self.frozen_of(key, chain))
    }

    /// The frozen rows of `key` unless its chain shadows them.
    fn frozen_of<'a>(&'a self, key: Key<'_>, chain: Option<&Chain>) -> impl Iterator<Item = (u64, i64)> + use<'a> {
        let shadowed = chain.is_some_and(|chain| chain.shadows);
        self.frozen
            .as_ref()
            .filter(|_| !shadowed)
            .map(|frozen| frozen.entries(key))
            .into_iter()
            .flatten()
    }

    /// The multiset of rows kept, each row with its weight, in the order they were kept (for a
    /// checkpoint), in one or more batches.
    ///
    /// The rows are taken out of each kept batch in order (a filter per batch), not gathered
    /// key by key, and not consolidated: a row and a deletion of it that its chain has not
    /// consolidated yet stay two rows of opposite weights, which restoring applies as they are.
    /// Gathering by key and consolidating the whole state cost a TPC-H join's checkpoint several
    /// times its state build.
    ///
    /// With a TTL, also when each row came (ms), row by row.
    pub(super) fn contents(&self) -> Result<(Vec<ChangeBatch>, Option<Int64Array>)> {
        if self.deferred.is_some() {
            return Err(internal("a join input saved with rows not indexed yet"));
        }
        let stored = usize::try_from(self.stored).map_err(internal)?;
        let mut weight_of = vec![0i64; stored];
        let mut born_of = self.ttl.as_ref().map(|_| vec![i64::MIN; stored]);
        if let Some(frozen) = &self.frozen {
            // The frozen rows count as saved, but for the keys whose chains shadow them (their
            // rows are among the entries below, or consolidated away).
            for (weight, saved) in weight_of.iter_mut().zip(frozen.all_weights()) {
                *weight = saved;
            }
            for (key, _) in self.chains.iter().filter(|(_, chain)| chain.shadows) {
                for (row, _) in frozen.entries(key) {
                    weight_of[row as usize] = 0;
                }
            }
        }
        let mut add = |index: u32, entry: &Entry| {
            weight_of[entry.row as usize] += entry.weight;
            if let (Some(born_of), Some(ttl)) = (&mut born_of, &self.ttl) {
                let born = ttl.born.get(index as usize).copied().unwrap_or(i64::MIN);
                born_of[entry.row as usize] = born_of[entry.row as usize].max(born);
            }
        };
        if self.live == self.entries.len() as u64 {
            // Every entry is in a chain (none consolidated or expired away since the entries
            // were last rewritten): in their order, without following the chains' links
            // across memory — a state build's checkpoint spent most of its time there.
            for (index, entry) in self.entries.iter().enumerate() {
                add(index as u32, entry);
            }
        } else {
            for (_, chain) in self.chains.iter() {
                let mut next = chain.head;
                while let Some(entry) = self.entries.get(next as usize) {
                    add(next, entry);
                    next = entry.next;
                }
            }
        }
        let mut kept = Vec::with_capacity(self.batches.len());
        let mut weights = Vec::new();
        let mut borns = Vec::new();
        for (batch, &start) in self.batches.iter().zip(&self.starts) {
            let range = start as usize..start as usize + batch.num_rows();
            let of_batch = &weight_of[range.clone()];
            let live: BooleanArray = of_batch.iter().map(|&w| Some(w != 0)).collect();
            match live.true_count() {
                0 => continue,
                n if n == batch.num_rows() => kept.push(batch.clone()),
                _ => kept.push(filter_record_batch(batch, &live).map_err(internal)?),
            }
            weights.extend(of_batch.iter().copied().filter(|&w| w != 0));
            if let Some(born_of) = &born_of {
                borns.extend(range.filter(|&row| weight_of[row] != 0).map(|row| born_of[row]));
            }
        }
        // Kept batches of at least `SAVED_BATCH_ROWS` rows go as they are (a state build's
        // batches are its epochs'); smaller neighbours are concatenated up to that size, so that
        // a long stream's many small epochs do not make as many batches. No copy of a large
        // state is made: a checkpoint writes the batches' arrays as they are.
        let mut chunks = Vec::new();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let mut offset = 0;
        let mut flush = |pending: &mut Vec<RecordBatch>, rows: usize, offset: &mut usize| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let data = match <[RecordBatch; 1]>::try_from(std::mem::take(pending)) {
                Ok([one]) => one,
                Err(many) => concat_batches(&self.schema, &many).map_err(internal)?,
            };
            let part = Int64Array::from(weights[*offset..*offset + rows].to_vec());
            *offset += rows;
            chunks.push(ChangeBatch::from_parts(&data, Arc::new(part))?);
            Ok(())
        };
        for batch in kept {
            if pending_rows > 0 && pending_rows + batch.num_rows() > SAVED_BATCH_ROWS {
                flush(&mut pending, pending_rows, &mut offset)?;
                pending_rows = 0;
            }
            pending_rows += batch.num_rows();
            pending.push(batch);
        }
        flush(&mut pending, pending_rows, &mut offset)?;
        if chunks.is_empty() {
            let none = Int64Array::from(Vec::<i64>::new());
            chunks.push(ChangeBatch::from_parts(
                &RecordBatch::new_empty(self.schema.clone()),
                Arc::new(none),
            )?);
        }
        Ok((chunks, born_of.map(|_| Int64Array::from(borns))))
    }

    /// With a TTL, the time (ms) rows applied from now on came at (restoring saved rows).
    pub(super) fn set_born(&mut self, born_ms: i64) {
        if let Some(ttl) = &mut self.ttl {
            ttl.now_ms = born_ms;
        }
    }

    /// Looks up `keys` in the order that sweeps the index's memory, with their hashes (see
    /// `KeyMap::probe`).
    pub(super) fn probe<'k>(&self, keys: impl ExactSizeIterator<Item = Key<'k>>) -> Probe {
        debug_assert!(self.deferred.is_none(), "a join input looked up with rows not indexed");
        self.chains.probe(keys)
    }

    /// The rows with global numbers `rows`, in that order, as columns of the input's schema.
    pub(super) fn gather(&self, rows: &[u64]) -> Result<Vec<ArrayRef>> {
        gather(&self.batches, &self.starts, rows)
    }

    /// Adds the rows of `data` with their `weights` under their `keys`, skipping the rows for
    /// which `matchable` is false (a NULL key that matches nothing).
    pub(super) fn apply(
        &mut self,
        data: &RecordBatch,
        weights: &Int64Array,
        keys: &Keys,
        matchable: &[bool],
        consolidate: Consolidate,
    ) -> Result<()> {
        self.settle()?;
        let probe = self.probe((0..data.num_rows()).map(|i| keys.key(i)));
        let rows: Vec<u32> = probe
            .order
            .iter()
            .copied()
            .filter(|&i| matchable[i as usize] && weights.value(i as usize) != 0)
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let start = self.stored;
        if let Some(expiry) = &mut self.expiry
            && let Some(newest) = crate::operator::millis(data.column(expiry.column))?
                .iter()
                .flatten()
                .max()
        {
            expiry.newest = expiry.newest.max(newest);
        }
        self.push_batch(data.clone())?;
        self.chains.reserve(rows.len());
        // One allocation for a large epoch's entries (a state build's is the whole input), not
        // a doubling per power of two, each copying and faulting in fresh pages.
        self.entries.reserve(rows.len());
        if let Some(ttl) = &mut self.ttl {
            ttl.born.reserve(rows.len());
        }
        let epoch_start = self.entries.len();
        let mut due: Vec<Due<'_>> = Vec::new();
        for i in rows {
            let i = i as usize;
            let key = keys.key(i);
            let weight = weights.value(i);
            let hash = probe.hash(i);
            let chain = self
                .chains
                .get_or_insert_hashed(key, hash, || Chain::EMPTY)
                .ok_or_else(|| internal("a join key inserted is not found"))?;
            push_entry(&mut self.entries, chain, start + i as u64, weight)?;
            if let Some(ttl) = &mut self.ttl {
                ttl.born.push(ttl.now_ms);
            }
            self.live += 1;
            if weight < 0 {
                chain.negatives += 1;
                // A key's frozen rows count in its chain's length (unless shadowed): taking
                // them in at its first deletion would gather every touched key's rows.
                if consolidate != Consolidate::Later
                    && !chain.due
                    && u64::from(chain.negatives) * 4 >= u64::from(chain.len)
                {
                    let frozen = match &self.frozen {
                        Some(frozen) if !chain.shadows => frozen.find(key),
                        _ => Places::default(),
                    };
                    if u64::from(chain.negatives) * 4 >= u64::from(chain.len) + frozen.len() as u64 {
                        chain.due = true;
                        due.push(Due { key, hash, frozen });
                    }
                }
            }
        }
        let replaced_from = (consolidate == Consolidate::DueReplacing).then_some(epoch_start);
        self.consolidate(due, replaced_from)?;
        self.collect_garbage()
    }

    /// Keeps a batch, merging the small batches at the end into one.
    fn push_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = compact_views(batch)?;
        self.starts.push(self.stored);
        self.stored += batch.num_rows() as u64;
        self.batch_bytes += batch.get_array_memory_size() as u64;
        self.batches.push(batch);
        // The small batches at the end are merged two by two while the last is at least half
        // the one before it (as a binary counter carries), so that a row is copied a
        // logarithmic number of times and small epochs leave a logarithmic number of batches.
        while let [.., before, last] = self.batches.as_slice()
            && self.batches.len() >= self.frozen_batches + 2
            && before.num_rows() < MERGE_ROWS
            && last.num_rows() * 2 >= before.num_rows()
        {
            let n = self.batches.len();
            let merged = concat_batches(&self.batches[n - 2].schema(), &self.batches[n - 2..]).map_err(internal)?;
            let merged = compact_views(merged)?;
            for batch in self.batches.drain(n - 2..) {
                self.batch_bytes -= batch.get_array_memory_size() as u64;
            }
            self.starts.truncate(n - 1);
            self.batch_bytes += merged.get_array_memory_size() as u64;
            self.batches.push(merged);
        }
        Ok(())
    }

    /// Sums the weights of equal rows in the chains of `keys`, dropping the rows whose weights
    /// sum to zero.
    ///
    /// A key whose weights sum to zero keeps no row: no row is ever deleted more often than it
    /// was inserted (what comparing the rows checks), so each row's weights sum to zero too.
    /// Its entries are dropped (and its frozen rows shadowed) without a row gathered or
    /// compared — the line items of a deleted order, say.
    ///
    /// With `replaced_from` (the first entry of an epoch whose deletions take only rows held
    /// before it), a key whose rows before the epoch were all deleted keeps the epoch's insertions
    /// (see [`Arrangement::replace_if_all_deleted`]).
    fn consolidate(&mut self, mut keys: Vec<Due<'_>>, replaced_from: Option<usize>) -> Result<()> {
        keys.retain(|due| !self.drop_if_cancelled(due));
        if let Some(start) = replaced_from {
            keys.retain(|due| !self.replace_if_all_deleted(due, start));
        }
        if keys.is_empty() {
            return Ok(());
        }
        // A key's frozen rows are consolidated with its entries.
        for due in &keys {
            self.shadow(due)?;
        }
        // The entries of every chain, one after the other, and where each chain's start.
        let mut members: Vec<u32> = Vec::new();
        let mut bounds = vec![0];
        for due in &keys {
            let mut next = self
                .chains
                .get_hashed(due.key, due.hash)
                .map_or(NIL, |chain| chain.head);
            while let Some(entry) = self.entries.get(next as usize) {
                members.push(next);
                next = entry.next;
            }
            bounds.push(members.len());
        }
        let rows: Vec<u64> = members.iter().map(|&m| self.entries[m as usize].row).collect();
        let columns = self.gather(&rows)?;
        let encoded = self.rows.encode(&columns, rows.len())?;
        let mut firsts: HashMap<&[u8], u32> = HashMap::new();
        for (k, &Due { key, hash, .. }) in keys.iter().enumerate() {
            firsts.clear();
            let group = &members[bounds[k]..bounds[k + 1]];
            let mut kept: Vec<u32> = Vec::new();
            for (offset, &member) in group.iter().enumerate() {
                let row = encoded.row(bounds[k] + offset).data();
                let weight = self.entries[member as usize].weight;
                match firsts.get(row) {
                    Some(&first) => self.entries[first as usize].weight += weight,
                    None => {
                        firsts.insert(row, member);
                        kept.push(member);
                    }
                }
            }
            let mut head = NIL;
            let mut len = 0;
            let mut total = 0;
            for &member in kept.iter().rev() {
                let entry = &mut self.entries[member as usize];
                if entry.weight < 0 {
                    return Err(internal("a join input deleted a row it never had"));
                }
                if entry.weight > 0 {
                    entry.next = head;
                    head = member;
                    len += 1;
                    total += entry.weight;
                }
            }
            self.live -= (group.len() - len as usize) as u64;
            // A chain shadowing frozen rows stays, empty, for as long as they are kept.
            let shadows = self.chains.get_hashed(key, hash).is_some_and(|chain| chain.shadows);
            if len == 0 && !shadows {
                self.chains.remove(key);
            } else if let Some(chain) = self.chains.get_mut_hashed(key, hash) {
                *chain = Chain {
                    head,
                    len,
                    negatives: 0,
                    weight: total,
                    due: false,
                    shadows,
                };
            }
        }
        Ok(())
    }

    /// Keeps only the insertions of the epoch whose first entry is `start` at `key` (and
    /// shadows its frozen rows) when the epoch's deletions there take as many rows as the key
    /// held before it; whether it did. Every deletion of the epoch takes a row held before it
    /// (see [`Consolidate::DueReplacing`]), so as many as there were take them all. The
    /// insertions are kept as entries as they came (equal ones are summed by lookups, and by a
    /// later consolidation).
    fn replace_if_all_deleted(&mut self, due: &Due<'_>, start: usize) -> bool {
        let Due { key, hash, .. } = *due;
        let Some(chain) = self.chains.get_hashed(key, hash).copied() else {
            return false;
        };
        let (frozen_rows, mut before) = self.frozen_weight(due, &chain);
        let mut deleted = 0i64;
        let mut inserted = Vec::new();
        let mut next = chain.head;
        while let Some(entry) = self.entries.get(next as usize) {
            match (next as usize) < start {
                true => before += entry.weight,
                false if entry.weight < 0 => deleted -= entry.weight,
                false => inserted.push(next),
            }
            next = entry.next;
        }
        if before <= 0 || deleted != before {
            return false;
        }
        let (mut head, mut weight) = (NIL, 0);
        for &member in inserted.iter().rev() {
            let entry = &mut self.entries[member as usize];
            entry.next = head;
            head = member;
            weight += entry.weight;
        }
        let len = inserted.len() as u32;
        self.live -= u64::from(chain.len - len);
        self.frozen_live -= frozen_rows;
        let shadows = chain.shadows || frozen_rows > 0;
        if len == 0 && !shadows {
            self.chains.remove(key);
        } else {
            self.chains.insert_hashed(
                key,
                hash,
                Chain {
                    head,
                    len,
                    negatives: 0,
                    weight,
                    due: false,
                    shadows,
                },
            );
        }
        true
    }

    /// Drops `key`'s entries, and shadows its frozen rows, when their weights sum to zero (see
    /// [`Arrangement::consolidate`]); whether it did.
    fn drop_if_cancelled(&mut self, due: &Due<'_>) -> bool {
        let Due { key, hash, .. } = *due;
        let Some(chain) = self.chains.get_hashed(key, hash).copied() else {
            return false;
        };
        let (frozen_rows, frozen_weight) = self.frozen_weight(due, &chain);
        if chain.weight + frozen_weight != 0 {
            return false;
        }
        self.live -= u64::from(chain.len);
        self.frozen_live -= frozen_rows;
        if chain.shadows || frozen_rows > 0 {
            self.chains.insert_hashed(
                key,
                hash,
                Chain {
                    shadows: true,
                    ..Chain::EMPTY
                },
            );
        } else {
            self.chains.remove(key);
        }
        true
    }

    /// The number of a due key's frozen rows its chain does not shadow, and their weights'
    /// sum.
    fn frozen_weight(&self, due: &Due<'_>, chain: &Chain) -> (u64, i64) {
        match &self.frozen {
            Some(frozen) if !chain.shadows => frozen
                .rows_at(due.frozen.clone())
                .fold((0, 0), |(rows, sum), (_, weight)| (rows + 1, sum + weight)),
            _ => (0, 0),
        }
    }

    /// Copies the live rows into new batches when the rows no entry refers to are as many as
    /// them, or the entries out of chains are.
    fn collect_garbage(&mut self) -> Result<()> {
        let dead_rows = self.stored - self.len();
        let dead_entries = self.entries.len() as u64 - self.live;
        if dead_rows.max(dead_entries) < GARBAGE_ROWS.max(self.len()) {
            return Ok(());
        }
        self.thaw()?;
        let mut entries = Vec::with_capacity(self.live as usize);
        let mut rows = Vec::with_capacity(self.live as usize);
        let mut born = Vec::new();
        for chain in self.chains.values_mut() {
            let mut next = chain.head;
            let mut previous = NIL;
            while let Some(entry) = self.entries.get(next as usize) {
                let index = entries.len() as u32;
                if previous == NIL {
                    chain.head = index;
                } else {
                    let previous: &mut Entry = &mut entries[previous as usize];
                    previous.next = index;
                }
                entries.push(Entry {
                    row: rows.len() as u64,
                    weight: entry.weight,
                    next: NIL,
                });
                if let Some(ttl) = &self.ttl {
                    born.push(ttl.born.get(next as usize).copied().unwrap_or(i64::MIN));
                }
                rows.push(entry.row);
                previous = index;
                next = entry.next;
            }
        }
        let schema = self
            .batches
            .first()
            .map_or_else(|| self.schema.clone(), RecordBatch::schema);
        let mut batches = Vec::new();
        let mut starts = Vec::new();
        for (n, chunk) in rows.chunks(REWRITE_ROWS).enumerate() {
            let columns = self.gather(chunk)?;
            let options = RecordBatchOptions::new().with_row_count(Some(chunk.len()));
            let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(internal)?;
            starts.push((n * REWRITE_ROWS) as u64);
            batches.push(compact_views(batch)?);
        }
        self.batch_bytes = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
        self.batches = batches;
        self.starts = starts;
        self.stored = rows.len() as u64;
        self.entries = entries;
        self.live = self.entries.len() as u64;
        if let Some(ttl) = &mut self.ttl {
            ttl.born = born;
        }
        Ok(())
    }
}

mod deferred;
mod restored;
#[cfg(test)]
mod tests;
