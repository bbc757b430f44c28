//! Annotation templates in the Prometheus style, limited to what a sidecar can fill in:
//! `{{ $value }}` and `{{ $labels.NAME }}`. Anything else is a load error, never literal text.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, PartialEq)]
enum Part {
    Text(String),
    Value,
    Label(String),
}

/// A parsed template. `Debug` prints the source.
#[derive(Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl Template {
    /// Parses `source`; unknown expressions and unbalanced braces are errors.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in template {source:?}"))?;
            let expr = after[..end].trim();
            if expr == "$value" {
                parts.push(Part::Value);
            } else if let Some(name) = expr.strip_prefix("$labels.") {
                if name.is_empty()
                    || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    || name.starts_with(|c: char| c.is_ascii_digit())
                {
                    return Err(format!("bad label name {name:?} in template {source:?}"));
                }
                parts.push(Part::Label(name.to_string()));
            } else {
                return Err(format!(
                    "unsupported template expression {{{{ {expr} }}}} in {source:?}: use {{{{ $value }}}} or {{{{ $labels.NAME }}}}"
                ));
            }
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("}}}} without {{{{ in template {source:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self {
            source: source.to_string(),
            parts,
        })
    }

    /// Fills the template; a missing label renders as the empty string, as in Prometheus.
    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Value => out.push_str(&crate::util::format_value(value)),
                Part::Label(name) => {
                    out.push_str(labels.get(name).map(String::as_str).unwrap_or(""))
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let t = Template::parse("{{ $labels.instance }} {{$labels.rule}} z={{ $value }}").unwrap();
        let mut l = BTreeMap::new();
        l.insert("instance".to_string(), "a:1".to_string());
        l.insert("rule".to_string(), "cpu".to_string());
        assert_eq!(t.render(&l, 3.21), "a:1 cpu z=3.21");
        assert_eq!(t.render(&BTreeMap::new(), 2.0), "  z=2");
    }

    #[test]
    fn rejects_unknown() {
        assert!(Template::parse("{{ $value | humanize }}").is_err());
        assert!(Template::parse("{{ $labels.instance ").is_err());
        assert!(Template::parse("x }}").is_err());
        assert!(Template::parse("{{ $labels. }}").is_err());
    }
}
