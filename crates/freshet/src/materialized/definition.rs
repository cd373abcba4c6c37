//! What the catalog stores for a materialized table, the settings that shape it, and the choice
//! of its refresh mode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use freshet_common::{FreshetError, Result};
use freshet_sql::{Freshness, FreshnessUnit, RefreshMode};

/// Setting: freshness below which a table without an explicit mode is maintained continuously
/// (Apache Flink's name and default, 30 minutes).
pub const FRESHNESS_THRESHOLD: &str = "materialized-table.refresh-mode.freshness-threshold";
/// Setting: the freshness of a continuous table that declares none (Flink: 3 minutes).
pub const DEFAULT_FRESHNESS_CONTINUOUS: &str = "materialized-table.default-freshness.continuous";
/// Setting: the freshness of a scheduled table that declares none (Flink: 1 hour).
pub const DEFAULT_FRESHNESS_FULL: &str = "materialized-table.default-freshness.full";

/// Setting: materialized tables with more rows than this are not indexed by row for incremental
/// refreshes, whose retractions then find their rows by a scan (Freshet's own; 0 disables the
/// index).
pub const ROW_INDEX_MAX_ROWS: &str = "materialized-table.row-index.max-rows";

/// Setting: the most input rows one epoch of a state build takes (Freshet's own). A larger
/// input is fed in several epochs, its aggregates giving their rows once after the last, so
/// that no buffer the size of the inputs is ever allocated.
pub const STATE_BUILD_EPOCH_ROWS: &str = "materialized-table.state-build.epoch-rows";

/// Setting: an operator state of at least this many rows writes its checkpoints after their
/// refresh returned, as versions of their own, instead of within the refresh (Freshet's own; 0:
/// every state). Until one lands, a restart restores the checkpoint before it (or rebuilds the
/// state from the inputs) and processes the changes since.
pub const CHECKPOINT_BACKGROUND_ROWS: &str = "materialized-table.checkpoint.background-rows";

/// Setting: how long VACUUM keeps a file that no manifest names (a failed write's, or one of a
/// transaction still under way, of this engine or of another sharing the store); `0 s` removes
/// them at once.
pub const VACUUM_ORPHAN_GRACE: &str = "table.vacuum.orphan-grace-period";

/// Setting: how long a table keeps the versions it had: reading it as of any time within this
/// period (time travel, change reads, an incremental refresh resumed) still works, and VACUUM —
/// asked for without a RETAIN clause, or run in the background — removes only what is older.
/// A table's own `'retention'` option overrides it. Delta Lake's default, 7 days.
pub const RETENTION: &str = "table.retention";

/// Table option: how long this table keeps its versions (overrides [`RETENTION`]).
pub const RETENTION_OPTION: &str = "retention";

/// Setting: how often the engine vacuums every table by its retention in the background;
/// `0 s` turns the background vacuum off.
pub const VACUUM_INTERVAL: &str = "table.vacuum.interval";

/// Setting (Flink's key): the longest time between checkpoints of a materialized table's
/// operator state while its inputs change. A checkpoint is also written when the state has none,
/// and when the changes since the last reach eight times the state's rows (which bounds what a
/// restart replays).
pub const CHECKPOINT_INTERVAL: &str = "execution.checkpointing.interval";

/// Engine-wide settings of materialized tables; set with the engine's builder or with
/// `SET 'materialized-table....' = '...'`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterializedSettings {
    /// Freshness below which AUTO (or no mode) means continuous maintenance.
    pub freshness_threshold: Freshness,
    /// Freshness of continuous tables that declare none.
    pub default_freshness_continuous: Freshness,
    /// Freshness of scheduled tables that declare none.
    pub default_freshness_full: Freshness,
    /// Largest materialized table kept indexed by row for incremental refreshes.
    pub row_index_max_rows: u64,
    /// [`STATE_BUILD_EPOCH_ROWS`].
    pub state_build_epoch_rows: usize,
    /// Longest time between checkpoints of operator state while inputs change.
    pub checkpoint_interval: Freshness,
    /// [`CHECKPOINT_BACKGROUND_ROWS`].
    pub checkpoint_background_rows: u64,
    /// How long VACUUM keeps files no manifest names.
    pub vacuum_orphan_grace: std::time::Duration,
    /// How long tables keep their versions unless they say otherwise.
    pub retention: std::time::Duration,
    /// How often the background vacuum runs; `None` when it does not.
    pub vacuum_interval: Option<std::time::Duration>,
}

impl Default for MaterializedSettings {
    fn default() -> Self {
        Self {
            freshness_threshold: Freshness::new(30, FreshnessUnit::Minute),
            default_freshness_continuous: Freshness::new(3, FreshnessUnit::Minute),
            default_freshness_full: Freshness::new(1, FreshnessUnit::Hour),
            row_index_max_rows: 4_000_000,
            state_build_epoch_rows: 1 << 20,
            checkpoint_interval: Freshness::new(1, FreshnessUnit::Minute),
            checkpoint_background_rows: 1_000_000,
            vacuum_orphan_grace: freshet_storage::DEFAULT_ORPHAN_GRACE,
            retention: DEFAULT_RETENTION,
            vacuum_interval: Some(std::time::Duration::from_secs(3_600)),
        }
    }
}

impl MaterializedSettings {
    /// Sets one setting by its key; `false` when the key is not a materialized-table setting.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        let duration = || {
            parse_duration_or_zero(value).map_err(|e| FreshetError::InvalidStatement(format!("setting '{key}': {e}")))
        };
        match key {
            VACUUM_ORPHAN_GRACE => {
                self.vacuum_orphan_grace = duration()?;
                return Ok(true);
            }
            RETENTION => {
                self.retention = duration()?;
                return Ok(true);
            }
            VACUUM_INTERVAL => {
                self.vacuum_interval = Some(duration()?).filter(|d| !d.is_zero());
                return Ok(true);
            }
            _ => {}
        }
        let rows = || {
            value.trim().parse::<u64>().map_err(|_| {
                FreshetError::InvalidStatement(format!("setting '{key}': {value:?} is not a number of rows"))
            })
        };
        if key == ROW_INDEX_MAX_ROWS {
            self.row_index_max_rows = rows()?;
            return Ok(true);
        }
        if key == CHECKPOINT_BACKGROUND_ROWS {
            self.checkpoint_background_rows = rows()?;
            return Ok(true);
        }
        if key == STATE_BUILD_EPOCH_ROWS {
            self.state_build_epoch_rows = usize::try_from(rows()?).unwrap_or(usize::MAX).max(1);
            return Ok(true);
        }
        let slot = match key {
            FRESHNESS_THRESHOLD => &mut self.freshness_threshold,
            DEFAULT_FRESHNESS_CONTINUOUS => &mut self.default_freshness_continuous,
            DEFAULT_FRESHNESS_FULL => &mut self.default_freshness_full,
            CHECKPOINT_INTERVAL => &mut self.checkpoint_interval,
            _ => return Ok(false),
        };
        *slot = parse_duration(value).map_err(|e| FreshetError::InvalidStatement(format!("setting '{key}': {e}")))?;
        Ok(true)
    }

    /// Every setting with its value, for `SHOW`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            (FRESHNESS_THRESHOLD, self.freshness_threshold.to_string()),
            (
                DEFAULT_FRESHNESS_CONTINUOUS,
                self.default_freshness_continuous.to_string(),
            ),
            (DEFAULT_FRESHNESS_FULL, self.default_freshness_full.to_string()),
            (ROW_INDEX_MAX_ROWS, self.row_index_max_rows.to_string()),
            (STATE_BUILD_EPOCH_ROWS, self.state_build_epoch_rows.to_string()),
            (CHECKPOINT_INTERVAL, self.checkpoint_interval.to_string()),
            (CHECKPOINT_BACKGROUND_ROWS, self.checkpoint_background_rows.to_string()),
            (VACUUM_ORPHAN_GRACE, format!("{} s", self.vacuum_orphan_grace.as_secs())),
            (RETENTION, format_duration(self.retention)),
            (
                VACUUM_INTERVAL,
                format_duration(self.vacuum_interval.unwrap_or_default()),
            ),
        ]
    }
}

/// How long tables keep their versions by default (Delta Lake's 7 days).
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3_600);

/// [`parse_duration`], also accepting zero (`0`, `0 s`).
pub fn parse_duration_or_zero(text: &str) -> std::result::Result<std::time::Duration, String> {
    let zero = matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "0" | "0 s" | "0s" | "0 ms" | "0ms"
    );
    match zero {
        true => Ok(std::time::Duration::ZERO),
        false => parse_duration(text).map(|f| f.duration()),
    }
}

/// A whole number of days, hours, minutes or seconds, as [`parse_duration`] reads it.
pub fn format_duration(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s > 0 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s > 0 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s > 0 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A duration as Flink writes them (`30 min`, `1 h`, `90 s`, `2 days`, `45s`) or as an
/// interval (`INTERVAL '5' MINUTE`, `5 MINUTES`); whole seconds, at least one.
pub fn parse_duration(text: &str) -> std::result::Result<Freshness, String> {
    let cleaned = text.trim();
    let upper = cleaned.to_ascii_uppercase();
    let body = upper.strip_prefix("INTERVAL").map_or(upper.as_str(), str::trim);
    let body = body.replace('\'', " ");
    let digits: String = body.trim().chars().take_while(char::is_ascii_digit).collect();
    let unit = body.trim()[digits.len()..].trim().to_string();
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("'{cleaned}' is not a duration such as '30 min', '1 h' or '45 s'"))?;
    if amount == 0 {
        return Err(format!("'{cleaned}' must be positive"));
    }
    let (amount, unit) = match unit.as_str() {
        "" | "S" | "SEC" | "SECS" | "SECOND" | "SECONDS" => (amount, FreshnessUnit::Second),
        "MIN" | "MINS" | "MINUTE" | "MINUTES" | "M" => (amount, FreshnessUnit::Minute),
        "H" | "HOUR" | "HOURS" => (amount, FreshnessUnit::Hour),
        "D" | "DAY" | "DAYS" => (amount, FreshnessUnit::Day),
        other => return Err(format!("unknown unit {other} in '{cleaned}': use s, min, h or d")),
    };
    Ok(Freshness::new(amount, unit))
}

/// Whether a materialized table is being refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Refreshed on its schedule.
    Active,
    /// Stopped by `ALTER MATERIALIZED TABLE ... SUSPEND`.
    Suspended,
    /// Stopped after too many consecutive failed refreshes, until `RESUME`.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Active => "ACTIVE",
            Status::Suspended => "SUSPENDED",
            Status::Failed => "FAILED",
        })
    }
}

/// The refresh mode and freshness a table actually runs with, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffectiveMode {
    /// CONTINUOUS, INCREMENTAL or FULL; AUTO for a scheduled table whose every refresh chooses
    /// between incremental and full.
    pub mode: RefreshMode,
    /// The freshness in force.
    pub freshness: Freshness,
    /// Why this mode, in words.
    pub reason: String,
}

/// A materialized table as the catalog stores it (the `definition` of its catalog entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaterializedDefinition {
    /// The defining query, as written.
    pub query: String,
    /// The tables and materialized tables the query reads.
    pub inputs: Vec<String>,
    /// `FRESHNESS` as declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Freshness>,
    /// `REFRESH_MODE` as declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_mode: Option<RefreshMode>,
    /// The mode chosen, recorded when the table was created or its freshness or mode altered.
    pub effective: EffectiveMode,
    /// `PRIMARY KEY` columns.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// `PARTITIONED BY` columns.
    #[serde(default)]
    pub partitioned_by: Vec<String>,
    /// `WITH` options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `COMMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Lifecycle.
    pub status: Status,
    /// Consecutive failed refreshes.
    #[serde(default)]
    pub failures: u32,
    /// The last refresh error, until a refresh succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl MaterializedDefinition {
    /// Its `'retention'` option.
    pub fn retention(&self) -> Option<std::time::Duration> {
        parse_duration_or_zero(self.options.get(RETENTION_OPTION)?).ok()
    }

    /// The date formatter of a partition column (`partition.fields.<col>.date-formatter`).
    pub fn date_formatter(&self, column: &str) -> Option<&str> {
        self.options
            .get(&format!("partition.fields.{column}.date-formatter"))
            .map(String::as_str)
    }

    /// Partitions per refresh: a partition column with a date formatter makes scheduled
    /// refreshes recompute only the partition of the schedule time.
    pub fn scheduled_partition_column(&self) -> Option<(&str, &str)> {
        self.partitioned_by
            .iter()
            .find_map(|c| self.date_formatter(c).map(|f| (c.as_str(), f)))
    }

    /// Decodes a catalog entry's definition.
    pub fn from_json(name: &str, value: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(value.clone()).map_err(|e| {
            FreshetError::corrupt(
                format!("the catalog entry of materialized table \"{name}\""),
                e.to_string(),
            )
        })
    }

    /// Encodes it for the catalog.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| FreshetError::Internal(e.to_string()))
    }
}

/// Chooses the refresh mode: an explicit mode wins; otherwise a freshness below the threshold
/// means continuous, otherwise scheduled with AUTO's choice per refresh between incremental
/// and full. `blocker` says why the query cannot be maintained incrementally (an operator or
/// a non-deterministic function), if it cannot: then only FULL is possible.
pub fn choose_mode(
    name: &str,
    freshness: Option<Freshness>,
    declared: Option<RefreshMode>,
    settings: &MaterializedSettings,
    blocker: Option<&str>,
) -> Result<EffectiveMode> {
    let scheduled_by_declaration = matches!(declared, Some(RefreshMode::Full | RefreshMode::Incremental));
    let freshness = freshness.unwrap_or(if scheduled_by_declaration {
        settings.default_freshness_full
    } else {
        settings.default_freshness_continuous
    });
    let threshold = settings.freshness_threshold;
    let (mode, reason) = match declared {
        Some(mode @ (RefreshMode::Continuous | RefreshMode::Incremental)) => {
            if let Some(blocker) = blocker {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": REFRESH_MODE = {mode} needs incremental maintenance, but the \
                     {blocker}; use REFRESH_MODE = FULL"
                )));
            }
            (mode, format!("REFRESH_MODE = {mode} was declared"))
        }
        Some(RefreshMode::Full) => (RefreshMode::Full, "REFRESH_MODE = FULL was declared".to_string()),
        None | Some(RefreshMode::Auto) => {
            let below = freshness.duration() < threshold.duration();
            let comparison = if below {
                format!("freshness {freshness} is below the threshold {threshold} ({FRESHNESS_THRESHOLD})")
            } else {
                format!("freshness {freshness} is at or above the threshold {threshold} ({FRESHNESS_THRESHOLD})")
            };
            match (below, blocker) {
                (_, Some(blocker)) => (
                    RefreshMode::Full,
                    format!("{comparison}, but the {blocker}, so it is recomputed in full every {freshness}"),
                ),
                (true, None) => (
                    RefreshMode::Continuous,
                    format!("{comparison}: maintained incrementally at every input commit"),
                ),
                (false, None) => (
                    RefreshMode::Auto,
                    format!(
                        "{comparison}: refreshed every {freshness}, each time incrementally or in full, whichever \
                         the size of the changes makes cheaper"
                    ),
                ),
            }
        }
    };
    Ok(EffectiveMode {
        mode,
        freshness,
        reason,
    })
}

/// Options a materialized table accepts in `WITH`. Flink's storage options `connector` and
/// `format` are accepted so that Flink statements run unchanged, and recorded; Freshet stores
/// every table in its own format.
pub fn check_options(name: &str, options: &[(String, String)], partitioned_by: &[String]) -> Result<()> {
    for (key, value) in options {
        if let Some(column) = key
            .strip_prefix("partition.fields.")
            .and_then(|rest| rest.strip_suffix(".date-formatter"))
        {
            if !partitioned_by.iter().any(|c| c == column) {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": option '{key}' names column \"{column}\", which is not a \
                     partition column (PARTITIONED BY ({}))",
                    partitioned_by.join(", ")
                )));
            }
            java_date_format(value).map_err(|e| {
                FreshetError::InvalidStatement(format!("materialized table \"{name}\": option '{key}': {e}"))
            })?;
            continue;
        }
        match key.as_str() {
            "connector" | "format" => {}
            RETENTION_OPTION => {
                parse_duration_or_zero(value).map_err(|e| {
                    FreshetError::InvalidStatement(format!("materialized table \"{name}\": option '{key}': {e}"))
                })?;
            }
            "sink.parallelism" => {
                if !value.parse::<usize>().is_ok_and(|n| n > 0) {
                    return Err(FreshetError::InvalidStatement(format!(
                        "materialized table \"{name}\": option 'sink.parallelism' must be a positive integer, \
                         found '{value}'"
                    )));
                }
            }
            _ => {
                return Err(FreshetError::InvalidStatement(format!(
                    "materialized table \"{name}\": unknown option '{key}' (known: \
                     'partition.fields.<column>.date-formatter', 'retention', 'sink.parallelism', 'connector', 'format')"
                )));
            }
        }
    }
    Ok(())
}

/// Translates a Java date pattern (`yyyy-MM-dd`, `yyyyMMdd HH:mm`) into a chrono format.
pub fn java_date_format(pattern: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .ok_or_else(|| format!("unterminated quote in date pattern '{pattern}'"))?;
            out.extend(chars[i + 1..i + 1 + end].iter());
            i += end + 2;
            continue;
        }
        let piece = match (c, run) {
            ('y', 4) => "%Y",
            ('y', 2) => "%y",
            ('M', 2) => "%m",
            ('d', 2) => "%d",
            ('H', 2) => "%H",
            ('m', 2) => "%M",
            ('s', 2) => "%S",
            (c, _) if c.is_ascii_alphabetic() => {
                return Err(format!(
                    "unsupported date pattern '{pattern}': use yyyy, yy, MM, dd, HH, mm and ss"
                ));
            }
            ('%', _) => "%%",
            _ => {
                out.extend(std::iter::repeat_n(c, run));
                i += run;
                continue;
            }
        };
        out.push_str(piece);
        i += run;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flink_durations() {
        assert_eq!(
            parse_duration("30 min").unwrap(),
            Freshness::new(30, FreshnessUnit::Minute)
        );
        assert_eq!(parse_duration("1 h").unwrap(), Freshness::new(1, FreshnessUnit::Hour));
        assert_eq!(
            parse_duration("45s").unwrap(),
            Freshness::new(45, FreshnessUnit::Second)
        );
        assert_eq!(
            parse_duration("INTERVAL '2' DAY").unwrap(),
            Freshness::new(2, FreshnessUnit::Day)
        );
        assert!(parse_duration("0 min").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn chooses_modes_like_flink() {
        let settings = MaterializedSettings::default();
        let minute = Some(Freshness::new(1, FreshnessUnit::Minute));
        let hour = Some(Freshness::new(1, FreshnessUnit::Hour));
        assert_eq!(
            choose_mode("m", minute, None, &settings, None).unwrap().mode,
            RefreshMode::Continuous
        );
        assert_eq!(
            choose_mode("m", hour, Some(RefreshMode::Full), &settings, None)
                .unwrap()
                .mode,
            RefreshMode::Full
        );
        let defaulted = choose_mode("m", None, None, &settings, None).unwrap();
        assert_eq!(defaulted.mode, RefreshMode::Continuous);
        assert_eq!(defaulted.freshness, Freshness::new(3, FreshnessUnit::Minute));
        let full = choose_mode("m", None, Some(RefreshMode::Full), &settings, None).unwrap();
        assert_eq!(full.freshness, Freshness::new(1, FreshnessUnit::Hour));
        assert!(choose_mode("m", minute, Some(RefreshMode::Continuous), &settings, Some("random()")).is_err());
        assert_eq!(
            choose_mode("m", hour, None, &settings, None).unwrap().mode,
            RefreshMode::Auto
        );
        let volatile = choose_mode("m", minute, None, &settings, Some("now()")).unwrap();
        assert_eq!(volatile.mode, RefreshMode::Full);
        assert!(volatile.reason.contains("now()"), "{}", volatile.reason);
    }

    #[test]
    fn translates_java_date_patterns() {
        assert_eq!(java_date_format("yyyy-MM-dd").unwrap(), "%Y-%m-%d");
        assert_eq!(java_date_format("yyyyMMdd'T'HH").unwrap(), "%Y%m%dT%H");
        assert!(java_date_format("yyyy-MM-dd EEE").is_err());
    }
}
