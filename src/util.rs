//! Small helpers several stages share, in one place: the wall clock in milliseconds,
//! timestamps as RFC 3339, floats for JSON and for people, a label pair as Prometheus
//! writes it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// JSON has no NaN or infinity.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Short human form of a value: up to 4 significant decimals, no trailing zeros.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = if v.abs() >= 1e-3 || v == 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v:.4e}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Query parameters whose value is a credential when their name holds one of these.
const SECRET_PARAMS: [&str; 5] = ["token", "key", "secret", "password", "auth"];

/// A URL fit for logs and errors: its userinfo and the values of query parameters named like
/// credentials (`token`, `api_key`, `secret`, `password`, `auth…`) are replaced by `xxxxx`,
/// as Prometheus shows a URL with a password. Text that is not a URL is cut to its scheme
/// and host.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(text) else {
        let head: Vec<&str> = text.split('/').take(3).collect();
        let head = head.join("/");
        return match head.rsplit_once('@') {
            Some((scheme_user, host)) => {
                let scheme = scheme_user.split("//").next().unwrap_or("");
                format!("{scheme}//xxxxx@{host}")
            }
            None => head,
        };
    };
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("xxxxx");
        let _ = url.set_password(None);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| lower.contains(s));
                let v = if secret {
                    "xxxxx".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Appends `prefix` + `name="value"`, the value escaped as the text format and PromQL
/// both read it.
pub fn push_label(out: &mut String, prefix: &str, name: &str, value: &str) {
    out.push_str(prefix);
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_floats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(finite(f64::NAN), None);
        assert_eq!(format_value(0.25), "0.25");
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("https://user:s3cret@prom.example:9090/api?access_token=abc&step=15"),
            "https://xxxxx@prom.example:9090/api?access_token=xxxxx&step=15"
        );
        assert_eq!(
            redact_url("http://prom/?X-Api-Key=k1&Password=p&query=up"),
            "http://prom/?X-Api-Key=xxxxx&Password=xxxxx&query=up"
        );
        assert_eq!(redact_url("http://prom:9090/"), "http://prom:9090/");
        let bad = redact_url("http://us:pw@[bad/path?token=1");
        assert!(!bad.contains("pw") && !bad.contains("token=1"), "{bad}");
    }
}
