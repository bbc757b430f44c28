//! Byte layouts of what the store writes: windows and series identities.

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

/// A window: capacity, count, the values (8 bytes each), then the timestamps as the first
/// one and zigzag varints of the change of interval (one byte a sample when regular), so a
/// window costs little more than its raw values on disk.
/// Appended to `out`: a compaction encodes every window into one reused buffer.
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
    let mut prev_ts = 0i64;
    let mut prev_delta = 0i64;
    for (i, (ts, _)) in samples.enumerate() {
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

/// Capacity and samples of an encoded window; None when it is malformed.
pub(super) fn decode_window(b: &[u8]) -> Option<(usize, VecDeque<(i64, f64)>)> {
    let capacity = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let n = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?) as usize;
    let values = b.get(8..8usize.checked_add(n.checked_mul(8)?)?)?;
    let mut rest = &b[8 + n * 8..];
    let mut samples = VecDeque::with_capacity(n);
    let (mut ts, mut delta) = (0i64, 0i64);
    for (i, v) in values.chunks_exact(8).enumerate() {
        if i == 0 {
            ts = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
            rest = &rest[8..];
        } else {
            let (dod, used) = get_varint(rest)?;
            rest = &rest[used..];
            delta = delta.wrapping_add(unzigzag(dod));
            ts = ts.wrapping_add(delta);
        }
        samples.push_back((ts, f64::from_bits(u64::from_le_bytes(v.try_into().ok()?))));
    }
    rest.is_empty().then_some((capacity, samples))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

pub(super) fn encode_identity(s: &SeriesIdentity) -> Vec<u8> {
    let mut out = Vec::new();
    encode_identity_into(&mut out, s);
    out
}

/// `encode_identity`, appended to `out`.
pub(super) fn encode_identity_into(out: &mut Vec<u8>, s: &SeriesIdentity) {
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
