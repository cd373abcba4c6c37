//! Generated rows ([`crate::GeneratedRows`]): listed in manifests, made by the table's generator
//! on every read path, never written, compacted or vacuumed as files.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use futures::TryStreamExt;

use freshet_common::Result;

use crate::{Catalog, GeneratedRows, Location, RowGenerator, Table, WriteOptions};

/// Row `i` is `(i * 3, "row i")`, made in batches of at most 700 rows.
#[derive(Debug)]
struct Counting {
    describe: String,
    schema: SchemaRef,
}

impl RowGenerator for Counting {
    fn describe(&self) -> &str {
        &self.describe
    }

    fn generate(&self, rows: &GeneratedRows, count: u64) -> Result<Vec<RecordBatch>> {
        let end = rows.first + count;
        let mut batches = Vec::new();
        let mut start = rows.first;
        while start < end {
            let stop = (start + 700).min(end);
            let n: Int64Array = (start..stop).map(|i| i as i64 * 3).collect();
            let s: StringArray = (start..stop).map(|i| Some(format!("row {i}"))).collect();
            batches.push(RecordBatch::try_new(self.schema.clone(), vec![Arc::new(n), Arc::new(s)]).unwrap());
            start = stop;
        }
        Ok(batches)
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
    ]))
}

fn made(first: u64, generator: &str) -> GeneratedRows {
    GeneratedRows {
        first,
        origin_ms: 1_000,
        generator: generator.into(),
    }
}

async fn open(location: &Arc<Location>) -> Catalog {
    Catalog::open(location.clone(), WriteOptions::default()).await.unwrap()
}

fn values(batches: &[RecordBatch], column: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(column).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

async fn scan(table: &Arc<Table>) -> Result<Vec<RecordBatch>> {
    table.snapshot().scan(None, false).try_collect().await
}

#[tokio::test]
async fn generated_rows_are_made_on_every_read_and_never_written() {
    let location = Arc::new(Location::open("memory://").unwrap());
    let catalog = open(&location).await;
    let table = catalog
        .create_connector_table("gen", schema(), "CREATE TABLE gen ...")
        .await
        .unwrap();
    let generator = Arc::new(Counting {
        describe: "counting:1".into(),
        schema: schema(),
    });
    table.set_generator(generator.clone());
    let files_before = location.store().list(None).try_collect::<Vec<_>>().await.unwrap().len();

    // Two ingestions that follow each other extend one entry; a written batch between the
    // third and a fourth keeps them apart.
    for (first, count) in [(0, 1000), (1000, 500)] {
        let mut txn = table.begin("INGEST").await.unwrap();
        txn.insert_generated(made(first, "counting:1"), count).unwrap();
        txn.commit().await.unwrap();
    }
    let manifest = table.snapshot().manifest().clone();
    assert_eq!(manifest.files.len(), 1, "{:?}", manifest.files);
    assert_eq!((manifest.files[0].rows, manifest.files[0].bytes), (1500, 0));
    let mut txn = table.begin("INSERT").await.unwrap();
    let written = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(vec![-1])),
            Arc::new(StringArray::from(vec!["written"])),
        ],
    )
    .unwrap();
    txn.insert(&written).await.unwrap();
    txn.commit().await.unwrap();
    let mut txn = table.begin("INGEST").await.unwrap();
    txn.insert_generated(made(1500, "counting:1"), 20).unwrap();
    txn.commit().await.unwrap();
    assert_eq!(table.snapshot().manifest().files.len(), 3);
    // Only the written row's Parquet file (and the manifests) went to the store.
    let parquet = location
        .store()
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
        .count();
    assert_eq!(parquet, 1, "{files_before} objects before");

    // A scan: every row, in order, the projected column and the positions right.
    let rows = scan(&table).await.unwrap();
    let mut expected: Vec<i64> = (0..1500).map(|i| i * 3).collect();
    expected.push(-1);
    expected.extend((1500..1520).map(|i| i * 3));
    assert_eq!(values(&rows, 0), expected);
    let projected: Vec<RecordBatch> = table
        .snapshot()
        .scan_files(vec![0], Some(vec![1]), true)
        .try_collect()
        .await
        .unwrap();
    let texts: Vec<String> = projected
        .iter()
        .flat_map(|b| {
            let s = b.column(0).as_string::<i32>();
            (0..s.len()).map(|i| s.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(texts.len(), 1500);
    assert_eq!(texts[1234], "row 1234");
    let positions: Vec<u64> = projected
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<UInt64Type>().values().to_vec())
        .collect();
    assert_eq!(positions, (0..1500).collect::<Vec<u64>>());

    // Change reads: each version's rows, with weight +1.
    for (from, to, expected) in [
        (1, 2, (0..1000).map(|i| i * 3).collect::<Vec<_>>()),
        (2, 3, (1000..1500).map(|i| i * 3).collect()),
        (4, 5, (1500..1520).map(|i| i * 3).collect()),
    ] {
        let changes: Vec<_> = table
            .changes(from, to)
            .await
            .unwrap()
            .stream()
            .try_collect()
            .await
            .unwrap();
        let data: Vec<RecordBatch> = changes.iter().map(|c| c.data()).collect();
        assert_eq!(values(&data, 0), expected, "changes {from}..{to}");
        assert!(changes.iter().all(|c| c.weights().values().iter().all(|&w| w == 1)));
    }

    // Compaction rewrites no generated rows, and VACUUM deletes nothing they need.
    table.compact().await.unwrap();
    assert!(
        table
            .snapshot()
            .manifest()
            .files
            .iter()
            .filter(|f| f.generated.is_some())
            .count()
            == 2,
        "{:?}",
        table.snapshot().manifest().files
    );
    table.vacuum(1).await.unwrap();
    assert_eq!(values(&scan(&table).await.unwrap(), 0).len(), 1521);

    // Reopened, the rows cannot be made until the table's generator is registered again, and
    // not by a generator that describes itself otherwise.
    drop(table);
    drop(catalog);
    let catalog = open(&location).await;
    let table = catalog.table("gen").unwrap();
    let error = scan(&table).await.unwrap_err().to_string();
    assert!(error.contains("generator is not open"), "{error}");
    table.set_generator(Arc::new(Counting {
        describe: "counting:2".into(),
        schema: schema(),
    }));
    let error = scan(&table).await.unwrap_err().to_string();
    assert!(error.contains("other options"), "{error}");
    table.set_generator(generator);
    assert_eq!(values(&scan(&table).await.unwrap(), 0), expected);
}
