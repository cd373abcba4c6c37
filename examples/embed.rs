//! Embedding Freshet in a program: open an engine on a local directory, write a table, read
//! it back, look at an older version and at the changes between versions.
//!
//! Run: `cargo run --release --example embed [DATA_DIR]` (default `./freshet-data`). Run it
//! again: the table is still there, with one more version.

use freshet::datafusion::arrow::util::pretty::pretty_format_batches;
use freshet::{DEFAULT_LOCATION, Engine};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let location = std::env::args().nth(1).unwrap_or_else(|| DEFAULT_LOCATION.to_string());
    let engine = Engine::builder().location(&location).open().await?;
    println!("Freshet engine on {}", engine.location());

    engine
        .sql("CREATE TABLE IF NOT EXISTS visits (page TEXT PRIMARY KEY, hits BIGINT NOT NULL)")
        .await?;
    engine
        .sql("INSERT OR REPLACE INTO visits VALUES ('/', 0), ('/docs', 0)")
        .await?;
    let before = engine.table("visits")?.snapshot().version();
    engine
        .sql("UPDATE visits SET hits = hits + 1 WHERE page = '/docs'")
        .await?;
    let after = engine.table("visits")?.snapshot().version();

    let now = engine.sql("SELECT * FROM visits ORDER BY page").await?;
    println!("visits now (version {after}):\n{}", pretty_format_batches(&now)?);

    let changes = engine
        .sql(&format!(
            "SELECT * FROM table_changes('visits', {before}, {after}) ORDER BY _weight"
        ))
        .await?;
    println!("changes of version {after}:\n{}", pretty_format_batches(&changes)?);

    let history = engine
        .sql("SELECT version, committed_at, operation, rows FROM table_history('visits') ORDER BY version DESC LIMIT 5")
        .await?;
    println!("latest versions:\n{}", pretty_format_batches(&history)?);
    Ok(())
}
