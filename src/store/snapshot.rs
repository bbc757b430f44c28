//! The byte layout of a snapshot entry, format 2: varint lengths, a target written once per
//! snapshot and then referred to by number, and a window's timestamps written once for all
//! the series scraped together (they share them) and then referred to by number. Against
//! format 1 (4-byte lengths, the target and the timestamps in every entry) that is ~130 of
//! ~650 bytes a series at window 60. Format 1 entries still decode, for snapshots written by
//! an older version.
//!
//! Entry: flags (bit 0 counter-like, bit 1 new target, bit 2 new timestamp column, bit 3
//! timestamps inline, bit 4 values XOR-compressed, bit 5 values as decimals), the target
//! (new: text; else its number), the name and label strings (count, then each length and
//! bytes), capacity, count, the values (8 bytes each; with bit 4 their compressed length and
//! bits; with bit 5 the digits and the changes, `decimal.rs`: whichever is smallest), and for a non-empty window its timestamps (new or inline: the first one and
//! zigzag varints of the change of interval; else the column's number). Numbers count
//! definitions in file order.

use super::codec::{
    decode_identity, decode_timestamps, decode_window, encode_timestamps, get_varint, put_varint,
};
use super::SeriesIdentity;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

const COUNTER_LIKE: u8 = 1;
const NEW_TARGET: u8 = 2;
const NEW_COLUMN: u8 = 4;
const INLINE_TIMESTAMPS: u8 = 8;
/// The values XOR-compressed (`xor.rs`): their byte length, then the bits.
const XOR_VALUES: u8 = 16;
/// The values as decimals (`decimal.rs`).
const DECIMAL_VALUES: u8 = 32;
/// Decimals this small (bytes a value) are kept without trying XOR, which rarely beats them
/// and costs more.
const GOOD_DECIMAL_BYTES: usize = 4;
/// Encoded bytes of the timestamp columns a snapshot defines; past it they are inline, so a
/// snapshot whose series all carry their own timestamps costs the reader no table.
const COLUMN_BYTES: usize = 256 << 10;

/// A series as a snapshot holds it: identity, window capacity, samples.
pub(super) type Entry = (SeriesIdentity, usize, VecDeque<(i64, f64)>);

/// Encodes the entries of one snapshot, in order.
#[derive(Default)]
pub(super) struct EntryWriter {
    targets: HashMap<Arc<str>, u64>,
    columns: HashMap<Box<[u8]>, u64>,
    column_bytes: usize,
    timestamps: Vec<u8>,
    values: Vec<u8>,
    /// The last window's timestamps and the column they were (most series in a row share
    /// them: compared as they are, they need neither encoding nor hashing).
    last: Vec<i64>,
    last_column: Option<u64>,
}

impl EntryWriter {
    /// Appends the entry of a series to `out`; its values as decimals or XOR-compressed
    /// (tried if `try_xor`), whichever is smallest, else raw. Returns whether XOR was the
    /// smallest (false also when it was not tried).
    pub fn encode(
        &mut self,
        out: &mut Vec<u8>,
        identity: &SeriesIdentity,
        capacity: usize,
        samples: impl ExactSizeIterator<Item = (i64, f64)> + Clone,
        try_xor: bool,
    ) -> bool {
        let flags_at = out.len();
        let mut flags = if identity.counter_like {
            COUNTER_LIKE
        } else {
            0
        };
        out.push(0);
        match self.targets.get(&*identity.target) {
            Some(n) => put_varint(out, *n),
            None => {
                flags |= NEW_TARGET;
                let n = self.targets.len() as u64;
                self.targets.insert(identity.target.clone(), n);
                put_str(out, &identity.target);
            }
        }
        put_varint(out, 1 + 2 * identity.labels().len() as u64);
        put_str(out, identity.name());
        for (k, v) in identity.labels() {
            put_str(out, k);
            put_str(out, v);
        }
        put_varint(out, capacity as u64);
        put_varint(out, samples.len() as u64);
        let values = samples.clone().map(|s| s.1);
        let raw_bytes = samples.len() * 8;
        let decimal_at = out.len();
        let decimal = super::decimal::encode(out, values.clone())
            .then(|| out.len() - decimal_at)
            .filter(|&n| n < raw_bytes);
        let good_decimal = decimal.is_some_and(|n| n <= GOOD_DECIMAL_BYTES * samples.len());
        self.values.clear();
        let xor = if try_xor && !good_decimal {
            super::xor::encode(&mut self.values, values);
            let n = self.values.len() + varint_len(self.values.len());
            (n < raw_bytes && decimal.is_none_or(|d| n < d)).then_some(n)
        } else {
            None
        };
        if xor.is_some() {
            out.truncate(decimal_at);
            flags |= XOR_VALUES;
            put_varint(out, self.values.len() as u64);
            out.extend_from_slice(&self.values);
        } else if decimal.is_some() {
            flags |= DECIMAL_VALUES;
        } else {
            out.truncate(decimal_at);
            for (_, v) in samples.clone() {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        if samples.len() > 0 {
            let same = self.last_column.is_some()
                && self.last.len() == samples.len()
                && self.last.iter().copied().eq(samples.clone().map(|s| s.0));
            match self.last_column.filter(|_| same) {
                Some(n) => put_varint(out, n),
                None => {
                    self.timestamps.clear();
                    encode_timestamps(&mut self.timestamps, samples.clone().map(|s| s.0));
                    let (f, column) = self.put_timestamps(out);
                    flags |= f;
                    self.last.clear();
                    self.last.extend(samples.map(|s| s.0));
                    self.last_column = column;
                }
            }
        }
        out[flags_at] = flags;
        xor.is_some()
    }

    /// The column number of the timestamps just encoded, or them (defining a column while
    /// the table has room); returns the flags that say which, and the column if any.
    fn put_timestamps(&mut self, out: &mut Vec<u8>) -> (u8, Option<u64>) {
        if let Some(n) = self.columns.get(self.timestamps.as_slice()) {
            put_varint(out, *n);
            return (0, Some(*n));
        }
        out.extend_from_slice(&self.timestamps);
        if self.column_bytes + self.timestamps.len() > COLUMN_BYTES {
            return (INLINE_TIMESTAMPS, None);
        }
        self.column_bytes += self.timestamps.len();
        let n = self.columns.len() as u64;
        self.columns.insert(self.timestamps.as_slice().into(), n);
        (NEW_COLUMN, Some(n))
    }
}

/// Decodes the entries of one snapshot, in order; `format` is the file's.
pub(super) struct EntryReader {
    format: u8,
    targets: Vec<Arc<str>>,
    columns: Vec<Vec<i64>>,
}

impl EntryReader {
    pub fn new(format: u8) -> Self {
        Self {
            format,
            targets: Vec::new(),
            columns: Vec::new(),
        }
    }

    /// The next entry; None when it is malformed.
    pub fn decode(&mut self, b: &[u8]) -> Option<Entry> {
        if self.format == 1 {
            return decode_format_1(b);
        }
        let (&flags, mut rest) = b.split_first()?;
        let target = if flags & NEW_TARGET != 0 {
            let t: Arc<str> = take_str(&mut rest)?.into();
            self.targets.push(t.clone());
            t
        } else {
            self.targets.get(take_varint(&mut rest)? as usize)?.clone()
        };
        let strings = take_varint(&mut rest)? as usize;
        if strings % 2 != 1 || strings > rest.len() {
            return None;
        }
        let name = take_str(&mut rest)?;
        let mut labels = Vec::with_capacity(strings / 2);
        for _ in 0..strings / 2 {
            labels.push((take_str(&mut rest)?, take_str(&mut rest)?));
        }
        let identity = SeriesIdentity::new(target, name, &labels, flags & COUNTER_LIKE != 0);
        let capacity = take_varint(&mut rest)? as usize;
        let count = take_varint(&mut rest)? as usize;
        let values: Vec<f64> = if flags & DECIMAL_VALUES != 0 {
            super::decimal::decode(&mut rest, count)?
        } else if flags & XOR_VALUES != 0 {
            let len = take_varint(&mut rest)? as usize;
            let bits = rest.get(..len)?;
            rest = &rest[len..];
            super::xor::decode(bits, count)?
        } else {
            let raw = rest.get(..count.checked_mul(8)?)?;
            rest = &rest[count * 8..];
            raw.chunks_exact(8)
                .map(|v| Some(f64::from_bits(u64::from_le_bytes(v.try_into().ok()?))))
                .collect::<Option<_>>()?
        };
        let timestamps = match count {
            0 => Vec::new(),
            _ if flags & (NEW_COLUMN | INLINE_TIMESTAMPS) != 0 => {
                let ts = decode_timestamps(&mut rest, count)?;
                if flags & NEW_COLUMN != 0 {
                    self.columns.push(ts.clone());
                }
                ts
            }
            _ => self.columns.get(take_varint(&mut rest)? as usize)?.clone(),
        };
        if !rest.is_empty() || timestamps.len() != count {
            return None;
        }
        let samples: VecDeque<(i64, f64)> = timestamps.into_iter().zip(values).collect();
        Some((identity, capacity, samples))
    }
}

fn varint_len(v: usize) -> usize {
    (usize::BITS - v.leading_zeros()).div_ceil(7).max(1) as usize
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn take_varint(rest: &mut &[u8]) -> Option<u64> {
    let (v, used) = get_varint(rest)?;
    *rest = &rest[used..];
    Some(v)
}

fn take_str<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let n = usize::try_from(take_varint(rest)?).ok()?;
    let s = std::str::from_utf8(rest.get(..n)?).ok()?;
    *rest = &rest[n..];
    Some(s)
}

/// Format 1: identity length (4 bytes), identity (4-byte lengths), window with its own
/// timestamps.
fn decode_format_1(b: &[u8]) -> Option<Entry> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let identity = decode_identity(b.get(4..4usize.checked_add(len)?)?)?;
    let (capacity, samples) = decode_window(b.get(4 + len..)?)?;
    Some((identity, capacity, samples))
}

#[cfg(test)]
mod tests {
    use super::super::codec::{encode_identity, encode_window};
    use super::*;
    use proptest::prelude::*;

    fn identity(
        target: &str,
        name: &str,
        labels: &[(&str, &str)],
        counter: bool,
    ) -> SeriesIdentity {
        SeriesIdentity::new(target.into(), name, labels, counter)
    }

    fn window(start: i64, n: usize, jitter: &[i64]) -> Vec<(i64, f64)> {
        (0..n)
            .map(|i| {
                let j = jitter.get(i).copied().unwrap_or(0);
                (start + i as i64 * 1000 + j, i as f64 * 0.5)
            })
            .collect()
    }

    type Series = (SeriesIdentity, usize, Vec<(i64, f64)>);

    /// The window's values replaced by ones with random mantissas (which XOR cannot shrink).
    fn noisy(w: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        w.into_iter()
            .map(|(t, _)| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (t, f64::from_bits(x))
            })
            .collect()
    }

    #[test]
    fn printed_decimals_are_written_as_decimals() {
        let id = identity("t", "g", &[], false);
        let gauge: Vec<(i64, f64)> = (0..60)
            .map(|i| {
                (
                    i * 1000,
                    format!("{:.4}", 50.0 + (i * 37 % 100) as f64 / 50.0),
                )
            })
            .map(|(t, s)| (t, s.parse().unwrap()))
            .collect();
        let (back, bytes) = round_trip(&[(id, 60, gauge.clone())]);
        assert_eq!(back[0].2, gauge);
        // Identity and lengths, then 60 values of 3 bytes or less (XOR: ~7).
        assert!(bytes < 20 + 60 * 3 + 70, "{bytes} bytes for 60 values");
    }

    #[test]
    fn values_that_move_little_are_xor_compressed() {
        let id = identity("t", "c", &[], true);
        // Not a short decimal, and flat with a few steps: XOR it is.
        let counter: Vec<(i64, f64)> = (0..60)
            .map(|i| (i * 1000, std::f64::consts::E * (1 + i / 20) as f64))
            .collect();
        let (back, bytes) = round_trip(&[(id.clone(), 60, counter.clone())]);
        assert_eq!(back[0].2, counter);
        assert!(bytes < 200, "{bytes} bytes for 60 values");
        let (_, raw) = round_trip(&[(id, 60, noisy(counter))]);
        assert!(raw > 480, "random values stay raw: {raw}");
    }

    /// Encodes every (identity, capacity, window) into one snapshot's entries and decodes
    /// them back in order.
    fn round_trip(series: &[Series]) -> (Vec<Entry>, usize) {
        let mut writer = EntryWriter::default();
        let mut bytes = 0;
        let encoded: Vec<Vec<u8>> = series
            .iter()
            .map(|(id, cap, w)| {
                let mut out = Vec::new();
                writer.encode(&mut out, id, *cap, w.iter().copied(), true);
                bytes += out.len();
                out
            })
            .collect();
        let mut reader = EntryReader::new(2);
        let decoded = encoded.iter().map(|e| reader.decode(e).unwrap()).collect();
        (decoded, bytes)
    }

    proptest! {
        #[test]
        fn entries_round_trip(
            series in prop::collection::vec(
                (0usize..3, "[a-z_]{1,12}", prop::collection::vec(("[a-z]{1,5}", ".{0,8}"), 0..4),
                 any::<bool>(), 1usize..100, 0usize..70, 0i64..3,
                 prop::collection::vec(-20i64..20, 0..70), 0u8..3),
                0..40),
        ) {
            let series: Vec<_> = series
                .into_iter()
                .map(|(t, name, labels, counter, cap, n, start, jitter, values)| {
                    let labels: Vec<(&str, &str)> =
                        labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let id = identity(&format!("target-{t}"), &name, &labels, counter);
                    // Decimals, noise (raw) or a constant only XOR shrinks.
                    let w = window(start * 7, n, &jitter);
                    let w = match values {
                        0 => w,
                        1 => noisy(w),
                        _ => w.into_iter().map(|(t, _)| (t, std::f64::consts::E)).collect(),
                    };
                    (id, cap, w)
                })
                .collect();
            let (back, _) = round_trip(&series);
            for ((id, cap, w), (bid, bcap, bw)) in series.iter().zip(&back) {
                prop_assert_eq!(id, bid);
                prop_assert_eq!(cap, bcap);
                prop_assert_eq!(w.len(), bw.len());
                for (a, b) in w.iter().zip(bw) {
                    prop_assert_eq!(a.0, b.0);
                    prop_assert_eq!(a.1.to_bits(), b.1.to_bits());
                }
            }
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = EntryReader::new(2).decode(&b);
            let _ = EntryReader::new(1).decode(&b);
        }
    }

    #[test]
    fn series_scraped_together_share_their_target_and_timestamps() {
        let labels = [("instance", "10.0.0.1:9100"), ("job", "node")];
        let series: Vec<_> = (0..100)
            .map(|i| {
                let id = identity(
                    "http://10.0.0.1:9100/metrics",
                    &format!("m{i:03}"),
                    &labels,
                    false,
                );
                (id, 60, noisy(window(1_700_000_000_000, 60, &[])))
            })
            .collect();
        let (_, bytes) = round_trip(&series);
        // Per series after the first: flags, target number, string count, 5 strings with
        // their lengths (4 + 8 + 13 + 3 + 4 bytes), capacity, count, 60 values, column number.
        let each = 1 + 1 + 1 + (5 + 4 + 8 + 13 + 3 + 4) + 1 + 1 + 480 + 1;
        // The first defines both: the target (length and 28 bytes) and the timestamps (the
        // first, the first interval in 2 bytes, then 1 byte each).
        let first = each - 2 + 29 + 8 + 2 + 58;
        assert_eq!(bytes, first + 99 * each);
        // Format 1 spent 4 bytes per length, the target and the timestamps in every entry.
        let old = 4
            + encode_identity(&series[0].0).len()
            + encode_window(60, series[0].2.iter().copied()).len();
        assert!(old - each >= 120, "{each} vs {old}");
    }

    #[test]
    fn a_snapshot_of_series_with_their_own_timestamps_stops_defining_columns() {
        let series: Vec<_> = (0..6000)
            .map(|i| {
                let id = identity("t", "m", &[("i", &i.to_string())], false);
                (id, 60, window(i * 13, 60, &[]))
            })
            .collect();
        let mut writer = EntryWriter::default();
        for (id, cap, w) in &series {
            writer.encode(&mut Vec::new(), id, *cap, w.iter().copied(), true);
        }
        assert!(writer.column_bytes <= COLUMN_BYTES);
        assert!(writer.columns.len() < series.len());
        let (back, _) = round_trip(&series);
        assert_eq!(back[5999].2, series[5999].2);
    }

    #[test]
    fn format_1_entries_still_decode() {
        let id = identity("t", "up", &[("job", "x")], true);
        let w = window(5, 3, &[]);
        let ident = encode_identity(&id);
        let mut b = (ident.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&ident);
        b.extend_from_slice(&encode_window(10, w.iter().copied()));
        let (bid, cap, samples) = EntryReader::new(1).decode(&b).unwrap();
        assert_eq!((bid, cap), (id, 10));
        assert_eq!(samples, w);
    }
}
