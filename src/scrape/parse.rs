//! Prometheus text exposition format (0.0.4, and the OpenMetrics text subset exporters send)
//! → samples with their family's type.
//!
//! Our own parser, not prometheus-parse 0.2.5, chosen deliberately: measured here, that crate
//! drops metric names containing `:` (recording-rule style names), cuts label values at `,` or
//! `=` (`path="/a,b"` becomes `/a`), leaves `\"` escaped, reports a `foo_total` sample under
//! `# TYPE foo counter` as untyped, and skips malformed lines silently. A scrape that half-parses
//! feeds detectors wrong data, so here a malformed line fails the whole scrape with its line
//! number. The format is a simple line grammar; this parser is a single pass over the bytes with
//! no regex, tested against captured text (and a target of the fuzzing issue).

use std::borrow::Cow;
use std::collections::HashMap;

/// The TYPE of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Sorted by label name, no duplicates.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Explicit timestamp in milliseconds, when the exporter gave one.
    pub timestamp_ms: Option<i64>,
    /// True for series that only go up (counters, histogram buckets, sums and counts).
    pub counter_like: bool,
}

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a whole exposition body. Any malformed line fails it.
#[cfg(test)]
pub fn parse(body: &str) -> Result<Vec<Sample>, ParseError> {
    samples(body).collect()
}

/// Checks a whole body without keeping its samples: the number of samples, or the first
/// malformed line. A scrape is validated this way first so that a bad line fails it before
/// any of its samples is applied, without holding every sample in memory at once.
pub fn validate(body: &str) -> Result<usize, ParseError> {
    // The same walk as `samples`, with labels borrowed from the body into one reused buffer:
    // a validation pass allocates nothing per sample.
    let mut walk = samples(body);
    let mut labels = Vec::new();
    let mut n = 0;
    while let Some(next) = walk.next_line() {
        let (i, line) = next?;
        labels.clear();
        parse_line(line, &mut labels).map_err(|message| ParseError { line: i, message })?;
        n += 1;
    }
    Ok(n)
}

/// The samples of a body, one line at a time.
pub fn samples(body: &str) -> Samples<'_> {
    Samples {
        lines: Lines {
            body,
            at: 0,
            number: 0,
        },
        types: HashMap::new(),
        types_hash: 0,
        done: false,
    }
}

/// `str::lines` with their numbers (from 0), found by the `memchr` crate's vector search
/// (the line walk was a tenth of a steady-state scrape with core's byte-wise one).
struct Lines<'a> {
    body: &'a str,
    at: usize,
    number: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.body.get(self.at..).filter(|r| !r.is_empty())?;
        let line = match memchr::memchr(b'\n', rest.as_bytes()) {
            Some(end) => {
                self.at += end + 1;
                let line = &rest[..end];
                line.strip_suffix('\r').unwrap_or(line)
            }
            None => {
                self.at = self.body.len();
                rest
            }
        };
        self.number += 1;
        Some((self.number - 1, line))
    }
}

/// Lazy sample iterator; stops after the first error or `# EOF`.
pub struct Samples<'a> {
    lines: Lines<'a>,
    types: HashMap<String, MetricType>,
    /// Hash of the TYPE lines walked so far, in order (see `types_fingerprint`).
    types_hash: u64,
    done: bool,
}

impl Iterator for Samples<'_> {
    type Item = Result<Sample, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (i, line) = match self.next_line()? {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        Some(match parse_sample(line) {
            Ok(mut s) => {
                s.counter_like = counter_like(&self.types, &s.name);
                Ok(s)
            }
            Err(message) => {
                self.done = true;
                Err(ParseError { line: i, message })
            }
        })
    }
}

impl<'a> Samples<'a> {
    /// Whether a sample of `name` is monotonic, by the TYPE lines walked so far.
    pub fn counter_like(&self, name: &str) -> bool {
        counter_like(&self.types, name)
    }

    /// A hash of the TYPE lines walked so far: equal across two bodies when they declared the
    /// same types in the same order, so series resolved by their text keep their kind.
    pub fn types_fingerprint(&self) -> u64 {
        self.types_hash
    }

    /// The next sample line and its number, after blank lines and comments (TYPE recorded);
    /// None at the end or `# EOF`, an error for a bad comment line.
    pub fn next_line(&mut self) -> Option<Result<(usize, &'a str), ParseError>> {
        if self.done {
            return None;
        }
        for (i, raw) in self.lines.by_ref() {
            let line = trim_blank_start(raw);
            // Only a line that starts with neither a name nor `#` can be blank (`trim` decodes
            // Unicode whitespace: not worth it on every sample line).
            let starts_plainly = line
                .as_bytes()
                .first()
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'#');
            if !starts_plainly && line.trim().is_empty() {
                continue;
            }
            let Some(comment) = line.strip_prefix('#') else {
                return Some(Ok((i + 1, line)));
            };
            if comment.trim_start().starts_with("TYPE") {
                self.types_hash = (self.types_hash.rotate_left(5) ^ text_hash(comment))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            match comment_line(comment, &mut self.types) {
                Ok(true) => {}
                Ok(false) => break, // # EOF
                Err(message) => {
                    self.done = true;
                    return Some(Err(ParseError {
                        line: i + 1,
                        message,
                    }));
                }
            }
        }
        self.done = true;
        None
    }
}

/// Handles a `#` line: records TYPE, ignores HELP/UNIT/comments. Ok(false) on `# EOF`.
fn comment_line(comment: &str, types: &mut HashMap<String, MetricType>) -> Result<bool, String> {
    let mut words = comment.trim_start().splitn(3, [' ', '\t']);
    match words.next() {
        Some("TYPE") => {
            let name = words.next().unwrap_or("");
            if !valid_metric_name(name) {
                return Err(format!("bad metric name {name:?} in TYPE"));
            }
            let t = match words.next().map(str::trim) {
                Some("counter") => MetricType::Counter,
                Some("gauge") => MetricType::Gauge,
                Some("histogram") | Some("gaugehistogram") => MetricType::Histogram,
                Some("summary") => MetricType::Summary,
                Some("untyped") | Some("unknown") | Some("info") | Some("stateset") => {
                    MetricType::Untyped
                }
                other => return Err(format!("unknown TYPE {other:?}")),
            };
            types.insert(name.to_string(), t);
            Ok(true)
        }
        Some("EOF") => Ok(false),
        // HELP, UNIT and free comments carry nothing a detector needs.
        _ => Ok(true),
    }
}

/// Whether a sample name belongs to a monotonic series of its family.
fn counter_like(types: &HashMap<String, MetricType>, name: &str) -> bool {
    if let Some(t) = types.get(name) {
        return *t == MetricType::Counter;
    }
    let family = |suffix: &str| {
        name.strip_suffix(suffix)
            .and_then(|f| types.get(f).copied())
    };
    matches!(family("_total"), Some(MetricType::Counter))
        || matches!(family("_bucket"), Some(MetricType::Histogram))
        || matches!(
            family("_count").or_else(|| family("_sum")),
            Some(MetricType::Histogram | MetricType::Summary)
        )
}

fn valid_metric_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// A parsed line: name, value, timestamp; its labels go into the caller's buffer, sorted.
type Line<'a> = (&'a str, f64, Option<i64>);

fn parse_sample(line: &str) -> Result<Sample, String> {
    parse_sample_line(line).map(|(s, _)| s)
}

/// Checks one sample line without keeping it (labels borrowed into `labels`, which is
/// cleared first) and returns its series text as written (name and label set).
pub fn check_sample_line<'a>(
    line: &'a str,
    labels: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, String> {
    labels.clear();
    parse_line(line, labels)?;
    Ok(series_text(line))
}

/// Parses one sample line (as `Samples::next_line` gives it) into an owned sample, and
/// returns the series text as written (name and label set) for `split_known`.
pub fn parse_sample_line(line: &str) -> Result<(Sample, &str), String> {
    let mut labels = Vec::new();
    let (name, value, timestamp_ms) = parse_line(line, &mut labels)?;
    let series = series_text(line);
    let sample = Sample {
        name: name.to_string(),
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect(),
        value,
        timestamp_ms,
        counter_like: false,
    };
    Ok((sample, series))
}

/// The name and label set of a line that `parse_line` accepted: up to the closing brace, or
/// the name when there are no labels.
fn series_text(line: &str) -> &str {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    if b.get(i) != Some(&b'{') {
        return &line[..i];
    }
    // Walk the quoted values so a `}` inside one does not end the set.
    let mut quoted = false;
    i += 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return &line[..=i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The value of a sample line whose series text `known` recognises, without parsing labels:
/// the steady-state path of a scrape, where every series was parsed and validated before.
/// The value (and timestamp, if any) are still checked; None sends the line to the full
/// parser (unknown series, exemplar, or anything malformed, which it then reports).
///
/// Tries `series value` first, then `series value timestamp`. A known series text ends with
/// its name or its closing brace and holds no whitespace outside the braces, so only the true
/// split of a well-formed line can be one (an exemplar's extra fields never split off cleanly).
pub fn split_known<T>(line: &str, known: impl Fn(u64, &str) -> Option<T>) -> Option<(T, f64)> {
    let line = trim_blank_end(line);
    let (head, last) = split_last_field(line)?;
    let head = trim_blank_end(head);
    if let Some(t) = known(text_hash(head), head) {
        return Some((t, parse_value(last)?));
    }
    let (series, value) = split_last_field(head)?;
    let series = trim_blank_end(series);
    let t = known(text_hash(series), series)?;
    parse_timestamp(last)?;
    Some((t, parse_value(value)?))
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// `s` without leading spaces and tabs.
fn trim_blank_start(s: &str) -> &str {
    let start = s.bytes().take_while(|&c| is_blank(c)).count();
    &s[start..]
}

/// `s` without trailing spaces and tabs (bytes: both are ASCII, so every cut is a char
/// boundary; `str::trim_end_matches` decodes chars).
fn trim_blank_end(s: &str) -> &str {
    let b = s.as_bytes();
    let mut end = b.len();
    while end > 0 && is_blank(b[end - 1]) {
        end -= 1;
    }
    &s[..end]
}

/// `s` split at its last space or tab: (before, after).
fn split_last_field(s: &str) -> Option<(&str, &str)> {
    let at = s.as_bytes().iter().rposition(|&c| is_blank(c))?;
    Some((&s[..at], &s[at + 1..]))
}

/// A 64-bit hash of text, eight bytes at a step (the raw series text of every sample line is
/// hashed on each scrape), finished with a full avalanche so the bits are uniform.
pub fn text_hash(s: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xc2b2_ae3d_27d4_eb4f;
    let word = |c: &[u8]| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
    let b = s.as_bytes();
    // Two lanes, 16 bytes a step: the multiplies of one lane do not wait for the other's.
    let (mut h, mut g) = (b.len() as u64, 0x27d4_eb2f_1656_67c5u64);
    let mut chunks = b.chunks_exact(16);
    for c in chunks.by_ref() {
        h = (h.rotate_left(5) ^ word(&c[..8])).wrapping_mul(K);
        g = (g.rotate_left(5) ^ word(&c[8..])).wrapping_mul(K2);
    }
    let mut tail = [0u8; 16];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h.rotate_left(5) ^ word(&tail[..8])).wrapping_mul(K);
    g = (g.rotate_left(5) ^ word(&tail[8..])).wrapping_mul(K2);
    h ^= g.rotate_left(31);
    // murmur3's fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn parse_line<'a>(
    line: &'a str,
    labels: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<Line<'a>, String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
    {
        i += 1;
    }
    let name = &line[..i];
    if !valid_metric_name(name) {
        return Err(format!("expected a metric name at {:?}", excerpt(line)));
    }
    if bytes.get(i) == Some(&b'{') {
        i = parse_labels(line, i + 1, labels)?;
    }
    let mut rest = &line[i..];
    // An OpenMetrics exemplar (`# {trace_id="…"} 1.0`) may follow; it is not ours to judge.
    // (A byte search: `str::find` of a pattern sets up a searcher per line.)
    let after = rest.as_bytes();
    let exemplar = memchr::memchr_iter(b'#', after)
        .find(|&at| at > 0 && after[at - 1] == b' ' && after.get(at + 1) == Some(&b' '));
    if let Some(hash) = exemplar {
        rest = &rest[..hash - 1];
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a space before the value in {:?}",
            excerpt(line)
        ));
    }
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields.next().ok_or("missing value")?;
    let value = parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?}"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(parse_timestamp(t).ok_or_else(|| format!("bad timestamp {t:?}"))?),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected text {extra:?} after the sample"));
    }
    labels.sort_by(|a, b| a.0.cmp(b.0));
    if labels.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(format!("duplicate label name in {:?}", excerpt(line)));
    }
    Ok((name, value, timestamp_ms))
}

/// Parses `name="value",...}` starting after `{`; returns the index after `}`.
fn parse_labels<'a>(
    line: &'a str,
    mut i: usize,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<usize, String> {
    let b = line.as_bytes();
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        match b.get(i) {
            Some(b'}') => return Ok(i + 1),
            None => return Err("unterminated label set".into()),
            _ => {}
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let label = &line[start..i];
        if label.is_empty() || label.as_bytes()[0].is_ascii_digit() {
            return Err(format!("bad label name at {:?}", excerpt(&line[start..])));
        }
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(format!("expected = after label {label:?}"));
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if b.get(i) != Some(&b'"') {
            return Err(format!("expected a quoted value for label {label:?}"));
        }
        i += 1;
        // Borrowed unless an escape needs rewriting.
        let mut value: Cow<'a, str> = Cow::Borrowed("");
        let mut seg = i;
        loop {
            match b.get(i) {
                None => return Err(format!("unterminated value of label {label:?}")),
                Some(b'"') => {
                    match &mut value {
                        Cow::Borrowed(_) => value = Cow::Borrowed(&line[seg..i]),
                        Cow::Owned(v) => v.push_str(&line[seg..i]),
                    }
                    i += 1;
                    break;
                }
                Some(b'\\') => {
                    let v = value.to_mut();
                    v.push_str(&line[seg..i]);
                    match b.get(i + 1) {
                        Some(b'\\') => v.push('\\'),
                        Some(b'"') => v.push('"'),
                        Some(b'n') => v.push('\n'),
                        // Unknown escapes are kept as written, as Prometheus does.
                        Some(_) => v.push('\\'),
                        None => return Err(format!("unterminated value of label {label:?}")),
                    }
                    i += if matches!(b.get(i + 1), Some(b'\\' | b'"' | b'n')) {
                        2
                    } else {
                        1
                    };
                    seg = i;
                }
                Some(_) => i += 1,
            }
        }
        out.push((label, value));
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected , or }} after label {label:?}")),
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => {
            // Rust also accepts "infinity" spellings; the exposition format does not.
            if let Some(v) = simple_decimal(s) {
                return Some(v);
            }
            if s.bytes()
                .any(|c| c.is_ascii_alphabetic() && c != b'e' && c != b'E')
            {
                return None;
            }
            s.parse().ok()
        }
    }
}

/// Powers of ten that f64 holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The value of a plain decimal (`-12.345`, `7`: what exporters write nearly always) with at
/// most 15 digits, or None for anything else (left to `str::parse`). The digits as an integer
/// and the power of ten are both exact in f64, so one division is correctly rounded: the
/// same bits `str::parse` gives (checked by a property test), in a fraction of the time.
fn simple_decimal(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let (negative, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let (mut mantissa, mut count, mut point) = (0u64, 0usize, None);
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
            }
            b'.' if point.is_none() => point = Some(i),
            _ => return None,
        }
    }
    if count == 0 || count > 15 {
        return None;
    }
    let decimals = point.map_or(0, |p| digits.len() - 1 - p);
    let v = mantissa as f64 / EXACT_POWERS_OF_TEN[decimals];
    Some(if negative { -v } else { v })
}

fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    // OpenMetrics timestamps are seconds with a fraction.
    let secs: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
    Some((secs * 1000.0) as i64)
}

fn excerpt(s: &str) -> &str {
    let end = s.char_indices().nth(60).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

#[cfg(test)]
mod tests;
