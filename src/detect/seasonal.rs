//! The seasonal profile of one series: the season (e.g. 24h) cut into buckets (e.g. 288 of
//! 5 minutes), each with its own running mean and variance, so a value is judged against
//! what is usual at that time of day (or week), and "Monday 09:00 is always busy" stops
//! firing. Where a sample falls (local time, days from midnight, weeks from Monday) is the
//! `Season`'s to say (`season.rs`).
//!
//! A bucket judges once it holds `min_samples` values from at least two seasons (`seasoned`).
//! A bucket remembers about `memory` values: a Welford mean and variance until then, after
//! that each new value first discounts the old ones by (memory − 1) / memory, so a profile
//! follows a slow change of the pattern. A bucket's statistics are persisted when the
//! series moves on to the next bucket (`push` says which finished).

use super::season::Season;

/// Bytes of one persisted bucket: mean, sum of squared deviations (f64 each), count (u32).
pub const BUCKET_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    mean: f64,
    m2: f64,
    n: u32,
    /// Times the series entered the bucket (≈ seasons seen, up to `MAX_VISITS`).
    visits: u16,
}

/// Visits share the persisted count's word: n ≤ 1e6 (a window's cap) fits in 20 bits.
const COUNT_BITS: u32 = 20;
const MAX_VISITS: u16 = (1 << (32 - COUNT_BITS)) - 1;

/// A series' profile over one season.
#[derive(Debug, Clone, PartialEq)]
pub struct Seasonal {
    buckets: Box<[Bucket]>,
    /// The bucket of the last value pushed.
    current: Option<u32>,
}

impl Seasonal {
    pub fn new(buckets: usize) -> Self {
        Self {
            buckets: vec![Bucket::default(); buckets.max(1)].into_boxed_slice(),
            current: None,
        }
    }

    /// How many buckets the season is cut into.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The bucket of `ts_ms` in `season` cut into this profile's buckets.
    #[inline]
    pub fn bucket_of(&self, season: &Season, ts_ms: i64) -> u32 {
        let n = self.buckets.len() as i64;
        let at = season.position(ts_ms);
        let season = season.ms();
        // at · n / season: in i64 whenever it fits (a week in ms times a million buckets
        // does), else in i128; an i128 division is several times slower and every
        // evaluation of a seasonal rule asks.
        let i = match at.checked_mul(n) {
            Some(p) => p / season,
            None => (i128::from(at) * i128::from(n) / i128::from(season)) as i64,
        };
        i.clamp(0, n - 1) as u32
    }

    /// Whether bucket `i` has judged-worthy statistics: `min_samples` values from at least
    /// two seasons. One visit's values are consecutive samples, correlated like any real
    /// gauge's: their spread is far below the bucket's from day to day, and judging against
    /// it paged dozens of times a week on AR(1) noise.
    pub fn seasoned(&self, i: u32, min_samples: usize) -> bool {
        self.buckets
            .get(i as usize)
            .is_some_and(|b| b.visits >= 2 && b.n as usize >= min_samples.max(2))
    }

    /// Mean, standard deviation (n − 1) and count of bucket `i`; None with fewer than two
    /// values.
    pub fn stats(&self, i: u32) -> Option<(f64, f64, u32)> {
        let b = self.buckets.get(i as usize)?;
        (b.n >= 2).then(|| (b.mean, (b.m2 / f64::from(b.n - 1)).max(0.0).sqrt(), b.n))
    }

    /// Folds `x` into bucket `i`, remembering about `memory` values; returns the bucket the
    /// series just left (its statistics are final until the next season), if it moved.
    pub fn push(&mut self, i: u32, x: f64, memory: u32) -> Option<u32> {
        let entered = self.current != Some(i);
        let b = self.buckets.get_mut(i as usize)?;
        if entered {
            b.visits = (b.visits + 1).min(MAX_VISITS);
        }
        let memory = memory.max(2);
        if b.n >= memory {
            let keep = f64::from(b.n - 1) / f64::from(b.n);
            b.m2 *= keep;
            b.n -= 1;
        }
        b.n += 1;
        let d = x - b.mean;
        b.mean += d / f64::from(b.n);
        b.m2 += d * (x - b.mean);
        if !b.mean.is_finite() || !b.m2.is_finite() {
            // An overflow poisons only this bucket, and only until it is rebuilt.
            *b = Bucket {
                visits: b.visits,
                ..Bucket::default()
            };
        }
        let left = self.current.filter(|c| *c != i);
        self.current = Some(i);
        left
    }

    /// Bucket `i` as persisted.
    pub fn encode(&self, i: u32) -> Option<[u8; BUCKET_BYTES]> {
        let b = self.buckets.get(i as usize)?;
        let mut out = [0u8; BUCKET_BYTES];
        out[..8].copy_from_slice(&b.mean.to_le_bytes());
        out[8..16].copy_from_slice(&b.m2.to_le_bytes());
        let word = b.n.min((1 << COUNT_BITS) - 1) | (u32::from(b.visits) << COUNT_BITS);
        out[16..].copy_from_slice(&word.to_le_bytes());
        Some(out)
    }

    /// Restores bucket `i` from its persisted bytes; false when they do not fit (another
    /// bucket count, a torn value).
    pub fn restore(&mut self, i: u32, bytes: &[u8]) -> bool {
        let (Some(b), Ok(raw)) = (
            self.buckets.get_mut(i as usize),
            <[u8; BUCKET_BYTES]>::try_from(bytes),
        ) else {
            return false;
        };
        let f = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&raw[r]);
            f64::from_le_bytes(a)
        };
        // (profiles written before visits were counted read as never visited: they are
        // judged again from their second visit on)
        let word = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
        let restored = Bucket {
            mean: f(0..8),
            m2: f(8..16),
            n: word & ((1 << COUNT_BITS) - 1),
            visits: (word >> COUNT_BITS) as u16,
        };
        if !restored.mean.is_finite() || !restored.m2.is_finite() || restored.m2 < 0.0 {
            return false;
        }
        *b = restored;
        true
    }

    /// Number of buckets with at least one value.
    pub fn filled(&self) -> usize {
        self.buckets.iter().filter(|b| b.n > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn buckets_align_on_the_epoch() {
        let p = Seasonal::new(288);
        let day = Season::utc(DAY);
        assert_eq!(p.bucket_of(&day, 0), 0);
        assert_eq!(p.bucket_of(&day, 5 * 60_000 - 1), 0);
        assert_eq!(p.bucket_of(&day, 5 * 60_000), 1);
        assert_eq!(p.bucket_of(&day, DAY - 1), 287);
        assert_eq!(p.bucket_of(&day, 3 * DAY + 9 * 3_600_000), 108);
        assert_eq!(p.bucket_of(&day, -1), 287);
    }

    #[test]
    fn a_bucket_is_welford_then_forgets_slowly() {
        let mut p = Seasonal::new(4);
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            p.push(1, x, 100);
        }
        let (mean, std, n) = p.stats(1).unwrap();
        assert_eq!((mean, n), (5.0, 8));
        assert!((std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        // With a memory of 10, a new level takes over the mean within a few tens of values.
        let mut p = Seasonal::new(1);
        for _ in 0..100 {
            p.push(0, 10.0, 10);
        }
        for _ in 0..40 {
            p.push(0, 20.0, 10);
        }
        let (mean, _, n) = p.stats(0).unwrap();
        assert_eq!(n, 10);
        assert!((mean - 20.0).abs() < 0.2, "{mean}");
    }

    #[test]
    fn push_reports_the_bucket_left_and_buckets_round_trip() {
        let mut p = Seasonal::new(4);
        assert_eq!(p.push(0, 1.0, 10), None);
        assert_eq!(p.push(0, 2.0, 10), None);
        assert_eq!(p.push(1, 3.0, 10), Some(0));
        let bytes = p.encode(0).unwrap();
        let mut q = Seasonal::new(4);
        assert!(q.restore(0, &bytes));
        assert_eq!(q.stats(0), p.stats(0));
        assert!(!q.restore(9, &bytes));
        assert!(!q.restore(0, &bytes[..10]));
        assert_eq!(q.filled(), 1);
    }

    #[test]
    fn a_bucket_judges_from_its_second_season() {
        let mut p = Seasonal::new(2);
        for x in 0..50 {
            p.push(0, f64::from(x), 100);
        }
        assert!(!p.seasoned(0, 10), "50 values of one visit");
        p.push(1, 1.0, 100);
        p.push(0, 1.0, 100);
        assert!(p.seasoned(0, 10));
        assert!(!p.seasoned(0, 60), "and min_samples values");
        // Visits survive the store.
        let mut q = Seasonal::new(2);
        assert!(q.restore(0, &p.encode(0).unwrap()));
        assert!(q.seasoned(0, 10));
        assert_eq!(q.stats(0), p.stats(0));
    }
}
