//! Byte layouts of the store's sled records (big-endian keys, so a prefix scan of a series
//! returns its samples in order).

use super::{SeriesId, SeriesIdentity};
use std::sync::Arc;

pub(super) fn sample_key(id: SeriesId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn decode_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(8..16)?.try_into().ok()?))
}

pub(super) fn encode_sample(ts: i64, v: f64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&ts.to_be_bytes());
    b[8..].copy_from_slice(&v.to_bits().to_be_bytes());
    b
}

pub(super) fn decode_sample(b: &[u8]) -> Option<(i64, f64)> {
    let ts = i64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let v = f64::from_bits(u64::from_be_bytes(b.get(8..16)?.try_into().ok()?));
    Some((ts, v))
}

pub(super) fn encode_identity(s: &SeriesIdentity) -> Vec<u8> {
    let mut out = vec![u8::from(s.counter_like)];
    let mut put = |t: &str| {
        out.extend_from_slice(&(t.len() as u32).to_be_bytes());
        out.extend_from_slice(t.as_bytes());
    };
    put(&s.target);
    put(&s.name);
    for (k, v) in &s.labels {
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
        let s = std::str::from_utf8(rest.get(4..4 + n)?).ok()?.to_string();
        strings.push(s);
        rest = &rest[4 + n..];
    }
    if strings.len() < 2 || strings.len() % 2 != 0 {
        return None;
    }
    let mut it = strings.into_iter();
    let target: Arc<str> = it.next()?.into();
    let name = it.next()?;
    let mut labels = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        labels.push((k, v));
    }
    Some(SeriesIdentity {
        target,
        name,
        labels,
        counter_like,
    })
}
