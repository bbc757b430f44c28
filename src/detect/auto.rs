//! `season: auto`: the series' own history says whether it has a daily or a weekly rhythm.
//! Hourly means of the last three weeks are kept; when an hour ends, the autocorrelation of
//! their first differences at lags 24 h and 168 h decides. Differences, because a trend or a
//! slow wander makes neighbouring hours alike at every lag (a raw autocorrelation calls a
//! random walk daily); a rhythm survives differencing, noise and drifts do not. Both a daily
//! and a weekly profile learn all along, so the one chosen judges at once.

use super::season::Season;
use super::seasonal::{Seasonal, BUCKET_BYTES};

const HOUR_MS: i64 = 3_600_000;
const DAY_H: usize = 24;
const WEEK_H: usize = 168;
/// Hours remembered: three weeks, so a weekly lag has two weeks of pairs.
const HOURS: usize = 3 * WEEK_H;
/// A lag is a rhythm when the differences' autocorrelation there is at least this: about
/// 3.5 standard errors over the two days of pairs a daily lag needs (1 / √48 ≈ 0.14), so
/// noise does not pass by chance, while a daily sine under noise of its own size scores
/// about 0.9.
pub const MIN_ACF: f64 = 0.5;
/// A weekly rhythm is chosen over a daily one only when it explains clearly more: weekdays
/// and weekends differ. A daily rhythm alone has the same autocorrelation at both lags,
/// and its daily profile learns seven times faster.
const WEEKLY_MARGIN: f64 = 0.1;
/// Stored records of the hourly means are numbered from here (profile buckets are below).
pub const HOURS_BASE: u32 = 1 << 30;

/// The rhythm the history shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    #[default]
    None,
    Day,
    Week,
}

/// One hour's mean, and which hour it was (hours since the epoch; 0: never filled).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Hour {
    mean: f32,
    hour: i32,
}

/// The profiles and the hourly history of one series under a `season: auto` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoSeasonal {
    pub day: Seasonal,
    pub week: Seasonal,
    hours: Box<[Hour]>,
    /// The hour being summed: its number, sum and count.
    open: (i64, f64, u32),
    period: Period,
}

impl AutoSeasonal {
    /// `buckets` a day (the weekly profile has seven times as many).
    pub fn new(buckets: usize) -> Self {
        Self {
            day: Seasonal::new(buckets),
            week: Seasonal::new(buckets.max(1) * 7),
            hours: vec![Hour::default(); HOURS].into_boxed_slice(),
            open: (i64::MIN, 0.0, 0),
            period: Period::None,
        }
    }

    pub fn period(&self) -> Period {
        self.period
    }

    /// The profile judging now, with the sample's bucket in it.
    pub fn judging(&self, day: &Season, week: &Season, ts_ms: i64) -> Option<(&Seasonal, u32)> {
        match self.period {
            Period::None => None,
            Period::Day => Some((&self.day, self.day.bucket_of(day, ts_ms))),
            Period::Week => Some((&self.week, self.week.bucket_of(week, ts_ms))),
        }
    }

    /// Folds `x` at `ts_ms` into both profiles and the hourly history. Returns the records to
    /// persist: buckets left (the weekly profile's numbered after the daily's) and an hour
    /// that ended (`HOURS_BASE` + its slot).
    pub fn push(&mut self, day: &Season, week: &Season, ts: i64, x: f64, memory: u32) -> Finished {
        self.fold(day, week, ts, x, memory, true)
    }

    /// `push` for a sample kept out of the baseline (an incident): the profile judging does
    /// not learn it, the hourly history and the other profile do. While no rhythm is known
    /// the window judges, and an incident it sees (the first opening of office hours) must
    /// not hide the rhythm from the history that would find it.
    pub fn push_aside(
        &mut self,
        day: &Season,
        week: &Season,
        ts: i64,
        x: f64,
        memory: u32,
    ) -> Finished {
        self.fold(day, week, ts, x, memory, false)
    }

    fn fold(
        &mut self,
        day: &Season,
        week: &Season,
        ts_ms: i64,
        x: f64,
        memory: u32,
        judging_too: bool,
    ) -> Finished {
        let mut done = Finished::default();
        if judging_too || self.period != Period::Day {
            let i = self.day.bucket_of(day, ts_ms);
            if let Some(left) = self.day.push(i, x, memory) {
                done.add(left);
            }
        }
        if judging_too || self.period != Period::Week {
            let offset = self.day.buckets() as u32;
            let i = self.week.bucket_of(week, ts_ms);
            if let Some(left) = self.week.push(i, x, memory) {
                done.add(offset + left);
            }
        }
        let hour = ts_ms.div_euclid(HOUR_MS);
        if hour != self.open.0 {
            if let Some(slot) = self.close_hour() {
                done.add(HOURS_BASE + slot as u32);
                self.period = self.choose();
            }
            self.open = (hour, 0.0, 0);
        }
        self.open.1 += x;
        self.open.2 += 1;
        done
    }

    /// Ends the open hour: its mean into its slot; returns the slot.
    fn close_hour(&mut self) -> Option<usize> {
        let (hour, sum, n) = self.open;
        let h = i32::try_from(hour).ok().filter(|h| *h > 0 && n > 0)?;
        let mean = (sum / f64::from(n)) as f32;
        if !mean.is_finite() {
            return None;
        }
        let slot = h as usize % HOURS;
        self.hours[slot] = Hour { mean, hour: h };
        Some(slot)
    }

    /// The rhythm the last three weeks of hourly means show.
    fn choose(&self) -> Period {
        let Some(latest) = self.hours.iter().map(|h| h.hour).max().filter(|h| *h > 0) else {
            return Period::None;
        };
        // Oldest first; None for an hour with no samples.
        let series: Vec<Option<f64>> = (0..HOURS as i32)
            .rev()
            .map(|back| {
                let want = latest - back;
                let h = self.hours[want.rem_euclid(HOURS as i32) as usize];
                (h.hour == want).then_some(f64::from(h.mean))
            })
            .collect();
        let diffs: Vec<Option<f64>> = series.windows(2).map(|w| Some(w[1]? - w[0]?)).collect();
        // Two days of pairs for a daily lag (three days of history), a week of pairs for a
        // weekly one (two weeks and an hour).
        let daily = acf(&diffs, DAY_H, 2 * DAY_H);
        let weekly = acf(&diffs, WEEK_H, WEEK_H);
        choose(daily, weekly)
    }

    /// Bucket or hour record `i` as persisted.
    pub fn encode(&self, i: u32) -> Option<[u8; BUCKET_BYTES]> {
        if i >= HOURS_BASE {
            let h = self.hours.get((i - HOURS_BASE) as usize)?;
            let mut out = [0u8; BUCKET_BYTES];
            out[..4].copy_from_slice(&h.mean.to_le_bytes());
            out[4..8].copy_from_slice(&h.hour.to_le_bytes());
            return Some(out);
        }
        let days = self.day.buckets() as u32;
        match i.checked_sub(days) {
            None => self.day.encode(i),
            Some(w) => self.week.encode(w),
        }
    }

    /// Restores record `i`; false when it does not fit. Call `settle` once all are back.
    pub fn restore(&mut self, i: u32, bytes: &[u8]) -> bool {
        if i >= HOURS_BASE {
            let (Some(slot), Ok(raw)) = (
                self.hours.get_mut((i - HOURS_BASE) as usize),
                <[u8; BUCKET_BYTES]>::try_from(bytes),
            ) else {
                return false;
            };
            let mean = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let hour = i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            if !mean.is_finite() || hour <= 0 || hour as usize % HOURS != (i - HOURS_BASE) as usize
            {
                return false;
            }
            *slot = Hour { mean, hour };
            return true;
        }
        let days = self.day.buckets() as u32;
        match i.checked_sub(days) {
            None => self.day.restore(i, bytes),
            Some(w) => self.week.restore(w, bytes),
        }
    }

    /// The rhythm chosen again from restored hours.
    pub fn settle(&mut self) {
        self.period = self.choose();
    }
}

/// The rhythm from the autocorrelations at a day and a week (None: too little history).
pub fn choose(daily: Option<f64>, weekly: Option<f64>) -> Period {
    match (daily, weekly) {
        (d, Some(w)) if w >= MIN_ACF && w >= d.unwrap_or(0.0) + WEEKLY_MARGIN => Period::Week,
        (Some(d), _) if d >= MIN_ACF => Period::Day,
        _ => Period::None,
    }
}

/// The autocorrelation of `xs` at `lag` over the pairs where both ends are known, None with
/// fewer than `min_pairs` of them or no spread.
pub fn acf(xs: &[Option<f64>], lag: usize, min_pairs: usize) -> Option<f64> {
    let known: Vec<f64> = xs.iter().flatten().copied().collect();
    if known.len() < 2 || xs.len() <= lag {
        return None;
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    let var = known.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / known.len() as f64;
    let (mut sum, mut pairs) = (0.0, 0usize);
    for (a, b) in xs.iter().zip(&xs[lag..]) {
        if let (Some(a), Some(b)) = (a, b) {
            sum += (a - mean) * (b - mean);
            pairs += 1;
        }
    }
    (pairs >= min_pairs && var > 0.0).then(|| sum / pairs as f64 / var)
}

/// Records to persist after one sample (at most a day bucket, a week bucket and an hour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    ids: [u32; 3],
    len: u8,
}

impl Finished {
    pub fn one(id: Option<u32>) -> Self {
        let mut f = Self::default();
        if let Some(id) = id {
            f.add(id);
        }
        f
    }

    fn add(&mut self, id: u32) {
        if let Some(slot) = self.ids.get_mut(self.len as usize) {
            *slot = id;
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids[..self.len as usize].iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;
    /// 2024-01-15, a Monday.
    const T0: i64 = 1_705_276_800_000;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// Feeds `days` of 5-minute samples of `f(t)` and returns the period after each day.
    fn feed(days: i64, f: impl Fn(i64, f64) -> f64) -> Vec<Period> {
        let (day, week) = (Season::utc(DAY_MS), Season::utc(7 * DAY_MS));
        let mut a = AutoSeasonal::new(24);
        let mut seed = 7;
        let mut out = Vec::new();
        for d in 0..days {
            for k in 0..288 {
                let t = T0 + d * DAY_MS + k * 300_000;
                a.push(&day, &week, t, f(t, lcg(&mut seed)), 288);
            }
            out.push(a.period());
        }
        out
    }

    fn hour_of_day(t: i64) -> f64 {
        (t.rem_euclid(DAY_MS) as f64) / 3_600_000.0
    }

    #[test]
    fn a_daily_rhythm_is_found_from_the_fourth_day() {
        let p = feed(10, |t, e| {
            100.0 + 50.0 * (hour_of_day(t) / 24.0 * std::f64::consts::TAU).sin() + 20.0 * e
        });
        assert_eq!(p[1], Period::None, "two days are too few: {p:?}");
        assert_eq!(p[3..], [Period::Day; 7], "{p:?}");
    }

    #[test]
    fn quiet_weekends_make_a_weekly_rhythm() {
        let p = feed(21, |t, e| {
            let weekday = (t - T0).rem_euclid(7 * DAY_MS) < 5 * DAY_MS;
            let busy = weekday && (9.0..17.0).contains(&hour_of_day(t));
            (if busy { 100.0 } else { 10.0 }) + 5.0 * e
        });
        assert_eq!(p[14..], [Period::Week; 7], "{p:?}");
    }

    #[test]
    fn noise_and_a_random_walk_have_no_rhythm() {
        let white = feed(21, |_, e| 50.0 + 10.0 * e);
        assert!(white.iter().all(|p| *p == Period::None), "{white:?}");
        let walk = std::cell::Cell::new(0.0);
        let walked = feed(21, |_, e| {
            walk.set(walk.get() + e);
            walk.get()
        });
        assert!(walked.iter().all(|p| *p == Period::None), "{walked:?}");
        // An AR(1) at φ 0.99 a sample: hours alike at short lags, never at a day.
        let ar = std::cell::Cell::new(0.0);
        let ar1 = feed(21, |_, e| {
            ar.set(0.99 * ar.get() + e);
            ar.get()
        });
        assert!(ar1.iter().all(|p| *p == Period::None), "{ar1:?}");
    }

    #[test]
    fn hours_and_profiles_round_trip_and_the_rhythm_with_them() {
        let (day, week) = (Season::utc(DAY_MS), Season::utc(7 * DAY_MS));
        let mut a = AutoSeasonal::new(24);
        let mut records = std::collections::BTreeSet::new();
        for k in 0..(5 * 288) {
            let t = T0 + k * 300_000;
            let x = if hour_of_day(t) < 12.0 { 1.0 } else { 9.0 };
            records.extend(a.push(&day, &week, t, x, 288).iter());
        }
        assert_eq!(a.period(), Period::Day);
        let mut b = AutoSeasonal::new(24);
        for i in &records {
            assert!(b.restore(*i, &a.encode(*i).unwrap()), "record {i}");
        }
        b.settle();
        assert_eq!(b.period(), Period::Day);
        for i in 0..24 {
            assert_eq!(b.day.stats(i), a.day.stats(i));
            assert_eq!(b.week.stats(i), a.week.stats(i));
        }
        assert!(
            !b.restore(HOURS_BASE + 1, &a.encode(HOURS_BASE + 2).unwrap()),
            "slot mismatch"
        );
        assert!(!b.restore(HOURS_BASE + 1, &[0; 3]));
    }

    #[test]
    fn worked_autocorrelation() {
        // A period-2 alternation: −1 at lag 1, +1 at lag 2.
        let xs: Vec<Option<f64>> = (0..10)
            .map(|i| Some(if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        assert!((acf(&xs, 1, 1).unwrap() + 1.0).abs() < 1e-12);
        assert!((acf(&xs, 2, 1).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(acf(&xs, 2, 9), None, "too few pairs");
        assert_eq!(
            choose(Some(0.9), Some(0.95)),
            Period::Day,
            "a day explains as much"
        );
        assert_eq!(choose(Some(0.3), Some(0.8)), Period::Week);
        assert_eq!(choose(Some(0.2), None), Period::None);
    }
}
