//! Checkpoints of a pipeline's operator state, so that a restart restores the state instead of
//! reading every input again.
//!
//! Each stateful operator gives its state as Arrow record batches of a layout of its own
//! ([`SavedState`]) and takes them back on a pipeline built from the same plan. A pipeline's
//! checkpoint is the list of its stateful operators' states in the tree's pre-order, with a
//! fingerprint of the tree (every operator's description and output schema): state is only
//! given back to a pipeline of the same shape. Where the state goes is the caller's (the engine
//! writes it as Arrow IPC files committed with the table's rows).
//!
//! Accumulators that are not plain numbers (a float sum kept exactly, a MIN/MAX multiset) are
//! written as one binary value per group with [`StateWriter`] and read with [`StateReader`].

use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{FileDecoder, FileReader, read_footer_length};
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::ipc::{Block, root_as_footer};
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::{FreshetError, Result};

/// What an operator's state is, for a checkpoint.
#[derive(Debug)]
pub(crate) enum SavedState {
    /// It keeps none.
    Stateless,
    /// It keeps state it cannot save yet: the pipeline has no checkpoint and is rebuilt.
    Unsupported,
    /// Its state, in batches of its own layout.
    Batches(Vec<RecordBatch>),
}

/// The state of every stateful operator of a pipeline, in the tree's pre-order: whole, or a
/// delta over the checkpoints before it.
#[derive(Debug, Clone)]
pub struct PipelineState {
    /// Identifies the operator tree the state belongs to.
    pub fingerprint: String,
    /// Each stateful operator's batches.
    pub operators: Vec<Vec<RecordBatch>>,
    /// Per stateful operator, whether its batches are the changes since the checkpoint before
    /// rather than its whole state (empty: none are).
    pub deltas: Vec<bool>,
}

/// Where one checkpoint file holds each stateful operator's batches, which of them are deltas,
/// and how many rows it holds: what a checkpoint's owner records of each file of its chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    /// The byte ranges of each stateful operator's batches ([`PipelineState::decode`]).
    pub operators: OperatorRanges,
    /// [`PipelineState::deltas`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<bool>,
    /// Rows of its batches.
    #[serde(default)]
    pub rows: u64,
}

/// Deltas a chain holds at most: the next checkpoint is whole.
pub const MAX_DELTAS: usize = 32;

/// Whether the next checkpoint, of `next_rows` changed rows, may be a delta over a chain of a
/// whole state of `base_rows` rows and the deltas `deltas`: while the deltas together stay
/// smaller than the base (a restore reads at most twice the state) and fewer than
/// [`MAX_DELTAS`]. So the checkpoints write each change about once, and the whole state once
/// per state-size of changes.
pub fn delta_fits(base_rows: u64, deltas: &[Layer], next_rows: u64) -> bool {
    deltas.len() < MAX_DELTAS && deltas.iter().map(|d| d.rows).sum::<u64>() + next_rows <= base_rows
}

impl PipelineState {
    /// Rows over every operator's batches.
    pub fn rows(&self) -> usize {
        self.operators.iter().flatten().map(RecordBatch::num_rows).sum()
    }
}

/// A checkpoint is due once the input changes since the last one reach this many times the
/// state's rows, whatever the interval: what a restore replays stays proportional to the state.
pub const CHECKPOINT_MAX_CHANGES_PER_ROW: u64 = 8;

/// When a checkpoint is due: where a state has none (`since` is `None`); where the last,
/// taken at `since.1` (ms), is older than `interval_ms` at `now_ms` and changes came since;
/// where the input changes since (`since.0`, this epoch's included) reach
/// [`CHECKPOINT_MAX_CHANGES_PER_ROW`] times the state's rows; and where the changes the
/// operators keep for the next delta (`pending` rows) reach the state's rows, which bounds
/// their memory by the state's.
pub fn checkpoint_due(since: Option<(u64, i64)>, state_rows: u64, pending: u64, now_ms: i64, interval_ms: i64) -> bool {
    let Some((since, at_ms)) = since else {
        return true;
    };
    let rows = state_rows.max(1);
    since > 0
        && (now_ms - at_ms >= interval_ms
            || since >= rows.saturating_mul(CHECKPOINT_MAX_CHANGES_PER_ROW)
            || pending >= rows.max(PENDING_MIN_ROWS))
}

/// Kept changes below this many rows never make a checkpoint due by themselves.
const PENDING_MIN_ROWS: u64 = 4_096;

/// The byte ranges (start, end) of each stateful operator's batches in an encoded state, in the
/// pipeline's order.
pub type OperatorRanges = Vec<Vec<(usize, usize)>>;

impl PipelineState {
    /// The state as bytes — each batch an Arrow IPC file, one after the other — and the byte
    /// ranges of each operator's batches, which [`PipelineState::decode`] takes back.
    pub fn encode(&self) -> Result<(Vec<u8>, OperatorRanges)> {
        // Sized for the batches up front: a buffer of a large state grown by doubling copies
        // it several times, and faults in (zeroed) pages at every copy — most of a TPC-H
        // join's first checkpoint.
        let estimate: usize = self
            .operators
            .iter()
            .flatten()
            .map(|batch| batch.get_array_memory_size() + 4_096)
            .sum();
        let mut bytes = Vec::with_capacity(estimate);
        let mut operators = Vec::with_capacity(self.operators.len());
        for batches in &self.operators {
            let mut ranges = Vec::with_capacity(batches.len());
            for batch in batches {
                // Each file starts 64-byte aligned, as its buffers within it are: read in
                // place (see [`PipelineState::decode`]), no buffer must be copied to align it.
                bytes.resize(bytes.len().next_multiple_of(64), 0);
                let start = bytes.len();
                let mut writer = FileWriter::try_new(&mut bytes, &batch.schema()).map_err(ipc_error)?;
                writer.write(batch).map_err(ipc_error)?;
                writer.finish().map_err(ipc_error)?;
                drop(writer);
                ranges.push((start, bytes.len()));
            }
            operators.push(ranges);
        }
        Ok((bytes, operators))
    }

    /// Reads back what [`PipelineState::encode`] wrote; a range outside the bytes or a batch
    /// that does not decode is an error (a corrupt checkpoint). A batch whose schema carries
    /// [`READ_IN_PLACE`] is decoded without copying (its arrays keep `bytes`); the others are
    /// copied out, so that no small state holds a large file's memory.
    pub fn decode(fingerprint: String, bytes: &Buffer, operators: &[Vec<(usize, usize)>]) -> Result<Self> {
        Self::decode_with(fingerprint, bytes, operators, false)
    }

    /// [`PipelineState::decode`] without validating the contents of the arrays read in place —
    /// their offsets, string views and UTF-8 — which was nearly all of a restore's decoding:
    /// 90 ms of each command-line refresh of TPC-H Q18 at scale factor 1, whose join state
    /// keeps 1.1 GB of rows with strings. The file's structure (footer, messages, buffer
    /// ranges) is still checked.
    ///
    /// # Safety
    ///
    /// `bytes` must be what [`PipelineState::encode`] returned, unchanged — as a checkpoint
    /// file read back and found to have the size and checksum recorded when it was written
    /// is. Arrays of other bytes may point outside their buffers.
    #[allow(unsafe_code)]
    pub unsafe fn decode_unchecked(
        fingerprint: String,
        bytes: &Buffer,
        operators: &[Vec<(usize, usize)>],
    ) -> Result<Self> {
        Self::decode_with(fingerprint, bytes, operators, true)
    }

    /// `unchecked`: only under [`PipelineState::decode_unchecked`]'s contract.
    fn decode_with(
        fingerprint: String,
        bytes: &Buffer,
        operators: &[Vec<(usize, usize)>],
        unchecked: bool,
    ) -> Result<Self> {
        let mut states = Vec::with_capacity(operators.len());
        for ranges in operators {
            let mut batches = Vec::with_capacity(ranges.len());
            for &(start, end) in ranges {
                if start > end || end > bytes.len() {
                    return Err(mismatch("a range is outside the checkpoint's bytes"));
                }
                batches.push(decode_file(&bytes.slice_with_length(start, end - start), unchecked)?);
            }
            states.push(batches);
        }
        Ok(Self {
            fingerprint,
            operators: states,
            deltas: Vec::new(),
        })
    }
}

/// The metadata key of a saved batch to be read in place (see [`PipelineState::decode`]): the
/// rows a join keeps as they were saved, which make most of a join's checkpoint.
pub(crate) const READ_IN_PLACE: &str = "freshet.state.read_in_place";

/// One Arrow IPC file's batches, as one; `unchecked`: the arrays read in place are not
/// validated (only under [`PipelineState::decode_unchecked`]'s contract).
#[allow(unsafe_code)]
fn decode_file(file: &Buffer, unchecked: bool) -> Result<RecordBatch> {
    let corrupt = || mismatch("an operator's state is not an Arrow IPC file");
    let trailer = file.len().checked_sub(10).ok_or_else(corrupt)?;
    let footer_length: [u8; 10] = file[trailer..].try_into().map_err(|_| corrupt())?;
    let footer_length = read_footer_length(footer_length).map_err(ipc_error)?;
    let footer_start = trailer.checked_sub(footer_length).ok_or_else(corrupt)?;
    let footer = root_as_footer(&file[footer_start..trailer]).map_err(|e| mismatch(format!("its footer: {e}")))?;
    let schema = footer.schema().ok_or_else(corrupt)?;
    let schema = Arc::new(fb_to_schema(schema));
    if !schema.metadata().contains_key(READ_IN_PLACE) {
        let reader = FileReader::try_new(std::io::Cursor::new(file.as_slice()), None).map_err(ipc_error)?;
        let parts = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(ipc_error)?;
        return concat_batches(&schema, &parts).map_err(ipc_error);
    }
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    if unchecked {
        // SAFETY: the caller vouches that `file` is one of the files `PipelineState::encode`
        // wrote with Arrow's IPC writer from valid arrays, unchanged since.
        decoder = unsafe { decoder.with_skip_validation(true) };
    }
    let block = |block: &Block| -> Result<Buffer> {
        let offset = usize::try_from(block.offset()).map_err(|_| corrupt())?;
        let length = usize::try_from(block.bodyLength()).map_err(|_| corrupt())?
            + usize::try_from(block.metaDataLength()).map_err(|_| corrupt())?;
        if offset.checked_add(length).is_none_or(|end| end > footer_start) {
            return Err(corrupt());
        }
        Ok(file.slice_with_length(offset, length))
    };
    for dictionary in footer.dictionaries().iter().flatten() {
        decoder
            .read_dictionary(dictionary, &block(dictionary)?)
            .map_err(ipc_error)?;
    }
    let mut parts = Vec::new();
    for batch in footer.recordBatches().iter().flatten() {
        if let Some(batch) = decoder.read_record_batch(batch, &block(batch)?).map_err(ipc_error)? {
            parts.push(batch);
        }
    }
    match <[RecordBatch; 1]>::try_from(parts) {
        Ok([one]) => Ok(one),
        Err(parts) => concat_batches(&schema, &parts).map_err(ipc_error),
    }
}

fn ipc_error(e: datafusion::arrow::error::ArrowError) -> FreshetError {
    FreshetError::Internal(format!("a checkpoint of operator state: {e}"))
}

/// A checkpoint that does not fit the pipeline it is given to.
pub(crate) fn mismatch(what: impl std::fmt::Display) -> FreshetError {
    FreshetError::Internal(format!("the checkpoint does not fit the pipeline: {what}"))
}

/// Appends little-endian values to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct StateWriter {
    bytes: Vec<u8>,
}

impl StateWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn i64(&mut self, value: i64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn i128(&mut self, value: i128) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.i64(value.len() as i64);
        self.bytes.extend_from_slice(value);
        self
    }

    /// What was written since the last [`StateWriter::clear`].
    pub(crate) fn written(&self) -> &[u8] {
        &self.bytes
    }

    /// Starts again, keeping the buffer.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }
}

/// Reads what a [`StateWriter`] wrote; running out is an error (a corrupt checkpoint).
#[derive(Debug)]
pub(crate) struct StateReader<'a> {
    bytes: &'a [u8],
}

impl<'a> StateReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(mismatch("an accumulator's state is cut short"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(word))
    }

    pub(crate) fn i128(&mut self) -> Result<i128> {
        let mut word = [0u8; 16];
        word.copy_from_slice(self.take(16)?);
        Ok(i128::from_le_bytes(word))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.i64()?).map_err(|_| mismatch("a negative length"))?;
        self.take(len)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_decodes_as_encoded_and_a_range_outside_its_bytes_is_an_error() {
        use datafusion::arrow::array::{ArrayRef, Int64Array};
        let batch = |values: Vec<i64>| {
            RecordBatch::try_from_iter([("v", std::sync::Arc::new(Int64Array::from(values)) as ArrayRef)]).unwrap()
        };
        let state = PipelineState {
            fingerprint: "f".into(),
            operators: vec![vec![batch(vec![1, 2]), batch(vec![3])], vec![], vec![batch(vec![4])]],
            deltas: Vec::new(),
        };
        let (bytes, ranges) = state.encode().unwrap();
        let bytes = Buffer::from_vec(bytes);
        let back = PipelineState::decode("f".into(), &bytes, &ranges).unwrap();
        assert_eq!(back.operators, state.operators);
        let mut outside = ranges.clone();
        outside[2][0].1 = bytes.len() + 1;
        assert!(PipelineState::decode("f".into(), &bytes, &outside).is_err());
        let half = bytes.slice_with_length(0, bytes.len() / 2);
        assert!(PipelineState::decode("f".into(), &half, &ranges).is_err());
    }

    /// Batches read in place (strings in views, short and long, NULLs, a slice) decode the
    /// same whether their arrays are validated or not.
    #[test]
    #[allow(unsafe_code)]
    fn unchecked_decoding_reads_what_checked_decoding_reads() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringViewArray};
        let strings = StringViewArray::from(vec![
            Some("short"),
            None,
            Some("a string longer than twelve bytes"),
            Some(""),
        ]);
        let ints = Int64Array::from(vec![Some(1), Some(2), None, Some(4)]);
        let batch =
            RecordBatch::try_from_iter([("s", Arc::new(strings) as ArrayRef), ("i", Arc::new(ints) as ArrayRef)])
                .unwrap();
        let schema = batch
            .schema()
            .as_ref()
            .clone()
            .with_metadata([(READ_IN_PLACE.to_string(), String::new())].into());
        let batch = batch.with_schema(Arc::new(schema)).unwrap();
        let state = PipelineState {
            fingerprint: "f".into(),
            operators: vec![vec![batch.clone(), batch.slice(1, 2)]],
            deltas: Vec::new(),
        };
        let (bytes, ranges) = state.encode().unwrap();
        let bytes = Buffer::from_vec(bytes);
        let checked = PipelineState::decode("f".into(), &bytes, &ranges).unwrap();
        // SAFETY: the bytes are what `encode` returned.
        let unchecked = unsafe { PipelineState::decode_unchecked("f".into(), &bytes, &ranges) }.unwrap();
        assert_eq!(checked.operators, state.operators);
        assert_eq!(unchecked.operators, state.operators);
    }

    #[test]
    fn a_checkpoint_is_due_without_one_after_the_interval_or_after_many_changes() {
        assert!(checkpoint_due(None, 10, 0, 0, 60_000));
        assert!(!checkpoint_due(Some((5, 0)), 10, 5, 1_000, 60_000));
        assert!(checkpoint_due(Some((5, 0)), 10, 5, 60_000, 60_000));
        assert!(
            !checkpoint_due(Some((0, 0)), 10, 0, 60_000, 60_000),
            "nothing changed since"
        );
        assert!(checkpoint_due(Some((80, 0)), 10, 0, 1_000, 60_000));
        assert!(!checkpoint_due(Some((5, 0)), 10_000, 4_095, 1_000, 60_000));
        assert!(
            checkpoint_due(Some((5, 0)), 10_000, 10_000, 1_000, 60_000),
            "kept changes as many as the state"
        );
    }

    #[test]
    fn deltas_are_taken_while_they_stay_smaller_than_the_base() {
        let layer = |rows| Layer {
            rows,
            ..Layer::default()
        };
        assert!(delta_fits(100, &[], 100));
        assert!(!delta_fits(100, &[], 101));
        assert!(delta_fits(100, &[layer(40), layer(40)], 20));
        assert!(!delta_fits(100, &[layer(40), layer(40)], 21));
        assert!(!delta_fits(u64::MAX, &vec![layer(1); MAX_DELTAS], 1));
    }

    #[test]
    fn values_read_back_as_written_and_a_short_buffer_is_an_error() {
        let mut writer = StateWriter::new();
        writer.i64(-3).i128(1 << 100).bytes(b"abc");
        let bytes = writer.written().to_vec();
        let mut reader = StateReader::new(&bytes);
        assert_eq!(reader.i64().unwrap(), -3);
        assert_eq!(reader.i128().unwrap(), 1 << 100);
        assert_eq!(reader.bytes().unwrap(), b"abc");
        assert!(reader.is_empty());
        assert!(StateReader::new(&bytes[..5]).i64().is_err());
    }
}
