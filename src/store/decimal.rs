//! A window's values as decimals when they are: most exporters print a value with a few
//! digits after the point (or none: counters, bytes), and such a value is the double nearest
//! `n / 10^d` for an integer `n`. Then the window is `d` and the changes of `n` as zigzag
//! varints, 1–3 bytes a value where XOR needs ~7 for noisy decimals. Exact: a value that does
//! not come back bit for bit from its `n` and `d` makes the window fall back (XOR or raw).

use super::codec::{get_varint, put_varint, unzigzag, zigzag};

/// Most digits after the point tried; past it a value is taken as not decimal.
const MAX_DIGITS: usize = 9;
const POW10: [f64; MAX_DIGITS + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers up to 2^53 are exact doubles.
const MAX_SCALED: f64 = 9_007_199_254_740_992.0;

/// `v`'s integer at `d` digits, if `v` is exactly the double nearest it / 10^d.
fn scaled(v: f64, d: usize) -> Option<i64> {
    let x = v * POW10[d];
    if x.is_nan() || x.abs() >= MAX_SCALED {
        return None;
    }
    // Rounded by truncating `x ± 0.5` (f64::round is a libm call, a third of the cost), and
    // checked back from the integer itself, as `decode` does (so -0.0, which comes back as
    // 0.0, fails).
    let n = (x + 0.5f64.copysign(x)) as i64;
    ((n as f64 / POW10[d]).to_bits() == v.to_bits()).then_some(n)
}

/// Appends `values` as decimals and returns true, or appends nothing and returns false when
/// one of them is not a decimal of at most `MAX_DIGITS` digits after the point.
pub(super) fn encode(out: &mut Vec<u8>, values: impl Iterator<Item = f64> + Clone) -> bool {
    let start = out.len();
    let mut digits = 0;
    // One pass at the digits found so far; a value that needs more starts it over (a value
    // exact at fewer digits is exact at more: the same rational). Most windows take one.
    'pass: loop {
        out.truncate(start);
        out.push(digits as u8);
        let mut prev = 0i64;
        for v in values.clone() {
            let Some(n) = scaled(v, digits) else {
                match (digits + 1..=MAX_DIGITS).find(|&d| scaled(v, d).is_some()) {
                    Some(d) => digits = d,
                    None => {
                        out.truncate(start);
                        return false;
                    }
                }
                continue 'pass;
            };
            put_varint(out, zigzag(n.wrapping_sub(prev)));
            prev = n;
        }
        return true;
    }
}

/// `count` values decoded from the front of `rest` (which moves past them); None when it is
/// malformed.
pub(super) fn decode(rest: &mut &[u8], count: usize) -> Option<Vec<f64>> {
    let (&digits, mut b) = rest.split_first()?;
    let scale = *POW10.get(digits as usize)?;
    let mut out = Vec::with_capacity(count.min(b.len()));
    let mut n = 0i64;
    for _ in 0..count {
        let (delta, used) = get_varint(b)?;
        b = &b[used..];
        n = n.wrapping_add(unzigzag(delta));
        out.push(n as f64 / scale);
    }
    *rest = b;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[f64]) -> Option<usize> {
        let mut out = Vec::new();
        if !encode(&mut out, values.iter().copied()) {
            assert!(out.is_empty());
            return None;
        }
        let mut rest = &out[..];
        let back = decode(&mut rest, values.len()).unwrap();
        assert!(rest.is_empty());
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(values));
        Some(out.len())
    }

    #[test]
    fn printed_decimals_cost_a_few_bytes_and_others_fall_back() {
        // A gauge printed with 4 decimals, moving by about 1: 3 bytes a value.
        let gauge: Vec<f64> = (0..60)
            .map(|i| format!("{:.4}", 50.0 + ((i * 7919) % 200) as f64 / 100.0))
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(round_trip(&gauge).unwrap() <= 1 + 60 * 3);
        // A counter: one byte a value.
        let counter: Vec<f64> = (0..60).map(|i| 1_000_000.0 + 5.0 * i as f64).collect();
        assert_eq!(round_trip(&counter), Some(1 + 3 + 59));
        // Durations with all their digits, NaN, infinities, -0 and huge values do not fit.
        assert_eq!(round_trip(&[0.1, std::f64::consts::PI]), None);
        assert_eq!(round_trip(&[1.0, f64::NAN]), None);
        assert_eq!(round_trip(&[f64::INFINITY]), None);
        assert_eq!(round_trip(&[-0.0]), None);
        assert_eq!(round_trip(&[1e300]), None);
        assert_eq!(round_trip(&[-12.5, 0.001, 123_456_789.123_456_78]), None);
        assert!(round_trip(&[-12.5, 0.001, 1e9]).is_some());
        assert_eq!(round_trip(&[]), Some(1));
    }

    proptest! {
        #[test]
        fn any_values_round_trip_or_fall_back(values in prop::collection::vec(any::<f64>(), 0..80)) {
            round_trip(&values);
        }

        #[test]
        fn short_decimals_always_fit(ns in prop::collection::vec(-10_000_000_000i64..10_000_000_000, 0..80), d in 0usize..=6) {
            let values: Vec<f64> = ns.iter().map(|&n| n as f64 / POW10[d]).collect();
            prop_assert!(round_trip(&values).is_some());
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..100), count in 0usize..100) {
            let _ = decode(&mut &b[..], count);
        }
    }
}
