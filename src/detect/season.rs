//! Where a sample falls in its season: local time in a time zone (daylight saving included),
//! days starting at local midnight and weeks on Monday 00:00, as a person reading the buckets
//! expects. The zone is a table of offsets built once at load (`config`), so finding a
//! sample's place is a binary search and an addition, with no clock and no database here.

use std::fmt;
use std::sync::Arc;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-05, the first Monday after the epoch (a Thursday).
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

/// A time zone as its offsets from UTC: from each instant on (UTC ms), the offset (ms).
#[derive(Clone, PartialEq)]
pub struct Zone {
    name: String,
    /// Sorted by instant; the first starts at `i64::MIN`.
    offsets: Box<[(i64, i64)]>,
}

impl Zone {
    /// A zone named `name` whose offset is `first_ms` until the first of `changes`, then
    /// `changes[i].1` from instant `changes[i].0` on.
    pub fn new(name: &str, first_ms: i64, mut changes: Vec<(i64, i64)>) -> Self {
        changes.sort_by_key(|c| c.0);
        changes.insert(0, (i64::MIN, first_ms));
        changes.dedup_by(|b, a| a.1 == b.1); // (a run of one offset is one entry)
        Self {
            name: name.to_string(),
            offsets: changes.into_boxed_slice(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offset from UTC at `ts_ms`, in ms.
    #[inline]
    pub fn offset_ms(&self, ts_ms: i64) -> i64 {
        let i = self.offsets.partition_point(|c| c.0 <= ts_ms);
        self.offsets[i.saturating_sub(1)].1
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A season's length, its zone and where its first bucket starts.
#[derive(Clone, PartialEq)]
pub struct Season {
    ms: i64,
    /// Local time (ms since the epoch, as if local time were UTC) of a start of the season.
    anchor_ms: i64,
    /// None: UTC.
    zone: Option<Arc<Zone>>,
}

impl Season {
    /// A season of `ms` in `zone` (None: UTC). A season of whole weeks starts on Monday
    /// 00:00; any other on midnight of the epoch's day, local time (a day at midnight).
    pub fn new(ms: i64, zone: Option<Zone>) -> Self {
        let ms = ms.max(1);
        Self {
            ms,
            anchor_ms: if ms % WEEK_MS == 0 {
                FIRST_MONDAY_MS
            } else {
                0
            },
            zone: zone.map(Arc::new),
        }
    }

    /// A season of `ms` in UTC.
    pub fn utc(ms: i64) -> Self {
        Self::new(ms, None)
    }

    pub fn ms(&self) -> i64 {
        self.ms
    }

    /// The zone's name (None for UTC).
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref().map(Zone::name)
    }

    /// Whether buckets are where every version before time zones put them (UTC, aligned on
    /// the epoch): stored profiles of such a season stay valid.
    pub fn epoch_aligned(&self) -> bool {
        self.zone.is_none() && self.anchor_ms == 0
    }

    /// How far into its season `ts_ms` is, in ms of local time: [0, ms).
    #[inline]
    pub fn position(&self, ts_ms: i64) -> i64 {
        let local = match &self.zone {
            Some(z) => ts_ms.saturating_add(z.offset_ms(ts_ms)),
            None => ts_ms,
        };
        local.saturating_sub(self.anchor_ms).rem_euclid(self.ms)
    }
}

impl fmt::Debug for Season {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.ms)?;
        if self.anchor_ms != 0 {
            write!(f, "+{}ms", self.anchor_ms)?;
        }
        match &self.zone {
            Some(z) => write!(f, "@{}", z.name),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Berlin around 2024: CET (+1 h), CEST (+2 h) from 2024-03-31 01:00 UTC, CET again from
    /// 2024-10-27 01:00 UTC.
    fn berlin() -> Zone {
        let spring = 1_711_846_800_000;
        let autumn = 1_729_990_800_000;
        Zone::new(
            "Europe/Berlin",
            HOUR,
            vec![(spring, 2 * HOUR), (autumn, HOUR)],
        )
    }

    #[test]
    fn local_days_follow_daylight_saving() {
        let day = Season::new(DAY_MS, Some(berlin()));
        // 2024-01-15 23:30 UTC is 00:30 in Berlin: half an hour into the local day.
        let jan = 1_705_361_400_000;
        assert_eq!(day.position(jan), HOUR / 2);
        // 2024-07-15 22:30 UTC is 00:30 CEST.
        let jul = 1_721_082_600_000;
        assert_eq!(day.position(jul), HOUR / 2);
        // The spring change: 00:59:59 UTC is 01:59:59 local, the next second 03:00:00.
        let spring = 1_711_846_800_000;
        assert_eq!(day.position(spring - 1000), 2 * HOUR - 1000);
        assert_eq!(day.position(spring), 3 * HOUR);
        // UTC days start an hour (winter) or two (summer) later than Berlin's.
        assert_eq!(Season::utc(DAY_MS).position(jan), 23 * HOUR + HOUR / 2);
    }

    #[test]
    fn weeks_start_on_monday_midnight() {
        let week = Season::utc(WEEK_MS);
        // 1970-01-01 was a Thursday: three days and a bit into its week.
        assert_eq!(week.position(0), 3 * DAY_MS);
        // 2024-01-15 was a Monday.
        let monday = 1_705_276_800_000;
        assert_eq!(week.position(monday), 0);
        assert_eq!(week.position(monday - 1), WEEK_MS - 1);
        // In Berlin the week starts at Sunday 23:00 UTC.
        let local = Season::new(WEEK_MS, Some(berlin()));
        assert_eq!(local.position(monday - HOUR), 0);
        assert!(!local.epoch_aligned() && !week.epoch_aligned());
        assert!(Season::utc(DAY_MS).epoch_aligned());
    }

    #[test]
    fn a_zone_is_a_sorted_table_and_debug_names_it() {
        let z = Zone::new("X", 1, vec![(100, 3), (0, 1), (50, 1)]);
        assert_eq!(z.offset_ms(i64::MIN), 1);
        assert_eq!(z.offset_ms(99), 1);
        assert_eq!(z.offset_ms(100), 3);
        assert_eq!(z.offsets.len(), 2);
        assert_eq!(Zone::new("Y", 7, vec![]).offset_ms(0), 7);
        let s = Season::new(WEEK_MS, Some(berlin()));
        assert_eq!(format!("{s:?}"), "604800000ms+345600000ms@Europe/Berlin");
        assert_eq!(format!("{:?}", Season::utc(DAY_MS)), "86400000ms");
    }
}
