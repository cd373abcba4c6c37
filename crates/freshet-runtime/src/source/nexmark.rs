//! The `nexmark` source: the Nexmark benchmark's events (persons, auctions, bids) with the
//! model of nexmark-flink's generator — the 1:3:46 mix, ids that follow the event number, hot
//! auctions, sellers and bidders, prices spread over six decades, event time advancing by the
//! configured rate from a base time.
//!
//! Unlike nexmark-flink (whose random numbers are unseeded), every event is a function of its
//! number and the seed: a run is repeatable, and a source resumed at a position generates what
//! an uninterrupted run would have.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Builder, StringViewBuilder, StructArray, TimestampMillisecondBuilder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Fields, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use freshet_common::{FreshetError, Result};

/// Events per generated batch.
const BATCH_EVENTS: u64 = 8_192;
const FIRST_PERSON_ID: i64 = 1_000;
const FIRST_AUCTION_ID: i64 = 1_000;
const FIRST_CATEGORY_ID: i64 = 10;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_RATIO_STEP: i64 = 100;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1_000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const CHANNELS: usize = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// The generator's settings, with nexmark-flink's option names.
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkOptions {
    /// `first-event.rate`: events per second of event time (default 10,000).
    pub rate: u64,
    /// `events.num`: the source ends after so many events (0: unbounded).
    pub events: u64,
    /// `person.proportion`, `auction.proportion`, `bid.proportion` (1, 3, 46).
    pub proportions: [u64; 3],
    /// `person.avg-size`, `auction.avg-size`, `bid.avg-size` in bytes (200, 500, 100).
    pub avg_sizes: [u64; 3],
    /// `bid.hot-ratio.auctions` (2), `bid.hot-ratio.bidders` (4), `auction.hot-ratio.sellers` (4).
    pub hot_auctions: u64,
    /// See `hot_auctions`.
    pub hot_bidders: u64,
    /// See `hot_auctions`.
    pub hot_sellers: u64,
    /// `rate.limited`: events come at the rate on the engine's clock; otherwise (nexmark's
    /// default, `max-emit-speed`) as fast as they are read.
    pub rate_limited: bool,
    /// `event.base-time` (Freshet's): the event time of the first event, in ms since the Unix
    /// epoch; absent, the engine's time when the source is first read (recorded).
    pub base_time_ms: Option<i64>,
    /// `seed` (Freshet's): the random numbers' seed (default 0).
    pub seed: u64,
}

impl Default for NexmarkOptions {
    fn default() -> Self {
        Self {
            rate: 10_000,
            events: 0,
            proportions: [1, 3, 46],
            avg_sizes: [200, 500, 100],
            hot_auctions: 2,
            hot_bidders: 4,
            hot_sellers: 4,
            rate_limited: false,
            base_time_ms: None,
            seed: 0,
        }
    }
}

/// The generator over a table's columns.
#[derive(Debug)]
pub(super) struct Nexmark {
    table: String,
    schema: SchemaRef,
    options: NexmarkOptions,
    total: u64,
}

/// A small, fast, seedable random number generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn for_event(seed: u64, event: u64) -> Self {
        Rng(mix(seed ^ mix(event)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Letters, with a space one time in 13, of length 3 up to `max_length` - 1, trimmed.
    fn string(&mut self, max_length: u64, special: char) -> String {
        let length = 3 + self.below(max_length - 3);
        let mut text = String::with_capacity(length as usize);
        for _ in 0..length {
            if self.below(13) == 0 {
                text.push(special);
            } else {
                text.push((b'a' + self.below(26) as u8) as char);
            }
        }
        let trimmed = text.trim();
        if trimmed.len() == text.len() {
            text
        } else {
            trimmed.to_string()
        }
    }

    /// Padding that brings a row to about `average` bytes (±20 %).
    fn extra(&mut self, current: u64, average: u64) -> &'static str {
        if current > average {
            return "";
        }
        let wanted = average - current;
        let delta = (wanted as f64 * 0.2).round() as u64;
        let size = wanted - delta + if delta == 0 { 0 } else { self.below(2 * delta) };
        let pool = padding();
        let offset = self.below((pool.len() - size as usize) as u64) as usize;
        &pool[offset..offset + size as usize]
    }

    /// A price: 10^(0..6) dollars, in cents.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// 1 MiB of letters that padding strings are cut from.
fn padding() -> &'static str {
    static POOL: OnceLock<String> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut rng = Rng(7);
        (0..1 << 20).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
    })
}

/// Every channel with its URL, and the hot channels' URLs.
type ChannelUrls = (Vec<(String, String)>, Vec<String>);

/// The channels and their URLs, and the hot channels' URLs.
fn channels() -> &'static ChannelUrls {
    static CHANNELS_AND_URLS: OnceLock<ChannelUrls> = OnceLock::new();
    CHANNELS_AND_URLS.get_or_init(|| {
        let mut rng = Rng(11);
        let url = |rng: &mut Rng| {
            format!(
                "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
                rng.string(5, '_'),
                rng.string(5, '_'),
                rng.string(5, '_')
            )
        };
        let hot = (0..HOT_CHANNELS.len()).map(|_| url(&mut rng)).collect();
        let all = (0..CHANNELS)
            .map(|i| {
                let mut u = url(&mut rng);
                if rng.below(10) > 0 {
                    u.push_str(&format!("&channel_id={}", (i as i32).reverse_bits().unsigned_abs()));
                }
                (format!("channel-{i}"), u)
            })
            .collect();
        (all, hot)
    })
}

/// Builders of one kind of event's columns. Texts are built as views (what `VARCHAR` columns
/// are; others are cast), so that a text is copied once, or not at all when it is short.
#[derive(Default)]
struct Columns {
    longs: Vec<Int64Builder>,
    strings: Vec<StringViewBuilder>,
    times: Vec<TimestampMillisecondBuilder>,
    /// Events of other kinds since the last of this kind: NULL rows not appended yet, so that
    /// a run of them is appended at once.
    nulls: usize,
}

impl Nexmark {
    pub(super) fn new(table: &str, schema: SchemaRef, options: NexmarkOptions) -> Result<Self> {
        let error = |m: String| FreshetError::InvalidStatement(format!("table \"{table}\": {m}"));
        for (name, fields) in [
            ("person", PERSON_FIELDS),
            ("auction", AUCTION_FIELDS),
            ("bid", BID_FIELDS),
        ] {
            let Ok(field) = schema.field_with_name(name) else {
                return Err(error(format!(
                    "the 'nexmark' connector fills the columns event_type, person, auction and bid; \"{name}\" is missing"
                )));
            };
            let DataType::Struct(declared) = field.data_type() else {
                return Err(error(format!("nexmark column \"{name}\" must be a ROW<...>")));
            };
            for f in declared {
                if !fields.iter().any(|(n, _)| n == f.name()) {
                    return Err(error(format!(
                        "nexmark column \"{name}\" has no field \"{}\" (it has {})",
                        f.name(),
                        fields.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        for field in schema.fields() {
            if !["event_type", "person", "auction", "bid"].contains(&field.name().as_str()) {
                return Err(error(format!(
                    "the 'nexmark' connector fills event_type, person, auction and bid, not \"{}\" (compute other \
                     columns with AS)",
                    field.name()
                )));
            }
        }
        let total = options.proportions.iter().sum::<u64>();
        if total == 0 || options.rate == 0 {
            return Err(error("nexmark proportions and rate must be more than 0".into()));
        }
        Ok(Self {
            table: table.to_string(),
            schema,
            options,
            total,
        })
    }

    pub(super) fn options(&self) -> &NexmarkOptions {
        &self.options
    }

    /// The number of events the source ends after, if it ends.
    pub(super) fn total_events(&self) -> Option<u64> {
        (self.options.events > 0).then_some(self.options.events)
    }

    /// The event time of event `n`.
    fn timestamp(&self, base_ms: i64, n: u64) -> i64 {
        base_ms + (n as f64 * (1_000.0 / self.options.rate as f64)) as i64
    }

    fn last_person(&self, event: u64) -> u64 {
        let [persons, _, _] = self.options.proportions;
        let epoch = event / self.total;
        let offset = (event % self.total).min(persons.saturating_sub(1));
        epoch * persons + offset
    }

    fn last_auction(&self, event: u64) -> u64 {
        let [persons, auctions, _] = self.options.proportions;
        let mut epoch = event / self.total;
        let mut offset = event % self.total;
        if offset < persons {
            // Before this epoch's auctions: the previous epoch's last one.
            if epoch == 0 {
                return 0;
            }
            epoch -= 1;
            offset = auctions.saturating_sub(1);
        } else if offset >= persons + auctions {
            offset = auctions.saturating_sub(1);
        } else {
            offset -= persons;
        }
        epoch * auctions + offset
    }

    fn some_person(&self, event: u64, rng: &mut Rng) -> u64 {
        let people = self.last_person(event) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        people - active + rng.below(active + PERSON_ID_LEAD)
    }

    fn some_auction(&self, event: u64, rng: &mut Rng) -> u64 {
        let last = self.last_auction(event);
        let first = last.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        first + rng.below(last - first + 1 + AUCTION_ID_LEAD)
    }

    /// Events `from..to` with their event times from `base_ms`, in batches of the table's
    /// columns (the ROW columns of the other kinds NULL).
    pub(super) fn generate(&self, from: u64, to: u64, base_ms: i64) -> Result<Vec<RecordBatch>> {
        let mut batches = Vec::new();
        let mut start = from;
        while start < to {
            let end = (start + BATCH_EVENTS).min(to);
            batches.push(self.batch(start, end, base_ms)?);
            start = end;
        }
        Ok(batches)
    }

    fn batch(&self, from: u64, to: u64, base_ms: i64) -> Result<RecordBatch> {
        let [persons, auctions, _] = self.options.proportions;
        let mut kinds = Vec::with_capacity((to - from) as usize);
        let mut person = Columns::new(PERSON_FIELDS);
        let mut auction = Columns::new(AUCTION_FIELDS);
        let mut bid = Columns::new(BID_FIELDS);
        let (channel_urls, hot_urls) = channels();
        let [person_size, auction_size, bid_size] = self.options.avg_sizes;
        for event in from..to {
            let mut rng = Rng::for_event(self.options.seed, event);
            let time = self.timestamp(base_ms, event);
            let rem = event % self.total;
            if rem < persons {
                kinds.push(0);
                let id = self.last_person(event) as i64 + FIRST_PERSON_ID;
                let name = format!(
                    "{} {}",
                    FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
                    LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
                );
                let email = format!("{}@{}.com", rng.string(7, ' '), rng.string(5, ' '));
                let card = (0..4)
                    .map(|_| format!("{:04}", rng.below(10_000)))
                    .collect::<Vec<_>>()
                    .join(" ");
                let city = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
                let state = US_STATES[rng.below(US_STATES.len() as u64) as usize];
                let size = 8 + name.len() + email.len() + card.len() + city.len() + state.len();
                let extra = rng.extra(size as u64, person_size);
                person.row(&[id], &[&name, &email, &card, city, state, extra], &[time]);
                auction.null();
                bid.null();
            } else if rem < persons + auctions {
                kinds.push(1);
                let id = self.last_auction(event) as i64 + FIRST_AUCTION_ID;
                let seller = if rng.below(self.options.hot_sellers) > 0 {
                    (self.last_person(event) as i64 / HOT_RATIO_STEP) * HOT_RATIO_STEP
                } else {
                    self.some_person(event, &mut rng) as i64
                } + FIRST_PERSON_ID;
                let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64;
                let initial_bid = rng.price();
                let in_flight_events = NUM_IN_FLIGHT_AUCTIONS * self.total / auctions.max(1);
                let horizon = self.timestamp(base_ms, event + in_flight_events) - time;
                let expires = time + 1 + rng.below((horizon * 2).max(1) as u64) as i64;
                let item = rng.string(20, ' ');
                let description = rng.string(100, ' ');
                let reserve = initial_bid + rng.price();
                let size = 8 + item.len() + description.len() + 40;
                let extra = rng.extra(size as u64, auction_size);
                auction.row(
                    &[id, initial_bid, reserve, seller, category],
                    &[&item, &description, extra],
                    &[time, expires],
                );
                person.null();
                bid.null();
            } else {
                kinds.push(2);
                let auction_id = if rng.below(self.options.hot_auctions) > 0 {
                    (self.last_auction(event) as i64 / HOT_RATIO_STEP) * HOT_RATIO_STEP
                } else {
                    self.some_auction(event, &mut rng) as i64
                } + FIRST_AUCTION_ID;
                let bidder = if rng.below(self.options.hot_bidders) > 0 {
                    (self.last_person(event) as i64 / HOT_RATIO_STEP) * HOT_RATIO_STEP + 1
                } else {
                    self.some_person(event, &mut rng) as i64
                } + FIRST_PERSON_ID;
                let price = rng.price();
                let (channel, url) = if rng.below(2) > 0 {
                    let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
                    (HOT_CHANNELS[i], hot_urls[i].as_str())
                } else {
                    let (c, u) = &channel_urls[rng.below(CHANNELS as u64) as usize];
                    (c.as_str(), u.as_str())
                };
                let extra = rng.extra(32, bid_size);
                bid.row(&[auction_id, bidder, price], &[channel, url, extra], &[time]);
                person.null();
                auction.null();
            }
        }
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| {
                let array: ArrayRef = match field.name().as_str() {
                    "event_type" => Arc::new(Int32Array::from(kinds.clone())),
                    "person" => person.finish(PERSON_FIELDS, field.data_type())?,
                    "auction" => auction.finish(AUCTION_FIELDS, field.data_type())?,
                    _ => bid.finish(BID_FIELDS, field.data_type())?,
                };
                if array.data_type() == field.data_type() {
                    Ok(array)
                } else {
                    cast(&array, field.data_type()).map_err(|e| {
                        FreshetError::InvalidStatement(format!(
                            "table \"{}\": nexmark column \"{}\": {e}",
                            self.table,
                            field.name()
                        ))
                    })
                }
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| FreshetError::Internal(format!("table \"{}\": nexmark: {e}", self.table)))
    }
}

/// A field of an event kind: its name and what it holds.
#[derive(Clone, Copy)]
enum Kind {
    Long,
    Text,
    Time,
}

const PERSON_FIELDS: &[(&str, Kind)] = &[
    ("id", Kind::Long),
    ("name", Kind::Text),
    ("emailAddress", Kind::Text),
    ("creditCard", Kind::Text),
    ("city", Kind::Text),
    ("state", Kind::Text),
    ("dateTime", Kind::Time),
    ("extra", Kind::Text),
];
const AUCTION_FIELDS: &[(&str, Kind)] = &[
    ("id", Kind::Long),
    ("itemName", Kind::Text),
    ("description", Kind::Text),
    ("initialBid", Kind::Long),
    ("reserve", Kind::Long),
    ("dateTime", Kind::Time),
    ("expires", Kind::Time),
    ("seller", Kind::Long),
    ("category", Kind::Long),
    ("extra", Kind::Text),
];
const BID_FIELDS: &[(&str, Kind)] = &[
    ("auction", Kind::Long),
    ("bidder", Kind::Long),
    ("price", Kind::Long),
    ("channel", Kind::Text),
    ("url", Kind::Text),
    ("dateTime", Kind::Time),
    ("extra", Kind::Text),
];

impl Columns {
    fn new(fields: &[(&str, Kind)]) -> Self {
        let mut columns = Columns::default();
        for (_, kind) in fields {
            match kind {
                Kind::Long => columns.longs.push(Int64Builder::new()),
                Kind::Text => columns.strings.push(StringViewBuilder::new()),
                Kind::Time => columns.times.push(TimestampMillisecondBuilder::new()),
            }
        }
        columns
    }

    /// One event: its numbers, texts and times, each in field order.
    fn row(&mut self, longs: &[i64], texts: &[&str], times: &[i64]) {
        self.append_nulls();
        for (b, v) in self.longs.iter_mut().zip(longs) {
            b.append_value(*v);
        }
        for (b, v) in self.strings.iter_mut().zip(texts) {
            b.append_value(v);
        }
        for (b, v) in self.times.iter_mut().zip(times) {
            b.append_value(*v);
        }
    }

    /// An event of another kind: this ROW is NULL.
    fn null(&mut self) {
        self.nulls += 1;
    }

    /// Appends the NULL rows counted since the last row.
    fn append_nulls(&mut self) {
        let n = std::mem::take(&mut self.nulls);
        if n > 0 {
            self.longs.iter_mut().for_each(|b| b.append_nulls(n));
            self.strings
                .iter_mut()
                .for_each(|b| (0..n).for_each(|_| b.append_null()));
            self.times.iter_mut().for_each(|b| b.append_nulls(n));
        }
    }

    /// The ROW column with the declared fields (by name, in the declared order and types).
    fn finish(&mut self, fields: &[(&str, Kind)], declared: &DataType) -> Result<ArrayRef> {
        let DataType::Struct(declared) = declared else {
            return Err(FreshetError::Internal("a nexmark ROW column is not a struct".into()));
        };
        self.append_nulls();
        let (mut l, mut s, mut t) = (0, 0, 0);
        let mut built: Vec<(&str, ArrayRef)> = Vec::new();
        for (name, kind) in fields {
            let array: ArrayRef = match kind {
                Kind::Long => {
                    l += 1;
                    Arc::new(self.longs[l - 1].finish())
                }
                Kind::Text => {
                    s += 1;
                    Arc::new(self.strings[s - 1].finish())
                }
                Kind::Time => {
                    t += 1;
                    Arc::new(self.times[t - 1].finish())
                }
            };
            built.push((name, array));
        }
        let mut children = Vec::new();
        for field in declared.iter() {
            let (_, array) = built
                .iter()
                .find(|(n, _)| *n == field.name())
                .ok_or_else(|| FreshetError::Internal(format!("nexmark field {} not built", field.name())))?;
            children.push(
                cast(array, field.data_type())
                    .map_err(|e| FreshetError::InvalidStatement(format!("nexmark field \"{}\": {e}", field.name())))?,
            );
        }
        let rows = built.first().map_or(0, |(_, a)| a.len());
        let valid = built.first().map(|(_, a)| a.logical_nulls());
        let nulls = valid.flatten().map(|n| NullBuffer::new(n.inner().clone()));
        let fields: Fields = declared.iter().cloned().collect();
        let array = if fields.is_empty() {
            StructArray::new_empty_fields(rows, nulls)
        } else {
            StructArray::try_new(fields, children, nulls).map_err(|e| FreshetError::Internal(e.to_string()))?
        };
        Ok(Arc::new(array))
    }
}
