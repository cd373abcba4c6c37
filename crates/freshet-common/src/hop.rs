//! The bounds of Flink's HOP windows, computed the same way wherever they are needed: by the
//! window table function's rows (`window_hop`) and by incremental maintenance, which combines
//! a row's slide into its windows.

use datafusion::arrow::datatypes::TimeUnit;

/// A hopping window: `size_ms` long, starting every `slide_ms` (plus `offset_ms`) since the
/// Unix epoch. A row is in `size_ms / slide_ms` windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopWindow {
    /// How often a window starts.
    pub slide_ms: i64,
    /// How long a window is.
    pub size_ms: i64,
    /// Where windows start within a slide.
    pub offset_ms: i64,
}

/// Which bound of a window: its start, its end, or Flink's `window_time` (end less 1 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopBound {
    /// `window_start`.
    Start,
    /// `window_end`.
    End,
    /// `window_time`.
    Time,
}

impl HopWindow {
    /// How many windows hold each row.
    pub fn windows_per_row(&self) -> i64 {
        self.size_ms / self.slide_ms.max(1)
    }

    /// The `bound` of the `index`-th window of a row at `time` (in `unit`): window 0 starts at
    /// the start of the row's slide, window `i` `i` slides before. `None` when it is out of the
    /// range of timestamps.
    pub fn bound(&self, time: i64, unit: TimeUnit, index: i64, bound: HopBound) -> Option<i64> {
        // Seconds are computed in milliseconds and floored back.
        let (time, per_ms) = match unit {
            TimeUnit::Second => (time.checked_mul(1000)?, 1),
            TimeUnit::Millisecond => (time, 1),
            TimeUnit::Microsecond => (time, 1_000),
            TimeUnit::Nanosecond => (time, 1_000_000),
        };
        let slide = self.slide_ms.checked_mul(per_ms)?;
        let offset = self.offset_ms.checked_mul(per_ms)?;
        let start = time
            .checked_sub(offset)?
            .div_euclid(slide)
            .checked_mul(slide)?
            .checked_add(offset)?
            .checked_sub(index.checked_mul(slide)?)?;
        let value = match bound {
            HopBound::Start => start,
            HopBound::End => start.checked_add(self.size_ms.checked_mul(per_ms)?)?,
            HopBound::Time => start
                .checked_add(self.size_ms.checked_mul(per_ms)?)?
                .checked_sub(per_ms)?,
        };
        Some(match unit {
            TimeUnit::Second => value.div_euclid(1000),
            _ => value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_in_the_windows_of_its_slide_and_the_ones_before() {
        let hop = HopWindow {
            slide_ms: 2_000,
            size_ms: 10_000,
            offset_ms: 0,
        };
        assert_eq!(hop.windows_per_row(), 5);
        let at = |time, index, bound| hop.bound(time, TimeUnit::Millisecond, index, bound);
        assert_eq!(at(5_500, 0, HopBound::Start), Some(4_000));
        assert_eq!(at(5_500, 0, HopBound::End), Some(14_000));
        assert_eq!(at(5_500, 4, HopBound::Start), Some(-4_000));
        assert_eq!(at(5_500, 4, HopBound::Time), Some(5_999));
        assert_eq!(at(-1, 0, HopBound::Start), Some(-2_000));
        assert_eq!(
            hop.bound(5_500_000, TimeUnit::Microsecond, 1, HopBound::Start),
            Some(2_000_000)
        );
        assert_eq!(hop.bound(5, TimeUnit::Second, 0, HopBound::Time), Some(13));
        let offset = HopWindow { offset_ms: 500, ..hop };
        assert_eq!(
            offset.bound(5_400, TimeUnit::Millisecond, 0, HopBound::Start),
            Some(4_500)
        );
        assert_eq!(hop.bound(i64::MIN, TimeUnit::Millisecond, 0, HopBound::Start), None);
    }
}
