//! TPC-H data for the incremental oracle (`tests/tpch.rs`) and the TPC-H benchmark
//! (`benches/tpch.rs`, which includes this file): the tables from the `tpchgen` crate as CSV
//! files, loaded into Freshet tables, and rounds of changes.

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

use freshet::Engine;
use tpchgen::csv::{CustomerCsv, LineItemCsv, NationCsv, OrderCsv, PartCsv, PartSuppCsv, RegionCsv, SupplierCsv};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};

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
pub(crate) fn generate(dir: &Path, sf: f64) {
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
pub(crate) async fn load(engine: &Engine, dir: &Path) {
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

/// Round `r` of changes, each touching one in `every` rows (97: about 1 %): orders new and
/// deleted (with their line items), and updates of customers, parts, suppliers, part
/// suppliers, line items and orders. `r` must be below `every`.
pub(crate) fn round(r: i64, every: i64) -> Vec<String> {
    let offset = NEW_ORDERS * r;
    vec![
        format!(
            "INSERT INTO orders SELECT o_orderkey + {offset}, o_custkey, o_orderstatus, o_totalprice, o_orderdate,
                    o_orderpriority, o_clerk, o_shippriority, o_comment
             FROM orders WHERE o_orderkey % {every} = {r} AND o_orderkey < {NEW_ORDERS}"
        ),
        format!(
            "INSERT INTO lineitem SELECT l_orderkey + {offset}, l_partkey, l_suppkey, l_linenumber, l_quantity,
                    l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus, l_shipdate, l_commitdate,
                    l_receiptdate, l_shipinstruct, l_shipmode, l_comment
             FROM lineitem WHERE l_orderkey % {every} = {r} AND l_orderkey < {NEW_ORDERS}"
        ),
        format!("DELETE FROM lineitem WHERE (l_orderkey / 7) % {every} = {r}"),
        format!("DELETE FROM orders WHERE (o_orderkey / 7) % {every} = {r}"),
        format!("UPDATE customer SET c_acctbal = c_acctbal - 1000.00 WHERE c_custkey % {every} = {r}"),
        format!("UPDATE part SET p_size = p_size % 50 + 1 WHERE p_partkey % {every} = {r}"),
        format!("UPDATE supplier SET s_nationkey = (s_nationkey + 3) % 25 WHERE s_suppkey % {every} = {r}"),
        format!(
            "UPDATE partsupp SET ps_supplycost = ps_supplycost + 10.00, ps_availqty = ps_availqty + 100
             WHERE (ps_partkey / 3) % {every} = {r}"
        ),
        format!(
            "UPDATE lineitem SET l_discount = 0.05, l_quantity = l_quantity + 1 WHERE (l_orderkey / 5) % {every} = {r}"
        ),
        format!("UPDATE orders SET o_orderstatus = 'F' WHERE (o_orderkey / 11) % {every} = {r}"),
    ]
}
