//! A window's values XOR-compressed as in Facebook's Gorilla and Prometheus' chunks: each
//! value XORed with the previous one, a repeat in one bit, a change in its meaningful bits
//! only (reusing the previous change's leading/trailing-zero window when it fits). Counters
//! and gauges that move little cost one or two bytes a value instead of eight. Used by
//! compactions only, never per sample.

/// Appends `values` XOR-encoded to `out`.
pub(super) fn encode(out: &mut Vec<u8>, values: impl Iterator<Item = f64>) {
    let mut w = BitWriter {
        out,
        bits: 0,
        used: 0,
    };
    let mut prev = 0u64;
    // The previous change's window: leading zeros and meaningful bits (0: none yet).
    let (mut lead, mut len) = (0u32, 0u32);
    let mut values = values.map(f64::to_bits);
    if let Some(first) = values.next() {
        w.put(first, 64);
        prev = first;
    }
    for bits in values {
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.put(0, 1);
            continue;
        }
        let (l, t) = (x.leading_zeros().min(31), x.trailing_zeros());
        if len > 0 && l >= lead && t >= 64 - lead - len {
            let meaningful = x >> (64 - lead - len);
            if len <= 62 {
                w.put((0b10 << len) | meaningful, len + 2);
            } else {
                w.put(0b10, 2);
                w.put(meaningful, len);
            }
        } else {
            lead = l;
            len = 64 - l - t;
            // Control, leading zeros (5 bits), length (6 bits; 64 written as 0) in one go.
            let head = (0b11 << 11) | (u64::from(lead) << 6) | u64::from(len % 64);
            if len <= 51 {
                w.put((head << len) | (x >> t), len + 13);
            } else {
                w.put(head, 13);
                w.put(x >> t, len);
            }
        }
    }
    w.finish();
}

/// `count` values decoded from `b`; None when `b` is too short.
pub(super) fn decode(b: &[u8], count: usize) -> Option<Vec<f64>> {
    let mut r = BitReader { b, pos: 0 };
    let mut out = Vec::with_capacity(count.min(b.len() * 8 + 1));
    let mut prev = 0u64;
    let (mut lead, mut len) = (0u32, 0u32);
    for i in 0..count {
        if i == 0 {
            prev = r.take(64)?;
        } else if r.take(1)? == 1 {
            if r.take(1)? == 1 {
                lead = r.take(5)? as u32;
                len = match r.take(6)? as u32 {
                    0 => 64,
                    n => n,
                };
                if lead + len > 64 {
                    return None;
                }
            } else if len == 0 {
                return None; // a reused window before any was set
            }
            prev ^= r.take(len)? << (64 - lead - len);
        }
        out.push(f64::from_bits(prev));
    }
    Some(out)
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Bits not yet written, in the low `used` (< 64) bits.
    bits: u64,
    used: u32,
}

impl BitWriter<'_> {
    /// Writes the low `n` (≤ 64) bits of `v`, most significant first.
    fn put(&mut self, v: u64, n: u32) {
        if n == 0 {
            return;
        }
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        let free = 64 - self.used;
        if n < free {
            self.bits = (self.bits << n) | v;
            self.used += n;
            return;
        }
        // Fill the word, write it, keep what is left of `v`.
        let rest = n - free;
        let word = if free == 64 {
            v
        } else {
            (self.bits << free) | (v >> rest)
        };
        self.out.extend_from_slice(&word.to_be_bytes());
        self.bits = if rest == 0 {
            0
        } else {
            v & ((1u64 << rest) - 1)
        };
        self.used = rest;
    }

    fn finish(self) {
        if self.used > 0 {
            let word = self.bits << (64 - self.used);
            let bytes = self.used.div_ceil(8) as usize;
            self.out.extend_from_slice(&word.to_be_bytes()[..bytes]);
        }
    }
}

struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    /// The next `n` (≤ 64) bits, most significant first; None past the end.
    fn take(&mut self, n: u32) -> Option<u64> {
        let (mut v, mut left) = (0u64, n);
        while left > 0 {
            let byte = *self.b.get(self.pos / 8)?;
            let avail = 8 - (self.pos % 8) as u32;
            let k = avail.min(left);
            let bits = (u64::from(byte) >> (avail - k)) & ((1u64 << k) - 1);
            v = (v << k) | bits;
            left -= k;
            self.pos += k as usize;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[f64]) -> usize {
        let mut out = Vec::new();
        encode(&mut out, values.iter().copied());
        let back = decode(&out, values.len()).unwrap();
        assert_eq!(back.len(), values.len());
        for (a, b) in back.iter().zip(values) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        out.len()
    }

    proptest! {
        #[test]
        fn any_values_round_trip(values in prop::collection::vec(any::<f64>(), 0..200)) {
            round_trip(&values);
        }

        #[test]
        fn nearby_values_round_trip(base in -1e6f64..1e6, steps in prop::collection::vec(-3i32..4, 0..200)) {
            let values: Vec<f64> = steps.iter().scan(base, |v, s| { *v += f64::from(*s) * 0.25; Some(*v) }).collect();
            round_trip(&values);
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..100), n in 0usize..100) {
            let _ = decode(&b, n);
        }
    }

    #[test]
    fn counters_and_flat_gauges_cost_a_fraction_of_eight_bytes() {
        let flat = vec![42.0; 60];
        assert_eq!(round_trip(&flat), 8 + 8); // 64 bits, then 59 single bits
        let counter: Vec<f64> = (0..60).map(|i| 1_000_000.0 + f64::from(i) * 17.0).collect();
        assert!(round_trip(&counter) < 60 * 3, "{}", round_trip(&counter));
        let two_values: Vec<f64> = (0..60)
            .map(|i| if i % 2 == 0 { 51.2345 } else { 49.8731 })
            .collect();
        assert!(round_trip(&two_values) < 60 * 8);
    }
}
