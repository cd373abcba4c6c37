//! TPC-H as a corpus for incremental maintenance: the eight tables from a TPC-H generator, all
//! 22 queries as materialized tables refreshed incrementally, and rounds of changes in the
//! spirit of the refresh functions — new orders with their line items (RF1), orders and line
//! items deleted (RF2) — plus updates of dimension and fact rows. After loading and after every
//! round, each table must equal DataFusion's batch evaluation of its query, and every refresh
//! must have been incremental.
//!
//! At the default scale factor (0.01) it runs in the test suite; a larger run:
//! `FRESHET_TPCH_SF=0.1 FRESHET_TPCH_ROUNDS=3 cargo test --release -p freshet --test main tpch`.

mod queries;

use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use freshet::{Engine, ManualClock};
use tpchgen::csv::{CustomerCsv, LineItemCsv, NationCsv, OrderCsv, PartCsv, PartSuppCsv, RegionCsv, SupplierCsv};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};

use crate::incremental::check;

/// 2026-11-20 00:00:00 UTC.
const START_MS: i64 = 1_795_132_800_000;

/// Keys of the orders a round inserts start here (every generated key is below it).
const NEW_ORDERS: i64 = 100_000_000;

/// Each table: name, columns, primary key.
const TABLES: [(&str, &str, &str); 8] = [
    ("region", "r_regionkey INT, r_name TEXT, r_comment TEXT", "r_regionkey"),
    (
        "nation",
        "n_nationkey INT, n_name TEXT, n_regionkey INT, n_comment TEXT",
        "n_nationkey",
    ),
    (
        "part",
        "p_partkey BIGINT, p_name TEXT, p_mfgr TEXT, p_brand TEXT, p_type TEXT, p_size INT, p_container TEXT, \
         p_retailprice DECIMAL(15, 2), p_comment TEXT",
        "p_partkey",
    ),
    (
        "supplier",
        "s_suppkey BIGINT, s_name TEXT, s_address TEXT, s_nationkey INT, s_phone TEXT, s_acctbal DECIMAL(15, 2), \
         s_comment TEXT",
        "s_suppkey",
    ),
    (
        "partsupp",
        "ps_partkey BIGINT, ps_suppkey BIGINT, ps_availqty INT, ps_supplycost DECIMAL(15, 2), ps_comment TEXT",
        "ps_partkey, ps_suppkey",
    ),
    (
        "customer",
        "c_custkey BIGINT, c_name TEXT, c_address TEXT, c_nationkey INT, c_phone TEXT, c_acctbal DECIMAL(15, 2), \
         c_mktsegment TEXT, c_comment TEXT",
        "c_custkey",
    ),
    (
        "orders",
        "o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus TEXT, o_totalprice DECIMAL(15, 2), o_orderdate DATE, \
         o_orderpriority TEXT, o_clerk TEXT, o_shippriority INT, o_comment TEXT",
        "o_orderkey",
    ),
    (
        "lineitem",
        "l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT, l_linenumber INT, l_quantity DECIMAL(15, 2), \
         l_extendedprice DECIMAL(15, 2), l_discount DECIMAL(15, 2), l_tax DECIMAL(15, 2), l_returnflag TEXT, \
         l_linestatus TEXT, l_shipdate DATE, l_commitdate DATE, l_receiptdate DATE, l_shipinstruct TEXT, \
         l_shipmode TEXT, l_comment TEXT",
        "l_orderkey, l_linenumber",
    ),
];

fn write_csv<R: Display>(dir: &Path, table: &str, header: &str, rows: impl Iterator<Item = R>) {
    let file = std::fs::File::create(dir.join(format!("{table}.csv"))).unwrap();
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "{header}").unwrap();
    for row in rows {
        writeln!(out, "{row}").unwrap();
    }
    out.flush().unwrap();
}

/// Writes the eight tables at scale factor `sf` as CSV files with headers.
fn generate(dir: &Path, sf: f64) {
    write_csv(
        dir,
        "region",
        RegionCsv::header(),
        RegionGenerator::new(sf, 1, 1).iter().map(RegionCsv::new),
    );
    write_csv(
        dir,
        "nation",
        NationCsv::header(),
        NationGenerator::new(sf, 1, 1).iter().map(NationCsv::new),
    );
    write_csv(
        dir,
        "part",
        PartCsv::header(),
        PartGenerator::new(sf, 1, 1).iter().map(PartCsv::new),
    );
    write_csv(
        dir,
        "supplier",
        SupplierCsv::header(),
        SupplierGenerator::new(sf, 1, 1).iter().map(SupplierCsv::new),
    );
    write_csv(
        dir,
        "partsupp",
        PartSuppCsv::header(),
        PartSuppGenerator::new(sf, 1, 1).iter().map(PartSuppCsv::new),
    );
    write_csv(
        dir,
        "customer",
        CustomerCsv::header(),
        CustomerGenerator::new(sf, 1, 1).iter().map(CustomerCsv::new),
    );
    write_csv(
        dir,
        "orders",
        OrderCsv::header(),
        OrderGenerator::new(sf, 1, 1).iter().map(OrderCsv::new),
    );
    write_csv(
        dir,
        "lineitem",
        LineItemCsv::header(),
        LineItemGenerator::new(sf, 1, 1).iter().map(LineItemCsv::new),
    );
}

/// Creates the tables and loads them from the CSV files in `dir`.
async fn load(engine: &Engine, dir: &Path) {
    for (table, columns, key) in TABLES {
        let path = dir.join(format!("{table}.csv"));
        engine
            .sql(&format!(
                "CREATE TABLE {table} ({columns}, PRIMARY KEY ({key}));
                 CREATE EXTERNAL TABLE {table}_csv ({columns}) STORED AS CSV LOCATION '{}'
                     OPTIONS ('format.has_header' 'true');
                 INSERT INTO {table} SELECT * FROM {table}_csv;",
                path.display()
            ))
            .await
            .unwrap_or_else(|e| panic!("loading {table}: {e}"));
    }
}

/// One round of changes: about 1 % of the orders new and 1 % deleted (with their line items),
/// and updates of customers, parts, suppliers, part suppliers, line items and orders.
fn round(r: i64) -> Vec<String> {
    let offset = NEW_ORDERS * r;
    vec![
        format!(
            "INSERT INTO orders SELECT o_orderkey + {offset}, o_custkey, o_orderstatus, o_totalprice, o_orderdate,
                    o_orderpriority, o_clerk, o_shippriority, o_comment
             FROM orders WHERE o_orderkey % 97 = {r} AND o_orderkey < {NEW_ORDERS}"
        ),
        format!(
            "INSERT INTO lineitem SELECT l_orderkey + {offset}, l_partkey, l_suppkey, l_linenumber, l_quantity,
                    l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus, l_shipdate, l_commitdate,
                    l_receiptdate, l_shipinstruct, l_shipmode, l_comment
             FROM lineitem WHERE l_orderkey % 97 = {r} AND l_orderkey < {NEW_ORDERS}"
        ),
        format!("DELETE FROM lineitem WHERE l_orderkey % 89 = {r}"),
        format!("DELETE FROM orders WHERE o_orderkey % 89 = {r}"),
        format!("UPDATE customer SET c_acctbal = c_acctbal - 1000.00 WHERE c_custkey % 41 = {r}"),
        format!("UPDATE part SET p_size = p_size % 50 + 1 WHERE p_partkey % 43 = {r}"),
        format!("UPDATE supplier SET s_nationkey = (s_nationkey + 3) % 25 WHERE s_suppkey % 7 = {r}"),
        format!(
            "UPDATE partsupp SET ps_supplycost = ps_supplycost + 10.00, ps_availqty = ps_availqty + 100
             WHERE ps_partkey % 47 = {r}"
        ),
        format!("UPDATE lineitem SET l_discount = 0.05, l_quantity = l_quantity + 1 WHERE l_orderkey % 101 = {r}"),
        format!("UPDATE orders SET o_orderstatus = 'F' WHERE o_orderkey % 103 = {r}"),
    ]
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_queries_are_maintained_incrementally_and_equal_batch_evaluation() {
    let sf: f64 = setting("FRESHET_TPCH_SF", 0.01);
    let rounds: i64 = setting("FRESHET_TPCH_ROUNDS", 2);
    let data = tempfile::tempdir().unwrap();
    generate(data.path(), sf);
    let engine = Engine::builder()
        .location("memory://")
        .clock(Arc::new(ManualClock::new(START_MS)))
        .target_partitions(2)
        .open()
        .await
        .unwrap();
    load(&engine, data.path()).await;
    engine.sql(queries::REVENUE_VIEW).await.unwrap();
    let fraction = format!("{}", 0.0001 / sf);
    let corpus: Vec<(String, String)> = queries::QUERIES
        .iter()
        .map(|(name, query)| (name.to_string(), query.replace(":fraction", &fraction)))
        .collect();
    for (name, query) in &corpus {
        engine
            .sql(&format!(
                "CREATE MATERIALIZED TABLE {name} FRESHNESS = INTERVAL '1' HOUR REFRESH_MODE = INCREMENTAL AS {query}"
            ))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    check(&engine, &corpus, 0, "load").await;
    // Not a vacuous check: the queries have rows at this scale.
    let mut empty = Vec::new();
    for (name, _) in &corpus {
        let batches = engine.sql(&format!("SELECT count(*) FROM {name}")).await.unwrap();
        let rows = freshet::datafusion::arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap();
        eprintln!("{name}: {rows} rows");
        if rows == "0" {
            empty.push(name.clone());
        }
    }
    assert!(empty.is_empty(), "empty at scale factor {sf}: {empty:?}");
    for r in 1..=rounds {
        for statement in round(r) {
            engine
                .sql(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        check(&engine, &corpus, r as usize, &format!("round {r}")).await;
    }
    engine.close().await;
}
