//! The benchmark data of materialized-table benchmarks: orders and customers, generated
//! deterministically. Included with `#[path = "data.rs"] mod data;`.

use std::sync::Arc;

use freshet::datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use freshet::datafusion::arrow::datatypes::{DataType, Field, Schema};
use freshet::datafusion::datasource::MemTable;

const BATCH_ROWS: usize = 8192;
pub const CUSTOMERS: usize = 100_000;

/// A xorshift generator: the same data at every run.
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Orders `from..to`: (id, customer_id, amount).
pub fn orders(from: usize, to: usize, random: &mut Random) -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let mut batches = Vec::new();
    let mut start = from;
    while start < to {
        let n = BATCH_ROWS.min(to - start);
        let ids = Int64Array::from_iter_values((start..start + n).map(|i| i as i64));
        let customers = Int64Array::from_iter_values((0..n).map(|_| (random.next() % CUSTOMERS as u64) as i64));
        let amounts = Float64Array::from_iter_values((0..n).map(|_| (random.next() % 100_000) as f64 / 100.0));
        batches.push(
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids), Arc::new(customers), Arc::new(amounts)],
            )
            .unwrap(),
        );
        start += n;
    }
    MemTable::try_new(schema, vec![batches]).unwrap()
}

/// 100,000 customers in 50 regions.
pub fn customers() -> MemTable {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
    ]));
    let ids = Int64Array::from_iter_values(0..CUSTOMERS as i64);
    let regions = StringArray::from_iter_values((0..CUSTOMERS).map(|i| format!("region-{:02}", i % 50)));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(regions)]).unwrap();
    MemTable::try_new(schema, vec![vec![batch]]).unwrap()
}
