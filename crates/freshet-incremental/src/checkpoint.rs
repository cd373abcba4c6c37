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

/// The state of every stateful operator of a pipeline, in the tree's pre-order.
#[derive(Debug, Clone)]
pub struct PipelineState {
    /// Identifies the operator tree the state belongs to.
    pub fingerprint: String,
    /// Each stateful operator's batches.
    pub operators: Vec<Vec<RecordBatch>>,
}

impl PipelineState {
    /// Rows over every operator's batches.
    pub fn rows(&self) -> usize {
        self.operators.iter().flatten().map(RecordBatch::num_rows).sum()
    }
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
