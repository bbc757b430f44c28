//! fnmatch-style globs (`*`, `?`, `[abc]`, `[!abc]`) for a rule's `source`, matched against a
//! target's host:port. Compiled to an anchored regex once at load.

use regex::Regex;
use std::fmt;

/// A compiled glob. `Debug` prints the pattern.
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    regex: Regex,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pattern)
    }
}

impl Glob {
    /// Compiles `pattern`; an unterminated `[` is an error.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let mut re = String::from("^");
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                '[' => {
                    let mut class = String::new();
                    let mut closed = false;
                    if chars.peek() == Some(&'!') {
                        chars.next();
                        class.push('^');
                    }
                    let mut first = true;
                    for c in chars.by_ref() {
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        if c == '\\' || c == '[' || c == ']' || c == '^' || c == '&' || c == '~' {
                            class.push('\\');
                        }
                        class.push(c);
                    }
                    if !closed {
                        return Err(format!("unterminated [ in glob {pattern:?}"));
                    }
                    re.push('[');
                    re.push_str(&class);
                    re.push(']');
                }
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| format!("bad glob {pattern:?}: {e}"))?;
        Ok(Self {
            pattern: pattern.to_string(),
            regex,
        })
    }

    /// Whether `text` matches the whole glob.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch() {
        let g = Glob::new("10.0.*").unwrap();
        assert!(g.matches("10.0.3.4:9100"));
        assert!(!g.matches("110.0.3.4:9100"));
        assert!(Glob::new("host-?:91[0-9][!5]")
            .unwrap()
            .matches("host-a:9104"));
        assert!(!Glob::new("host-?:91[0-9][!5]")
            .unwrap()
            .matches("host-a:9105"));
        assert!(Glob::new("a.b").unwrap().matches("a.b"));
        assert!(!Glob::new("a.b").unwrap().matches("axb"));
        assert!(Glob::new("[").is_err());
    }
}
