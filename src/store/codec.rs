//! Byte layouts the store shares between the journal and the snapshot: series identities,
//! timestamps, varints; and format 1 windows.

use super::SeriesIdentity;
use std::collections::VecDeque;
use std::sync::Arc;

/// `encode_window_into`, as a new buffer.
#[cfg(test)]
pub(super) fn encode_window(
    capacity: usize,
    samples: impl ExactSizeIterator<Item = (i64, f64)> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + samples.len() * 9);
    encode_window_into(&mut out, capacity, samples);
    out
}

/// A window (format 1 snapshots): capacity, count, the values (8 bytes each), then the
/// timestamps (`encode_timestamps`). Appended to `out`.
#[cfg(test)]
pub(super) fn encode_window_into(
    out: &mut Vec<u8>,
    capacity: usize,
    samples: impl ExactSizeIterator<Item = (i64, f64)> + Clone,
) {
    out.extend_from_slice(&(capacity.min(u32::MAX as usize) as u32).to_le_bytes());
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    for (_, v) in samples.clone() {
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    encode_timestamps(out, samples.map(|s| s.0));
}

/// Capacity and samples of an encoded window; None when it is malformed.
pub(super) fn decode_window(b: &[u8]) -> Option<(usize, VecDeque<(i64, f64)>)> {
    let capacity = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let n = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    let values = b.get(8..8usize.checked_add(n.checked_mul(8)?)?)?;
    let mut rest = &b[8 + n * 8..];
    let timestamps = match n {
        0 => Vec::new(),
        _ => decode_timestamps(&mut rest, n)?,
    };
    let samples = timestamps
        .into_iter()
        .zip(values.chunks_exact(8))
        .map(|(ts, v)| Some((ts, f64::from_bits(u64::from_le_bytes(v.try_into().ok()?)))))
        .collect::<Option<VecDeque<_>>>()?;
    rest.is_empty().then_some((capacity, samples))
}

/// Timestamps as the first one and zigzag varints of the change of interval (one byte a
/// sample when regular), so a window costs little more than its raw values on disk.
pub(super) fn encode_timestamps(out: &mut Vec<u8>, timestamps: impl Iterator<Item = i64>) {
    let (mut prev_ts, mut prev_delta) = (0i64, 0i64);
    for (i, ts) in timestamps.enumerate() {
        if i == 0 {
            out.extend_from_slice(&ts.to_le_bytes());
        } else {
            let delta = ts.wrapping_sub(prev_ts);
            put_varint(out, zigzag(delta.wrapping_sub(prev_delta)));
            prev_delta = delta;
        }
        prev_ts = ts;
    }
}

/// `count` (> 0) timestamps taken from the front of `rest`.
pub(super) fn decode_timestamps(rest: &mut &[u8], count: usize) -> Option<Vec<i64>> {
    let mut ts = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    *rest = &rest[8..];
    // Bounded by the bytes left (one at least per timestamp), not by a count read from disk.
    let mut out = Vec::with_capacity(count.min(rest.len() + 1));
    out.push(ts);
    let mut delta = 0i64;
    for _ in 1..count {
        let (dod, used) = get_varint(rest)?;
        *rest = &rest[used..];
        delta = delta.wrapping_add(unzigzag(dod));
        ts = ts.wrapping_add(delta);
        out.push(ts);
    }
    Some(out)
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// An identity as the journal (and format 1 snapshots) hold it: counter-like, then target,
/// name, label names and values, each with a 4-byte length.
pub(super) fn encode_identity(s: &SeriesIdentity) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(u8::from(s.counter_like));
    let mut put = |t: &str| {
        out.extend_from_slice(&(t.len() as u32).to_be_bytes());
        out.extend_from_slice(t.as_bytes());
    };
    put(&s.target);
    put(s.name());
    for (k, v) in s.labels() {
        put(k);
        put(v);
    }
    out
}

pub(super) fn decode_identity(b: &[u8]) -> Option<SeriesIdentity> {
    let counter_like = *b.first()? == 1;
    let mut rest = b.get(1..)?;
    let mut strings = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        strings.push(std::str::from_utf8(rest.get(4..4usize.checked_add(n)?)?).ok()?);
        rest = &rest[4 + n..];
    }
    if strings.len() < 2 || strings.len() % 2 != 0 {
        return None;
    }
    let labels: Vec<(&str, &str)> = strings[2..].chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let target: Arc<str> = strings[0].into();
    Some(SeriesIdentity::new(
        target,
        strings[1],
        &labels,
        counter_like,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn windows_round_trip(
            capacity in 1usize..2000,
            samples in prop::collection::vec((any::<i64>(), any::<f64>()), 0..200),
        ) {
            let w: VecDeque<(i64, f64)> = samples.into_iter().collect();
            let (c, back) = decode_window(&encode_window(capacity, w.iter().copied())).unwrap();
            prop_assert_eq!(c, capacity);
            prop_assert_eq!(back.len(), w.len());
            for (a, b) in back.iter().zip(&w) {
                prop_assert_eq!(a.0, b.0);
                prop_assert_eq!(a.1.to_bits(), b.1.to_bits());
            }
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_window(&b);
            let ordinals = &mut super::super::journal::Ordinals::default();
            let _ = super::super::journal::decode(&b, ordinals, &mut Vec::new());
        }
    }

    #[test]
    fn a_regular_window_costs_nine_bytes_a_sample() {
        let w: VecDeque<(i64, f64)> = (0..60)
            .map(|i| (1_700_000_000_000 + i * 15_000, i as f64))
            .collect();
        // Header, values, first timestamp, the first interval (3 bytes), then 1 byte each.
        assert_eq!(
            encode_window(60, w.iter().copied()).len(),
            8 + 60 * 8 + 8 + 3 + 58
        );
    }
}
