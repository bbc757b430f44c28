//! Recorded history for a backtest: `timestamp,value` CSV files, each one series named after
//! the file, with every bad row reported by file and line.

use super::BacktestError;
use std::path::Path;

/// One recorded series.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Names its output files: the CSV file's stem.
    pub name: String,
    /// The series' metric name (the stem with characters outside [a-zA-Z0-9_] as `_`).
    pub metric: String,
    pub labels: Vec<(String, String)>,
    /// The series' target (a rule's `source` glob is matched against it).
    pub target: String,
    pub rows: Vec<Row>,
    /// The first line whose timestamp is before the previous row's, if any.
    pub backwards: Option<usize>,
}

/// One sample, with its timestamp as the input wrote it (the output repeats it verbatim).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts_ms: i64,
    pub text: String,
    pub value: f64,
}

/// Reads a `timestamp,value` file (a header row first; the columns found by name, so more
/// columns may follow). Rows are replayed in file order: a timestamp before the previous
/// row's is a clock that went back (real recordings have them), counted, not refused.
pub fn read_csv(path: &Path) -> Result<Recorded, BacktestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| BacktestError::Read {
        file: file.clone(),
        source,
    })?;
    let bad = |line: usize, message: String| BacktestError::Csv {
        file: file.clone(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (_, header) = lines
        .next()
        .ok_or_else(|| bad(1, "empty file: expected a `timestamp,value` header".into()))?;
    let columns: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    let at = |name: &str| columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let (Some(ts_col), Some(value_col)) = (at("timestamp"), at("value")) else {
        return Err(bad(
            1,
            format!("header {header:?} lacks `timestamp` and `value` columns"),
        ));
    };
    let mut rows = Vec::new();
    let mut backwards = None;
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        let (Some(ts), Some(value)) = (fields.get(ts_col), fields.get(value_col)) else {
            return Err(bad(
                n,
                format!("expected {} columns, got {}", columns.len(), fields.len()),
            ));
        };
        let ts_ms = parse_timestamp(ts).ok_or_else(|| {
            bad(
                n,
                format!("bad timestamp {ts:?}: use RFC 3339 or YYYY-MM-DD HH:MM:SS"),
            )
        })?;
        let value = parse_value(value).ok_or_else(|| bad(n, format!("bad value {value:?}")))?;
        if rows.last().is_some_and(|r: &Row| ts_ms < r.ts_ms) {
            backwards.get_or_insert(n);
        }
        rows.push(Row {
            ts_ms,
            text: ts.to_string(),
            value,
        });
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    Ok(Recorded {
        metric: metric_name(&name),
        name,
        labels: Vec::new(),
        target: file,
        rows,
        backwards,
    })
}

/// The series of a range query as recorded series: each named after its metric and label
/// values (`node_load1_10_0_0_1_9100_node`, made unique with `-2`, `-3`…), its target the
/// `instance` label (else `source`, the Prometheus URL). Timestamps are written RFC 3339.
pub fn from_range(series: Vec<crate::promapi::RangeSeries>, source: &str) -> Vec<Recorded> {
    let mut taken = std::collections::HashSet::new();
    series
        .into_iter()
        .map(|s| {
            let mut labels = s.labels;
            let metric = labels.remove("__name__").unwrap_or_else(|| "query".into());
            let target = labels
                .get("instance")
                .cloned()
                .unwrap_or_else(|| source.to_string());
            let stem = std::iter::once(metric.as_str())
                .chain(labels.values().map(String::as_str))
                .collect::<Vec<_>>()
                .join("_");
            let base = metric_name(&stem);
            let mut name = base.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{base}-{n}");
            }
            let rows = s
                .samples
                .into_iter()
                .map(|(ts_ms, value)| Row {
                    ts_ms,
                    text: rfc3339_ms(ts_ms),
                    value,
                })
                .collect();
            Recorded {
                name,
                metric: metric_name(&metric),
                labels: labels.into_iter().collect(),
                target,
                rows,
                backwards: None,
            }
        })
        .collect()
}

/// RFC 3339 in UTC, with milliseconds only when there are some.
fn rfc3339_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// A metric name from a file stem: characters outside `[a-zA-Z0-9_]` become `_`.
pub fn metric_name(stem: &str) -> String {
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A number as Prometheus writes one (`NaN`, `+Inf` included); empty is a gap (NaN).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]` (no zone:
/// UTC, as NAB's files are), or of a Unix time in seconds.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return (secs.is_finite() && secs.abs() < 1e14).then(|| (secs * 1000.0).round() as i64);
    }
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=days_in(year, month)).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + ms)
}

fn days_in(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp("2014-04-10 07:15:00"),
            Some(1_397_114_100_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-10T07:15:00Z"),
            Some(1_397_114_100_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-10T09:15:00+02:00"),
            Some(1_397_114_100_000)
        );
        assert_eq!(
            parse_timestamp("2014-04-10T07:15:00.25Z"),
            Some(1_397_114_100_250)
        );
        assert_eq!(
            parse_timestamp("2000-02-29 12:00:00"),
            Some(951_825_600_000)
        );
        assert_eq!(parse_timestamp("1397114100"), Some(1_397_114_100_000));
        for bad in [
            "2014-02-30 00:00:00",
            "2014-04-10",
            "yesterday",
            "2014-04-10 25:00:00",
            "2014-04-10T07:15:00+2",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn metric_names() {
        assert_eq!(
            metric_name("exchange-2_cpc_results"),
            "exchange_2_cpc_results"
        );
        assert_eq!(metric_name("nyc taxi.v2"), "nyc_taxi_v2");
    }
}
