//! Exact, retractable sums of floats.
//!
//! A running `f64` sum cannot take values out again: after `1e20 + 1 - 1e20` it reads 0, and
//! after `+inf - inf` NaN. A float is an integer times a power of two, so a group's sum is kept
//! exactly instead: in the common case as one 128-bit integer times a power of two of the
//! group's own (its `scale`, the smallest exponent of the values it took), which holds any sum
//! of values within about 70 binary orders of magnitude of each other; beyond that, in a wide
//! fixed-point number covering every finite double ([`WideSum`], kept aside for the few groups
//! that need it). Infinities and NaNs are counted aside, as values of their own. The value of a
//! sum is the exact sum rounded once to the nearest double, whatever order the values came and
//! went in.

use foldhash::{HashMap, HashMapExt};

use freshet_common::Result;

use crate::checkpoint::{StateReader, StateWriter, mismatch};

/// The exact sum of a group's finite values, `sum * 2^scale`, and how many values (NULLs
/// aside) the group holds. `spilled` says the group's sum (or some of its values) is kept in
/// the aside map instead. Packed to 8-byte alignment: 32 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(8))]
pub(crate) struct FloatTally {
    sum: i128,
    count: i64,
    scale: i32,
    spilled: bool,
}

/// What a group keeps aside when its values do not fit a [`FloatTally`].
#[derive(Debug, Default)]
struct Aside {
    /// The finite values' sum, when it left the tally.
    wide: Option<Box<WideSum>>,
    nan: i64,
    positive_infinity: i64,
    negative_infinity: i64,
}

/// The float sums of every group of one aggregate, by slot.
#[derive(Debug, Default)]
pub(crate) struct FloatSums {
    tallies: Vec<FloatTally>,
    aside: HashMap<u32, Aside>,
}

impl FloatSums {
    pub(crate) fn new() -> Self {
        Self {
            tallies: Vec::new(),
            aside: HashMap::new(),
        }
    }

    /// Makes room for `more` slots beyond those held.
    pub(crate) fn reserve(&mut self, more: usize) {
        self.tallies.reserve(more);
    }

    /// Adds a slot holding an empty sum.
    pub(crate) fn push(&mut self) {
        self.tallies.push(FloatTally::default());
    }

    /// Empties a slot.
    pub(crate) fn clear(&mut self, slot: usize) {
        if self.tallies[slot].spilled {
            self.aside.remove(&(slot as u32));
        }
        self.tallies[slot] = FloatTally::default();
    }

    /// Memory held by `slots` slots and what is kept aside.
    pub(crate) fn bytes(&self, slots: usize) -> usize {
        let wide = self.aside.values().filter(|a| a.wide.is_some()).count();
        slots * size_of::<FloatTally>() + self.aside.len() * 48 + wide * size_of::<WideSum>()
    }

    /// Writes a slot's sum for a checkpoint.
    pub(crate) fn save_slot(&self, slot: u32, out: &mut StateWriter) {
        let FloatTally {
            sum,
            count,
            scale,
            spilled,
        } = self.tallies[slot as usize];
        out.i128(sum).i64(count).i64(i64::from(scale)).i64(i64::from(spilled));
        if !spilled {
            return;
        }
        let aside = self.aside.get(&slot);
        let counts = aside.map_or([0; 3], |a| [a.nan, a.positive_infinity, a.negative_infinity]);
        for n in counts {
            out.i64(n);
        }
        match aside.and_then(|a| a.wide.as_ref()) {
            Some(wide) => {
                out.i64(1);
                for limb in wide.limbs {
                    out.i64(limb);
                }
            }
            None => {
                out.i64(0);
            }
        }
    }

    /// Reads a slot's sum written by [`FloatSums::save_slot`] into an empty slot.
    pub(crate) fn restore_slot(&mut self, slot: u32, input: &mut StateReader<'_>) -> Result<()> {
        let (sum, count) = (input.i128()?, input.i64()?);
        let scale = i32::try_from(input.i64()?).map_err(|_| mismatch("a float sum's scale"))?;
        let spilled = input.i64()? != 0;
        self.tallies[slot as usize] = FloatTally {
            sum,
            count,
            scale,
            spilled,
        };
        if spilled {
            let (nan, positive_infinity, negative_infinity) = (input.i64()?, input.i64()?, input.i64()?);
            let wide = match input.i64()? {
                0 => None,
                _ => {
                    let mut wide = Box::new(WideSum::default());
                    for limb in &mut wide.limbs {
                        *limb = input.i64()?;
                    }
                    Some(wide)
                }
            };
            self.aside.insert(
                slot,
                Aside {
                    wide,
                    nan,
                    positive_infinity,
                    negative_infinity,
                },
            );
        }
        Ok(())
    }

    /// Adds `value`, `weight` times (negative: takes it out), to the group of `slot`.
    #[inline]
    pub(crate) fn add(&mut self, slot: u32, value: f64, weight: i64) {
        let tally = &mut self.tallies[slot as usize];
        // No reset when the count passes zero: the sum is exact, so it is zero when the group
        // is empty, and a count may pass zero in the middle of an epoch.
        tally.count += weight;
        if value == 0.0 {
            return;
        }
        if !value.is_finite() {
            tally.spilled = true;
            let aside = self.aside.entry(slot).or_default();
            let counter = if value.is_nan() {
                &mut aside.nan
            } else if value > 0.0 {
                &mut aside.positive_infinity
            } else {
                &mut aside.negative_infinity
            };
            *counter += weight;
            return;
        }
        let (mantissa, exponent) = decompose(value);
        // |mantissa| < 2^53 and |weight| < 2^63: the product fits 117 bits.
        let product = i128::from(mantissa) * i128::from(weight);
        if tally.spilled
            && let Some(wide) = self.aside.get_mut(&slot).and_then(|a| a.wide.as_mut())
        {
            wide.add(product, exponent);
            return;
        }
        if !tally.try_add(product, exponent) {
            let (sum, scale) = (tally.sum, tally.scale);
            tally.sum = 0;
            tally.spilled = true;
            let mut wide = Box::new(WideSum::default());
            wide.add(sum, scale);
            wide.add(product, exponent);
            self.aside.entry(slot).or_default().wide = Some(wide);
        }
    }

    /// The sum of a slot's values (`None` when it holds none), and how many there are.
    pub(crate) fn value(&self, slot: u32) -> (Option<f64>, i64) {
        let tally = self.tallies[slot as usize];
        let count = tally.count;
        if count == 0 {
            return (None, 0);
        }
        let finite = ldexp(tally.sum as f64, tally.scale);
        if !tally.spilled {
            return (Some(finite), count);
        }
        let Some(aside) = self.aside.get(&slot) else {
            return (Some(finite), count);
        };
        let sum = if aside.nan != 0 || (aside.positive_infinity != 0 && aside.negative_infinity != 0) {
            f64::NAN
        } else if aside.positive_infinity != 0 {
            f64::INFINITY
        } else if aside.negative_infinity != 0 {
            f64::NEG_INFINITY
        } else {
            aside.wide.as_ref().map_or(finite, |wide| wide.to_f64())
        };
        (Some(sum), count)
    }
}

impl FloatTally {
    /// Adds `value * 2^exponent` when the sum still fits 128 bits; `false` leaves it as it was.
    #[inline]
    fn try_add(&mut self, value: i128, exponent: i32) -> bool {
        let (sum, scale) = (self.sum, self.scale);
        if sum == 0 {
            self.sum = value;
            self.scale = exponent;
            return true;
        }
        if let Some((sum, scale)) = add_scaled(sum, scale, value, exponent) {
            self.sum = sum;
            self.scale = scale;
            return true;
        }
        // The sum's low bits may be zeros (values that left): drop them and try again.
        let zeros = sum.trailing_zeros();
        match add_scaled(sum >> zeros, scale + zeros as i32, value, exponent) {
            Some((sum, scale)) => {
                self.sum = sum;
                self.scale = scale;
                true
            }
            None => false,
        }
    }
}

/// `sum * 2^scale + value * 2^exponent` as an integer times a power of two, if it fits.
#[inline]
fn add_scaled(sum: i128, scale: i32, value: i128, exponent: i32) -> Option<(i128, i32)> {
    if exponent >= scale {
        let shifted = shift_left(value, exponent - scale)?;
        Some((sum.checked_add(shifted)?, scale))
    } else {
        let shifted = shift_left(sum, scale - exponent)?;
        Some((shifted.checked_add(value)?, exponent))
    }
}

/// `x * 2^by`, if it fits.
#[inline]
fn shift_left(x: i128, by: i32) -> Option<i128> {
    if by >= 127 {
        return (x == 0).then_some(0);
    }
    let shifted = x << by;
    (shifted >> by == x).then_some(shifted)
}

/// A finite, nonzero double as `mantissa * 2^exponent`, the mantissa odd (so that values with
/// few significant bits keep the tally's scale high).
#[inline]
fn decompose(value: f64) -> (i64, i32) {
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = (bits & ((1 << 52) - 1)) as i64;
    let (mut mantissa, mut exponent) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exponent += zeros as i32;
    if value < 0.0 {
        mantissa = -mantissa;
    }
    (mantissa, exponent)
}

/// `x * 2^exponent`, rounded once unless the result is subnormal.
fn ldexp(mut x: f64, mut exponent: i32) -> f64 {
    let power = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    while exponent > 1023 {
        x *= power(1023);
        exponent -= 1023;
    }
    while exponent < -1022 {
        x *= power(-1022);
        exponent += 1022;
    }
    x * power(exponent)
}

/// Bit 0 of a [`WideSum`] is worth 2^-1074, the smallest subnormal double.
const WIDE_BIAS: i32 = 1074;
/// Limbs of 32 bits: every double's bits (2^-1074 to 2^1024), a 117-bit weighted value
/// shifted to the top of that, and 63 bits of room for carries.
const WIDE_LIMBS: usize = 70;

/// A fixed-point number wide enough to hold any sum of doubles exactly: limbs of 32 bits in
/// `i64`s, each kept in `0..2^32` except the top one, which carries the sign.
#[derive(Debug, Clone)]
pub(crate) struct WideSum {
    limbs: [i64; WIDE_LIMBS],
}

impl Default for WideSum {
    fn default() -> Self {
        Self { limbs: [0; WIDE_LIMBS] }
    }
}

impl WideSum {
    /// Adds `value * 2^exponent`, `exponent` at least -1074 and `value` below 2^117 in
    /// magnitude.
    pub(crate) fn add(&mut self, value: i128, exponent: i32) {
        if value == 0 {
            return;
        }
        let position = (exponent + WIDE_BIAS).max(0) as usize;
        let (first, offset) = (position / 32, position % 32);
        let negative = value < 0;
        let magnitude = value.unsigned_abs();
        for digit in 0..4 {
            let bits = ((magnitude >> (32 * digit)) & 0xffff_ffff) as u64;
            if bits == 0 {
                continue;
            }
            let shifted = bits << offset;
            let (low, high) = ((shifted & 0xffff_ffff) as i64, (shifted >> 32) as i64);
            let at = first + digit;
            if at + 1 >= WIDE_LIMBS {
                continue;
            }
            if negative {
                self.limbs[at] -= low;
                self.limbs[at + 1] -= high;
            } else {
                self.limbs[at] += low;
                self.limbs[at + 1] += high;
            }
        }
        self.carry_from(first);
    }

    /// Brings every limb from `first` on back into `0..2^32`, carrying into the next. Only
    /// the limbs up to `first + 5` may be out of range (those an addition touches): past them
    /// the carry stops once it is zero.
    fn carry_from(&mut self, first: usize) {
        for at in first..WIDE_LIMBS - 1 {
            let carry = self.limbs[at] >> 32;
            self.limbs[at] -= carry << 32;
            self.limbs[at + 1] += carry;
            if carry == 0 && at > first + 5 {
                break;
            }
        }
    }

    /// The sum, rounded once to the nearest double (unless subnormal).
    pub(crate) fn to_f64(&self) -> f64 {
        let negative = self.limbs[WIDE_LIMBS - 1] < 0;
        let mut magnitude = self.clone();
        if negative {
            // Every limb is out of range once negated: carry through all of them.
            let mut carry = 0;
            for limb in &mut magnitude.limbs {
                let negated = carry - *limb;
                carry = negated >> 32;
                *limb = negated - (carry << 32);
            }
        }
        let limbs = &magnitude.limbs;
        let Some(top) = limbs.iter().rposition(|&l| l != 0) else {
            return 0.0;
        };
        // The top three limbs hold at least 65 significant bits; anything below them only
        // decides which way to round, so it becomes one sticky bit.
        let low = top.saturating_sub(2);
        let mut window: u128 = 0;
        for at in (low..=top).rev() {
            window = (window << 32) | limbs[at] as u128;
        }
        if limbs[..low].iter().any(|&l| l != 0) {
            window |= 1;
        }
        let value = ldexp(window as f64, 32 * low as i32 - WIDE_BIAS);
        if negative { -value } else { value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values' sum computed with exact rationals (as big integers over 2^1074).
    fn exact(values: &[(f64, i64)]) -> f64 {
        let mut wide = WideSum::default();
        for &(v, w) in values {
            if v != 0.0 {
                let (m, e) = decompose(v);
                wide.add(i128::from(m) * i128::from(w), e);
            }
        }
        wide.to_f64()
    }

    fn sum_of(changes: &[(f64, i64)]) -> Option<f64> {
        let mut sums = FloatSums::new();
        sums.push();
        for &(v, w) in changes {
            sums.add(0, v, w);
        }
        sums.value(0).0
    }

    #[test]
    fn values_that_leave_take_their_bits_with_them() {
        assert_eq!(sum_of(&[(1e20, 1), (1.0, 1), (1e20, -1)]), Some(1.0));
        assert_eq!(sum_of(&[(1e300, 1), (1e-300, 1), (1e300, -1)]), Some(1e-300));
        assert_eq!(sum_of(&[(0.1, 1), (0.2, 1), (0.1, -1)]), Some(0.2));
        assert_eq!(sum_of(&[(0.1, 3)]), Some(0.30000000000000004));
        assert_eq!(sum_of(&[(0.1, 1), (0.1, -1)]), None);
        assert_eq!(sum_of(&[(-2.5, 2), (1.25, 1)]), Some(-3.75));
        assert_eq!(sum_of(&[(f64::MAX, 2)]), Some(f64::INFINITY));
        assert_eq!(sum_of(&[(f64::MAX, 2), (f64::MAX, -1)]), Some(f64::MAX));
        assert_eq!(sum_of(&[(5e-324, 3), (1.0, 1), (1.0, -1)]), Some(1.5e-323));
    }

    #[test]
    fn infinities_and_nan_are_counted_apart() {
        let inf = f64::INFINITY;
        assert_eq!(sum_of(&[(inf, 1), (2.0, 1), (inf, -1)]), Some(2.0));
        assert_eq!(sum_of(&[(inf, 1), (-inf, 1)]).map(f64::is_nan), Some(true));
        assert_eq!(sum_of(&[(inf, 1), (-inf, 1), (-inf, -1)]), Some(inf));
        assert_eq!(sum_of(&[(f64::NAN, 1), (3.0, 1)]).map(f64::is_nan), Some(true));
        assert_eq!(sum_of(&[(f64::NAN, 1), (3.0, 1), (f64::NAN, -1)]), Some(3.0));
        assert_eq!(sum_of(&[(-inf, 2), (1.0, 1), (-inf, -1)]), Some(-inf));
    }

    #[test]
    fn the_tally_spills_to_the_wide_sum_and_stays_exact() {
        // Values 2^-1000 and 2^1000 apart: no 128-bit integer holds both.
        let tiny = ldexp(1.0, -1000);
        let huge = ldexp(1.0, 1000);
        let changes = [(tiny, 1), (huge, 1), (3.0, 5), (huge, -1), (-tiny, 2)];
        assert_eq!(sum_of(&changes), Some(exact(&changes)));
        assert_eq!(sum_of(&changes), Some(15.0 - tiny));
    }

    #[test]
    fn random_sequences_round_their_exact_sum() {
        // A small deterministic generator: values over many magnitudes, both signs, inserted
        // and later deleted in another order.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200 {
            let mut values = Vec::new();
            for _ in 0..(next() % 40 + 1) {
                let exponent = (next() % 400) as i32 - 200;
                let sign = if next() % 2 == 0 { 1.0 } else { -1.0 };
                let v = sign * ldexp(1.0 + (next() % 1000) as f64 / 1000.0, exponent);
                values.push(v);
            }
            let mut changes: Vec<(f64, i64)> = values.iter().map(|&v| (v, 1)).collect();
            let kept = values.len() / 2;
            for &v in values.iter().skip(kept).rev() {
                changes.push((v, -1));
            }
            let remaining: Vec<(f64, i64)> = values[..kept].iter().map(|&v| (v, 1)).collect();
            let expected = if kept == 0 { None } else { Some(exact(&remaining)) };
            assert_eq!(sum_of(&changes), expected);
        }
    }

    #[test]
    fn the_wide_sum_rounds_to_nearest() {
        // 1 + 2^-53 is a tie between 1 and 1 + 2^-52: rounds to even (1); anything below the
        // tie breaks it upwards.
        let mut wide = WideSum::default();
        wide.add(1, 0);
        wide.add(1, -53);
        assert_eq!(wide.to_f64(), 1.0);
        wide.add(1, -1074);
        assert_eq!(wide.to_f64(), 1.0 + f64::EPSILON);
        let mut negative = WideSum::default();
        negative.add(-3, 10);
        negative.add(1, -1074);
        assert_eq!(negative.to_f64(), -3072.0);
    }
}
