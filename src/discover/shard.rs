//! `--shard I/N` (or `auto`): which targets this replica scrapes. A target belongs to the replica whose
//! ordinal is the `hashmod` of its address, the same function (MD5, the last 8 bytes read
//! big-endian, modulo N) as Prometheus' `hashmod` relabel action, so a Prometheus Operator
//! user's `__address__` sharding puts a target on the same shard here. The ordinal and N are
//! the only coordination between replicas.

use std::fmt;

/// This replica's share of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    /// One replica takes every target.
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` says: a fixed share, or the ordinal of a StatefulSet pod whose N is the
/// set's `spec.replicas`, followed while it runs (`kubectl scale` reshards live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    /// `--shard auto`: ordinal `index` of the StatefulSet `set`.
    Follow {
        index: u64,
        set: String,
    },
}

impl ShardSpec {
    /// `I/N` (0 ≤ I < N); `auto/N`: I is the ordinal at the end of `pod_name`, as a
    /// StatefulSet names its pods (`anomaly-sidecar-2`); `auto`: N is the StatefulSet's too.
    pub fn parse(text: &str, pod_name: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--shard {text:?}: {why}");
        let ordinal = || {
            pod_name
                .rsplit_once('-')
                .and_then(|(set, o)| Some((set, o.parse::<u64>().ok()?)))
                .filter(|(set, _)| !set.is_empty())
                .ok_or_else(|| {
                    bad(&format!(
                        "auto needs a StatefulSet pod name ending in -<ordinal> (set $POD_NAME); this host is {pod_name:?}"
                    ))
                })
        };
        if text == "auto" {
            let (set, index) = ordinal()?;
            return Ok(Self::Follow {
                index,
                set: set.to_string(),
            });
        }
        let Some((i, n)) = text.split_once('/') else {
            return Err(bad("expected I/N (e.g. 0/3), auto/N or auto"));
        };
        let count: u64 = n
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("N must be a whole number of at least 1"))?;
        let index: u64 = if i == "auto" {
            ordinal()?.1
        } else {
            i.parse().map_err(|_| bad("I must be a whole number"))?
        };
        if index >= count {
            return Err(bad(&format!("shard {index} does not exist among {count}")));
        }
        Ok(Self::Fixed(Shard { index, count }))
    }
}

impl Shard {
    /// Whether this replica scrapes the target at `address` (`host:port`). A replica whose
    /// ordinal is past N (a StatefulSet scaled down, this pod not yet stopped) owns none.
    pub fn owns(&self, address: &str) -> bool {
        self.index < self.count && (self.count == 1 || hashmod(address, self.count) == self.index)
    }
}

/// Prometheus' `hashmod`: the last 8 bytes of the MD5 of `value`, big-endian, modulo `n`.
pub fn hashmod(value: &str, n: u64) -> u64 {
    let d = md5(value.as_bytes());
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&d[8..]);
    u64::from_be_bytes(tail) % n
}

/// MD5 (RFC 1321). Only for spreading addresses over shards, as Prometheus does; nothing here
/// depends on it resisting collisions.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(abs(sin(i + 1)) × 2^32).
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32);
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut msg = input.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((input.len() as u64).wrapping_mul(8)).to_le_bytes());
    for block in msg.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ])
        });
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 16];
    for (i, w) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_rfc_1321_test_suite() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn hashmod_is_prometheus_relabel_hashmod() {
        // MD5("foo") = acbd18db4cc2f85c edef654fccc4a4d8: the last 8 bytes big-endian.
        let tail = 0xedef_654f_ccc4_a4d8_u64;
        assert_eq!(hashmod("foo", 1000), tail % 1000);
        assert_eq!(hashmod("foo", 1000), 696);
        assert_eq!(hashmod("foo", 3), tail % 3);
    }

    #[test]
    fn shards_split_targets_between_them_exactly_once() {
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        let mut per = [0; 3];
        for p in 0..300 {
            let addr = format!("10.0.{}.{}:8080", p / 256, p % 256);
            let owners: Vec<_> = shards.iter().filter(|s| s.owns(&addr)).collect();
            assert_eq!(owners.len(), 1, "{addr}");
            per[owners[0].index as usize] += 1;
        }
        assert!(per.iter().all(|&n| n > 70), "{per:?}");
        assert!(Shard::default().owns("anything:1"));
    }

    #[test]
    fn shard_flag_forms_and_mistakes() {
        let fixed = |index, count| ShardSpec::Fixed(Shard { index, count });
        assert_eq!(ShardSpec::parse("1/3", "x").unwrap(), fixed(1, 3));
        assert_eq!(
            ShardSpec::parse("auto/4", "anomaly-sidecar-2").unwrap(),
            fixed(2, 4)
        );
        assert_eq!(
            ShardSpec::parse("auto", "my-release-anomaly-sidecar-12").unwrap(),
            ShardSpec::Follow {
                index: 12,
                set: "my-release-anomaly-sidecar".into()
            }
        );
        for (text, pod, needle) in [
            ("3/3", "x", "does not exist"),
            ("1/0", "x", "at least 1"),
            ("auto", "laptop", "POD_NAME"),
            ("auto", "-1", "ordinal"),
            ("auto/3", "laptop", "ordinal"),
            ("auto/2", "s-5", "does not exist"),
            ("one/3", "x", "whole number"),
            ("2", "x", "expected I/N"),
        ] {
            let e = ShardSpec::parse(text, pod).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn a_replica_past_n_owns_nothing() {
        let past = Shard { index: 2, count: 2 };
        let single = Shard { index: 1, count: 1 };
        for p in 0..50 {
            let addr = format!("10.0.0.{p}:8080");
            assert!(!past.owns(&addr) && !single.owns(&addr), "{addr}");
            assert!(Shard { index: 0, count: 1 }.owns(&addr));
        }
    }
}
