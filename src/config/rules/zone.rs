//! `timezone:` of a seasonal rule: an IANA name (the database is bundled) turned into the
//! table of offsets `detect::Zone` looks a sample's local time up in.

use crate::detect::Zone;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Offsets are tabulated up to here (2100-01-01 UTC); later samples keep the last offset.
const UNTIL_S: i64 = 4_102_444_800;

/// The zone named `name` (as `Europe/Berlin`, `UTC`), or why there is none.
pub(super) fn zone(name: &str) -> Result<Zone, String> {
    let tz = jiff::tz::db().get(name).map_err(|_| {
        format!("unknown timezone {name:?}: use an IANA name such as Europe/Berlin or UTC")
    })?;
    Ok(table(name, &tz))
}

fn table(name: &str, tz: &TimeZone) -> Zone {
    let ms = |offset: jiff::tz::Offset| i64::from(offset.seconds()) * 1000;
    let changes = tz
        .following(Timestamp::UNIX_EPOCH)
        .take_while(|t| t.timestamp().as_second() < UNTIL_S)
        .map(|t| (t.timestamp().as_millisecond(), ms(t.offset())))
        .collect();
    Zone::new(name, ms(tz.to_offset(Timestamp::UNIX_EPOCH)), changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berlin_has_its_daylight_saving_changes() {
        let z = zone("Europe/Berlin").unwrap();
        const H: i64 = 3_600_000;
        // 2024-03-31 01:00 UTC: CET to CEST; 2024-10-27 01:00 UTC: back.
        assert_eq!(z.offset_ms(1_711_846_800_000 - 1), H);
        assert_eq!(z.offset_ms(1_711_846_800_000), 2 * H);
        assert_eq!(z.offset_ms(1_729_990_800_000 - 1), 2 * H);
        assert_eq!(z.offset_ms(1_729_990_800_000), H);
        assert_eq!(zone("UTC").unwrap().offset_ms(1_711_846_800_000), 0);
        let err = zone("Mars/Olympus").unwrap_err();
        assert!(err.contains("unknown timezone \"Mars/Olympus\""), "{err}");
    }
}
