//! Connectors and their `WITH` options, with Apache Flink's names and defaults. An option a
//! connector does not know is an error naming it; an option Flink has that Freshet does not
//! implement yet is an error saying so.

use std::path::PathBuf;
use std::time::Duration;

use freshet_common::{FreshetError, Result};

pub use crate::source::NexmarkOptions;

/// A connector and its options, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Connector {
    /// `'connector' = 'filesystem'`: files of one format, a file or a directory; a source and a
    /// sink.
    Filesystem(FilesystemOptions),
    /// `'connector' = 'blackhole'`: a sink that discards what it receives.
    Blackhole,
    /// `'connector' = 'print'`: a sink that prints each change (`+I[...]`, `-D[...]`).
    Print(PrintOptions),
    /// `'connector' = 'datagen'`: generated rows at a rate.
    Datagen(DatagenOptions),
    /// `'connector' = 'nexmark'`: the Nexmark benchmark's events.
    Nexmark(NexmarkOptions),
}

/// What becomes of a row whose event time is below its source's watermark when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LateData {
    /// `'late-data' = 'drop'` (the default): it is not ingested, and counted.
    #[default]
    Drop,
    /// `'late-data' = 'update'`: it is ingested, and the windows it falls in are corrected, as
    /// long as it is no later than `late-data.max-lateness` (older rows are dropped and
    /// counted).
    Update,
}

/// Event-time options of a source table with a `WATERMARK` (every source connector takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventTimeOptions {
    /// `late-data`.
    pub late_data: LateData,
    /// `late-data.max-lateness`: how far below the watermark a row may be and still be applied
    /// (with `update`; without it, any late row is); windows stay open to corrections that long
    /// after the watermark passes.
    pub max_lateness: Option<Duration>,
    /// `scan.watermark.idle-timeout` (Flink's): a source that has brought no rows for so long
    /// no longer holds back the watermark of what reads it with other inputs.
    pub idle_timeout: Option<Duration>,
}

impl EventTimeOptions {
    /// How far below the watermark (ms) a row is still taken: 0 when late rows are dropped,
    /// `None` when every late row is applied.
    pub fn allowed_lateness_ms(&self) -> Option<i64> {
        match self.late_data {
            LateData::Drop => Some(0),
            LateData::Update => self
                .max_lateness
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

/// The options every source connector takes, beside its own.
const EVENT_TIME_KEYS: &[&str] = &["late-data", "late-data.max-lateness", "scan.watermark.idle-timeout"];
/// Options of a source table as Freshet stores what it ingests.
const STORAGE_KEYS: &[&str] = &["retention"];

/// The options of the `datagen` connector.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagenOptions {
    /// `rows-per-second` (default 10,000).
    pub rows_per_second: u64,
    /// `number-of-rows`: the source ends after so many (unbounded when absent).
    pub number_of_rows: Option<u64>,
    /// `fields.<name>.*`, by column name as written.
    pub fields: Vec<(String, FieldGenerator)>,
}

/// How a datagen column's values are made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldGenerator {
    /// `fields.<f>.kind` = 'sequence': start, start + 1, ... (else random).
    pub sequence: bool,
    /// `fields.<f>.min` / `fields.<f>.max`: the range of random numbers.
    pub min: Option<String>,
    /// See `min`.
    pub max: Option<String>,
    /// `fields.<f>.length`: the length of random strings (default 100).
    pub length: Option<usize>,
    /// `fields.<f>.start` / `fields.<f>.end`: a sequence's first and last values.
    pub start: Option<String>,
    /// See `start`.
    pub end: Option<String>,
    /// `fields.<f>.max-past`: random timestamps this far before now at most.
    pub max_past: Option<Duration>,
    /// `fields.<f>.null-rate`: the share of NULLs (0 to 1).
    pub null_rate: f64,
}

/// The directory name of a NULL partition value (Flink's and Hive's default).
pub const DEFAULT_PARTITION: &str = "__DEFAULT_PARTITION__";

/// The options of the `filesystem` connector.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemOptions {
    /// `path`: a file or a directory (`file://` URLs or plain paths).
    pub path: PathBuf,
    /// `format`.
    pub format: FileFormat,
    /// `source.monitor-interval`: read new files of the directory at this interval (the source
    /// is then unbounded); absent, the source is bounded: the files there when it is read.
    pub monitor_interval: Option<Duration>,
    /// `json.ignore-parse-errors` / `csv.ignore-parse-errors`: skip (and count) lines that do
    /// not parse, rather than fail.
    pub ignore_parse_errors: bool,
    /// `json.fail-on-missing-field`: a JSON line without one of the table's fields is a bad
    /// line (by default the field is NULL).
    pub fail_on_missing_field: bool,
    /// The table's `PARTITIONED BY` columns: the sink writes rows into a directory per
    /// partition (`col=value/`, Hive's layout, as Flink), without those columns in the files;
    /// the source reads every partition directory and takes those columns' values from the
    /// path.
    pub partition_columns: Vec<String>,
    /// `partition.default-name`: the directory name of a NULL or empty partition value.
    pub default_partition: String,
    /// `sink.rolling-policy.file-size`: a file the sink writes is closed at this size (default
    /// 128 MB). Files are also closed at the end of every epoch, which keeps
    /// `sink.rolling-policy.rollover-interval` too.
    pub file_size: u64,
}

/// The formats of the `filesystem` connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    /// `json`: one JSON object per line; keys name the columns.
    Json,
    /// `csv`: one row per line, columns by position, no header (as in Flink).
    Csv(CsvOptions),
    /// `parquet`: columns by name.
    Parquet,
}

/// The options of the `csv` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// `csv.field-delimiter` (default `,`).
    pub delimiter: u8,
    /// `csv.quote-character` (default `"`).
    pub quote: u8,
    /// `csv.allow-comments`: lines starting with `#` are skipped.
    pub allow_comments: bool,
    /// `csv.null-literal`: the text that reads as NULL, and that NULL is written as (by
    /// default an empty field reads as NULL and NULL is written empty).
    pub null_literal: Option<String>,
}

/// The options of the `print` connector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PrintOptions {
    /// `print-identifier`: a prefix for every line.
    pub identifier: Option<String>,
    /// `standard-error`: print to standard error rather than standard output.
    pub standard_error: bool,
}

/// The `WITH` options of a connector table, as written.
#[derive(Debug, Clone)]
pub struct ConnectorOptions<'a> {
    table: &'a str,
    options: &'a [(String, String)],
}

impl<'a> ConnectorOptions<'a> {
    /// The options of the table `table`.
    pub fn new(table: &'a str, options: &'a [(String, String)]) -> Self {
        Self { table, options }
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn error(&self, message: String) -> FreshetError {
        FreshetError::InvalidStatement(format!("table \"{}\": {message}", self.table))
    }

    fn required(&self, key: &str, connector: &str) -> Result<&'a str> {
        self.get(key)
            .ok_or_else(|| self.error(format!("the '{connector}' connector needs the option '{key}'")))
    }

    fn boolean(&self, key: &str) -> Result<bool> {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(self.error(format!("option '{key}' must be 'true' or 'false', not '{other}'"))),
        }
    }

    fn single_byte(&self, key: &str, default: u8) -> Result<u8> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => match text.as_bytes() {
                [b] => Ok(*b),
                b"\\t" => Ok(b'\t'),
                _ => Err(self.error(format!("option '{key}' must be one character, not '{text}'"))),
            },
        }
    }

    /// Every option must be one of `known`; the ones in `later` are Flink's but not Freshet's yet.
    fn check_keys(&self, connector: &str, known: &[&str], later: &[&str]) -> Result<()> {
        let source = matches!(connector, "filesystem" | "datagen" | "nexmark");
        let mut known = known.to_vec();
        if source {
            known.extend_from_slice(EVENT_TIME_KEYS);
            known.extend_from_slice(STORAGE_KEYS);
        }
        for (key, _) in self.options {
            if key == "connector" || known.contains(&key.as_str()) {
                continue;
            }
            if later.contains(&key.as_str()) {
                return Err(FreshetError::Unsupported(format!(
                    "table \"{}\": option '{key}' of the '{connector}' connector",
                    self.table
                )));
            }
            let mut all = known.clone();
            all.insert(0, "connector");
            return Err(self.error(format!(
                "unknown option '{key}' for the '{connector}' connector (it takes {})",
                all.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// The event-time options (of a source table; [`ConnectorOptions::connector`] checks that
    /// only sources have them).
    pub fn event_time(&self) -> Result<EventTimeOptions> {
        let late_data = match self.get("late-data").map(str::to_ascii_lowercase).as_deref() {
            None | Some("drop") => LateData::Drop,
            Some("update") => LateData::Update,
            Some(other) => {
                return Err(self.error(format!("option 'late-data' must be 'drop' or 'update', not '{other}'")));
            }
        };
        let duration = |key: &str| -> Result<Option<Duration>> {
            self.get(key)
                .map(|text| parse_duration(text).map_err(|why| self.error(format!("option '{key}' = '{text}': {why}"))))
                .transpose()
        };
        let max_lateness = duration("late-data.max-lateness")?;
        if max_lateness.is_some() && late_data != LateData::Update {
            return Err(self.error("option 'late-data.max-lateness' applies with 'late-data' = 'update' only".into()));
        }
        Ok(EventTimeOptions {
            late_data,
            max_lateness,
            idle_timeout: duration("scan.watermark.idle-timeout")?,
        })
    }

    /// `'retention'`: how long the ingested rows' versions are kept (a source table's; unset,
    /// the engine's `table.retention`).
    pub fn retention(&self) -> Result<Option<Duration>> {
        self.get("retention")
            .map(|text| parse_duration(text).map_err(|why| self.error(format!("option 'retention' = '{text}': {why}"))))
            .transpose()
    }

    /// The connector the options name, validated.
    pub fn connector(&self) -> Result<Connector> {
        let Some(name) = self.get("connector") else {
            return Err(
                self.error("a table with WITH options needs 'connector' (filesystem, blackhole or print)".into())
            );
        };
        match name {
            "filesystem" => self.filesystem().map(Connector::Filesystem),
            "blackhole" => {
                self.check_keys("blackhole", &[], &[])?;
                Ok(Connector::Blackhole)
            }
            "print" => {
                self.check_keys(
                    "print",
                    &["print-identifier", "standard-error", "sink.parallelism"],
                    &[],
                )?;
                Ok(Connector::Print(PrintOptions {
                    identifier: self.get("print-identifier").map(str::to_string),
                    standard_error: self.boolean("standard-error")?,
                }))
            }
            "datagen" => self.datagen().map(Connector::Datagen),
            "nexmark" => self.nexmark().map(Connector::Nexmark),
            "kafka" | "upsert-kafka" | "jdbc" | "postgres-cdc" | "mysql-cdc" => {
                Err(FreshetError::Unsupported(format!(
                    "table \"{}\": the '{name}' connector (Freshet has filesystem, datagen, nexmark, blackhole and print)",
                    self.table
                )))
            }
            other => Err(self.error(format!(
                "unknown connector '{other}' (Freshet has filesystem, datagen, nexmark, blackhole and print)"
            ))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| self.error(format!("option '{key}' must be a whole number, not '{v}'")))
            })
            .transpose()
    }

    fn nexmark(&self) -> Result<NexmarkOptions> {
        self.check_keys(
            "nexmark",
            &[
                "first-event.rate",
                "next-event.rate",
                "events.num",
                "person.proportion",
                "auction.proportion",
                "bid.proportion",
                "person.avg-size",
                "auction.avg-size",
                "bid.avg-size",
                "bid.hot-ratio.auctions",
                "bid.hot-ratio.bidders",
                "auction.hot-ratio.sellers",
                "rate.limited",
                "max-emit-speed",
                "keep-alive",
                "event.base-time",
                "seed",
                "scan.parallelism",
            ],
            &["rate.shape", "rate.period", "stop-at"],
        )?;
        let defaults = NexmarkOptions::default();
        let positive = |key: &str, default: u64| -> Result<u64> {
            match self.number(key)? {
                Some(0) => Err(self.error(format!("option '{key}' must be more than 0"))),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let size = |key: &str, default: u64| -> Result<u64> {
            match self.get(key) {
                None => Ok(default),
                Some(text) => parse_size(text).map_err(|why| self.error(format!("option '{key}' = '{text}': {why}"))),
            }
        };
        let rate = positive("first-event.rate", defaults.rate)?;
        if self
            .get("next-event.rate")
            .is_some_and(|next| next.trim() != rate.to_string())
        {
            return Err(FreshetError::Unsupported(format!(
                "table \"{}\": a 'next-event.rate' other than 'first-event.rate' (a rate that changes)",
                self.table
            )));
        }
        let base_time_ms = match self.get("event.base-time") {
            None => None,
            Some(text) => Some(
                parse_time_ms(text).map_err(|why| self.error(format!("option 'event.base-time' = '{text}': {why}")))?,
            ),
        };
        Ok(NexmarkOptions {
            rate,
            events: self.number("events.num")?.unwrap_or(0),
            proportions: [
                self.number("person.proportion")?.unwrap_or(defaults.proportions[0]),
                self.number("auction.proportion")?.unwrap_or(defaults.proportions[1]),
                positive("bid.proportion", defaults.proportions[2])?,
            ],
            avg_sizes: [
                size("person.avg-size", defaults.avg_sizes[0])?,
                size("auction.avg-size", defaults.avg_sizes[1])?,
                size("bid.avg-size", defaults.avg_sizes[2])?,
            ],
            hot_auctions: positive("bid.hot-ratio.auctions", defaults.hot_auctions)?,
            hot_bidders: positive("bid.hot-ratio.bidders", defaults.hot_bidders)?,
            hot_sellers: positive("auction.hot-ratio.sellers", defaults.hot_sellers)?,
            rate_limited: self.boolean("rate.limited")?,
            base_time_ms,
            seed: self.number("seed")?.unwrap_or(0),
        })
    }

    fn datagen(&self) -> Result<DatagenOptions> {
        let mut fields: Vec<(String, FieldGenerator)> = Vec::new();
        for (key, value) in self.options {
            match key.as_str() {
                "connector" | "rows-per-second" | "number-of-rows" | "scan.parallelism" => continue,
                key if EVENT_TIME_KEYS.contains(&key) || STORAGE_KEYS.contains(&key) => continue,
                _ => {}
            }
            let Some((field, setting)) = key.strip_prefix("fields.").and_then(|rest| rest.rsplit_once('.')) else {
                return Err(self.error(format!(
                    "unknown option '{key}' for the 'datagen' connector (it takes 'rows-per-second', \
                     'number-of-rows' and 'fields.<column>.kind|min|max|length|start|end|max-past|null-rate')"
                )));
            };
            let index = match fields.iter().position(|(f, _)| f == field) {
                Some(i) => i,
                None => {
                    fields.push((field.to_string(), FieldGenerator::default()));
                    fields.len() - 1
                }
            };
            let generator = &mut fields[index].1;
            match setting {
                "kind" => {
                    generator.sequence = match value.as_str() {
                        "sequence" => true,
                        "random" => false,
                        other => {
                            return Err(self.error(format!("option '{key}' is 'random' or 'sequence', not '{other}'")));
                        }
                    }
                }
                "min" => generator.min = Some(value.clone()),
                "max" => generator.max = Some(value.clone()),
                "start" => generator.start = Some(value.clone()),
                "end" => generator.end = Some(value.clone()),
                "length" => generator.length = self.number(key)?.map(|n| n as usize),
                "max-past" => {
                    generator.max_past = Some(
                        parse_duration(value)
                            .map_err(|why| self.error(format!("option '{key}' = '{value}': {why}")))?,
                    )
                }
                "null-rate" => {
                    generator.null_rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| {
                            self.error(format!("option '{key}' must be a number from 0 to 1, not '{value}'"))
                        })?
                }
                "var-len" => {}
                other => {
                    return Err(self.error(format!(
                        "unknown option '{key}' for the 'datagen' connector ('{other}' is not one of kind, min, max, \
                         length, start, end, max-past, null-rate)"
                    )));
                }
            }
        }
        for (field, generator) in &fields {
            if generator.sequence && (generator.start.is_none() || generator.end.is_none()) {
                return Err(self.error(format!(
                    "a sequence field needs 'fields.{field}.start' and 'fields.{field}.end'"
                )));
            }
        }
        let rows_per_second = self.number("rows-per-second")?.unwrap_or(10_000);
        if rows_per_second == 0 {
            return Err(self.error("option 'rows-per-second' must be more than 0".into()));
        }
        Ok(DatagenOptions {
            rows_per_second,
            number_of_rows: self.number("number-of-rows")?,
            fields,
        })
    }

    fn filesystem(&self) -> Result<FilesystemOptions> {
        self.check_keys(
            "filesystem",
            &[
                "path",
                "format",
                "source.monitor-interval",
                "json.ignore-parse-errors",
                "json.fail-on-missing-field",
                "partition.default-name",
                "json.timestamp-format.standard",
                "csv.field-delimiter",
                "csv.quote-character",
                "csv.allow-comments",
                "csv.ignore-parse-errors",
                "csv.null-literal",
                "sink.rolling-policy.file-size",
                "sink.rolling-policy.rollover-interval",
                "sink.rolling-policy.check-interval",
                "sink.rolling-policy.inactivity-interval",
            ],
            &[
                "source.path.regex-pattern",
                "auto-compaction",
                "compaction.file-size",
                "sink.partition-commit.trigger",
                "sink.partition-commit.delay",
                "sink.partition-commit.policy.kind",
                "json.map-null-key.mode",
                "csv.escape-character",
                "csv.array-element-delimiter",
                "csv.disable-quote-character",
                "json.encode.decimal-as-plain-number",
            ],
        )?;
        let path = self.required("path", "filesystem")?;
        let path = PathBuf::from(path.strip_prefix("file://").unwrap_or(path));
        if path.as_os_str().is_empty() {
            return Err(self.error("option 'path' is empty".into()));
        }
        let format = match self.required("format", "filesystem")? {
            "json" => FileFormat::Json,
            "csv" => FileFormat::Csv(CsvOptions {
                delimiter: self.single_byte("csv.field-delimiter", b',')?,
                quote: self.single_byte("csv.quote-character", b'"')?,
                allow_comments: self.boolean("csv.allow-comments")?,
                null_literal: self.get("csv.null-literal").map(str::to_string),
            }),
            "parquet" => FileFormat::Parquet,
            "avro" | "orc" | "raw" | "debezium-json" | "canal-json" | "maxwell-json" | "ogg-json" => {
                return Err(FreshetError::Unsupported(format!(
                    "table \"{}\": format '{}' of the filesystem connector (Freshet reads json, csv and parquet)",
                    self.table,
                    self.get("format").unwrap_or_default()
                )));
            }
            other => return Err(self.error(format!("unknown format '{other}' (expected json, csv or parquet)"))),
        };
        let format_prefix = match format {
            FileFormat::Json => Some("json."),
            FileFormat::Csv(_) => Some("csv."),
            FileFormat::Parquet => None,
        };
        if let Some((key, _)) = self.options.iter().find(|(k, _)| {
            (k.starts_with("json.") || k.starts_with("csv.")) && !format_prefix.is_some_and(|p| k.starts_with(p))
        }) {
            return Err(self.error(format!(
                "option '{key}' does not apply to format '{}'",
                self.get("format").unwrap_or_default()
            )));
        }
        match self.get("json.timestamp-format.standard") {
            None | Some("SQL" | "ISO-8601") => {}
            Some(other) => {
                return Err(self.error(format!(
                    "option 'json.timestamp-format.standard' must be 'SQL' or 'ISO-8601', not '{other}'"
                )));
            }
        }
        let monitor_interval = match self.get("source.monitor-interval") {
            None => None,
            Some(text) => Some(
                parse_duration(text)
                    .map_err(|why| self.error(format!("option 'source.monitor-interval' = '{text}': {why}")))?,
            ),
        };
        for key in [
            "sink.rolling-policy.rollover-interval",
            "sink.rolling-policy.check-interval",
            "sink.rolling-policy.inactivity-interval",
        ] {
            if let Some(text) = self.get(key) {
                parse_duration(text).map_err(|why| self.error(format!("option '{key}' = '{text}': {why}")))?;
            }
        }
        let fail_on_missing_field = self.boolean("json.fail-on-missing-field")?;
        if fail_on_missing_field && self.boolean("json.ignore-parse-errors")? {
            return Err(self.error(
                "options 'json.fail-on-missing-field' and 'json.ignore-parse-errors' cannot both be 'true'".into(),
            ));
        }
        if monitor_interval.is_some_and(|d| d.is_zero()) {
            return Err(self.error("option 'source.monitor-interval' must be more than 0".into()));
        }
        Ok(FilesystemOptions {
            path,
            format,
            monitor_interval,
            ignore_parse_errors: self.boolean("json.ignore-parse-errors")?
                || self.boolean("csv.ignore-parse-errors")?,
            fail_on_missing_field,
            partition_columns: Vec::new(),
            default_partition: self
                .get("partition.default-name")
                .unwrap_or(DEFAULT_PARTITION)
                .to_string(),
            file_size: match self.get("sink.rolling-policy.file-size") {
                None => 128 << 20,
                Some(text) => parse_size(text)
                    .map_err(|why| self.error(format!("option 'sink.rolling-policy.file-size' = '{text}': {why}")))?,
            },
        })
    }
}

impl Connector {
    /// Whether rows can be read from it.
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Connector::Filesystem(_) | Connector::Datagen(_) | Connector::Nexmark(_)
        )
    }

    /// The connector's name, as written in `'connector' = ...`.
    pub fn name(&self) -> &'static str {
        match self {
            Connector::Filesystem(_) => "filesystem",
            Connector::Blackhole => "blackhole",
            Connector::Print(_) => "print",
            Connector::Datagen(_) => "datagen",
            Connector::Nexmark(_) => "nexmark",
        }
    }
}

/// A point in time: milliseconds since the Unix epoch, or a timestamp such as
/// `2015-07-15 00:00:00` (UTC).
pub fn parse_time_ms(text: &str) -> std::result::Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
    ] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(time.and_utc().timestamp_millis());
        }
    }
    Err("expected milliseconds since 1970 or a timestamp such as '2015-07-15 00:00:00'".into())
}

/// A memory size as Flink writes them: a number and a unit (`128MB`, `1 kb`, `10 bytes`);
/// without a unit, bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let amount: u64 = number
        .parse()
        .map_err(|_| "expected a number and a unit, such as '128 mb'".to_string())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kibibytes" => 1 << 10,
        "m" | "mb" | "mebibytes" => 1 << 20,
        "g" | "gb" | "gibibytes" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' (bytes, kb, mb or gb)")),
    };
    if amount == 0 {
        return Err("must be more than 0".into());
    }
    Ok(amount.saturating_mul(scale))
}

/// A duration as Flink writes them: a number and a unit (`100 ms`, `1s`, `5 min`, `1 h`, `2 d`);
/// without a unit, milliseconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let amount: u64 = number
        .parse()
        .map_err(|_| "expected a number and a unit, such as '10 s' or '1 min'".to_string())?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        other => return Err(format!("unknown unit '{other}' (ms, s, min, h or d)")),
    };
    Ok(Duration::from_millis(amount.saturating_mul(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn validates_filesystem_options() {
        let o = options(&[
            ("connector", "filesystem"),
            ("path", "file:///data/bid"),
            ("format", "json"),
            ("source.monitor-interval", "2 s"),
            ("json.ignore-parse-errors", "true"),
        ]);
        let Connector::Filesystem(fs) = ConnectorOptions::new("bid", &o).connector().unwrap() else {
            panic!()
        };
        assert_eq!(fs.path, PathBuf::from("/data/bid"));
        assert_eq!(fs.monitor_interval, Some(Duration::from_secs(2)));
        assert!(fs.ignore_parse_errors);
    }

    #[test]
    fn names_unknown_and_missing_options() {
        for (pairs, expected) in [
            (
                vec![("connector", "filesystem"), ("format", "json")],
                "needs the option 'path'",
            ),
            (
                vec![
                    ("connector", "filesystem"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("pth", "/y"),
                ],
                "unknown option 'pth'",
            ),
            (
                vec![("connector", "blackhole"), ("path", "/x")],
                "unknown option 'path'",
            ),
            (vec![("connector", "kinesis2")], "unknown connector 'kinesis2'"),
            (vec![("format", "json")], "needs 'connector'"),
            (
                vec![
                    ("connector", "filesystem"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("source.monitor-interval", "soon"),
                ],
                "source.monitor-interval",
            ),
        ] {
            let o = options(&pairs);
            let err = ConnectorOptions::new("t", &o).connector().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn parses_flink_durations() {
        assert_eq!(parse_duration("100").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5 min").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1 h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1 fortnight").is_err());
    }
}
