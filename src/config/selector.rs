//! PromQL series selectors (`name{label="v", other=~"re.*"}`) parsed once at load and
//! matched against every scraped series. Regexes are fully anchored, as in PromQL.

use regex::Regex;
use std::fmt;

/// How a label matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// One `label op "value"` matcher.
#[derive(Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    fn new(label: String, op: MatchOp, value: String) -> Result<Self, String> {
        let regex = match op {
            MatchOp::Re | MatchOp::NotRe => {
                Some(Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    format!("bad regex {value:?} for label {label:?}: {}", one_line(&e))
                })?)
            }
            _ => None,
        };
        Ok(Self {
            label,
            op,
            value,
            regex,
        })
    }

    /// Whether `actual` (the label's value, "" when absent) satisfies this matcher.
    pub fn matches(&self, actual: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => actual == self.value,
            (MatchOp::Ne, _) => actual != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(actual),
            (MatchOp::NotRe, Some(re)) => !re.is_match(actual),
            _ => false,
        }
    }
}

/// The regex crate's errors draw a multi-line caret diagram; keep only the reason, since
/// `check` prints one error per line.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: ").to_string())
        .unwrap_or(text)
}

/// A parsed series selector. `Debug` prints the source text.
#[derive(Clone)]
pub struct Selector {
    source: String,
    matchers: Vec<Matcher>,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)
    }
}

impl Selector {
    /// Parses a selector; the error says what is wrong and at which character.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let mut matchers = Vec::new();
        p.skip_ws();
        if p.peek()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        {
            let name = p.ident(true);
            matchers.push(Matcher::new("__name__".into(), MatchOp::Eq, name)?);
        }
        p.skip_ws();
        if p.peek() == Some(b'{') {
            p.i += 1;
            loop {
                p.skip_ws();
                if p.peek() == Some(b'}') {
                    p.i += 1;
                    break;
                }
                if !p
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
                {
                    return Err(p.err("expected a label name"));
                }
                let label = p.ident(false);
                p.skip_ws();
                let op = p.op().ok_or_else(|| p.err("expected =, !=, =~ or !~"))?;
                p.skip_ws();
                let value = p.string()?;
                matchers.push(Matcher::new(label, op, value)?);
                p.skip_ws();
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {}
                    _ => return Err(p.err("expected , or }")),
                }
            }
        }
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(p.err("unexpected text"));
        }
        if matchers.is_empty() {
            return Err("empty selector: give a metric name or at least one matcher".into());
        }
        if matchers.iter().all(|m| m.matches("")) {
            return Err(
                "selector matches every series: at least one matcher must not match the empty string (e.g. {__name__=~\".+\"})"
                    .into(),
            );
        }
        Ok(Self {
            source: text.trim().to_string(),
            matchers,
        })
    }

    /// Whether the series `name` with `labels` is selected.
    pub fn matches(&self, name: &str, labels: &[(String, String)]) -> bool {
        self.matchers.iter().all(|m| {
            let actual = if m.label == "__name__" {
                name
            } else {
                labels
                    .iter()
                    .find(|(k, _)| *k == m.label)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("")
            };
            m.matches(actual)
        })
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn err(&self, what: &str) -> String {
        format!("{what} at character {}", self.i + 1)
    }
    fn ident(&mut self, colon: bool) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || (colon && c == b':'))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn op(&mut self) -> Option<MatchOp> {
        let rest = &self.s[self.i..];
        let (op, len) = if rest.starts_with(b"=~") {
            (MatchOp::Re, 2)
        } else if rest.starts_with(b"!=") {
            (MatchOp::Ne, 2)
        } else if rest.starts_with(b"!~") {
            (MatchOp::NotRe, 2)
        } else if rest.starts_with(b"=") {
            (MatchOp::Eq, 1)
        } else {
            return None;
        };
        self.i += len;
        Some(op)
    }
    /// A "double", 'single' or `raw` quoted string with Go-style escapes in the first two.
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'' | b'`')) => q,
            _ => return Err(self.err("expected a quoted label value")),
        };
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                c if c == quote => break,
                b'\\' if quote != b'`' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'\\' | b'"' | b'\'' => out.push(e),
                        // Keep regex escapes such as \d and \. intact.
                        other => out.extend_from_slice(&[b'\\', other]),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("label value is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn name_and_matchers() {
        let s = Selector::parse(r#"process_cpu_seconds_total{job=~"api.*", env!="dev"}"#).unwrap();
        assert!(s.matches("process_cpu_seconds_total", &l(&[("job", "api-1")])));
        assert!(!s.matches("process_cpu_seconds_total", &l(&[("job", "xapi")])));
        assert!(!s.matches(
            "process_cpu_seconds_total",
            &l(&[("job", "api"), ("env", "dev")])
        ));
        assert!(!s.matches("other", &l(&[("job", "api")])));
    }

    #[test]
    fn all_series_and_recording_rule_names() {
        let s = Selector::parse(r#"{__name__=~".+"}"#).unwrap();
        assert!(s.matches("a", &[]));
        let s = Selector::parse("job:http_requests:rate5m").unwrap();
        assert!(s.matches("job:http_requests:rate5m", &[]));
        let s = Selector::parse(r#"{path!~'/health', __name__="x",}"#).unwrap();
        assert!(s.matches("x", &l(&[("path", "/a")])));
        assert!(!s.matches("x", &l(&[("path", "/health")])));
    }

    #[test]
    fn regex_escapes_survive() {
        let s = Selector::parse(r#"x{code=~"5\d\d"}"#).unwrap();
        assert!(s.matches("x", &l(&[("code", "503")])));
        assert!(!s.matches("x", &l(&[("code", "5xx")])));
    }

    proptest::proptest! {
        /// Arbitrary text never panics the selector parser.
        #[test]
        fn never_panics(text in "\\PC{0,80}") {
            let _ = Selector::parse(&text);
        }
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "{}",
            r#"{job=~".*"}"#,
            r#"x{job="a""#,
            r#"x{job=~"("}"#,
            "x{job}",
            "x y",
            r#"x{1job="a"}"#,
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should fail");
        }
        let e = Selector::parse(r#"x{job=~"(unclosed"}"#).unwrap_err();
        assert!(e.contains("bad regex"), "{e}");
    }
}
