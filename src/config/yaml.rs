//! Shared YAML decoding for every config file: typed decode with `deny_unknown_fields`, and a
//! syntax or shape error turned into line, column and a message without serde's suffix.

use serde::de::DeserializeOwned;

/// Where and why a YAML text did not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Decodes `text`; an unknown key is pointed at the key itself, not its mapping's start.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let options = serde_saphyr::Options {
        with_snippet: false,
        ..Default::default()
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let msg = e.to_string();
        let suffix = format!(" at line {line}, column {column}");
        let message = msg.strip_suffix(&suffix).unwrap_or(&msg).to_string();
        let (line, column) = unknown_key(&message)
            .and_then(|key| find_key(text, key, line))
            .unwrap_or((line, column));
        YamlError {
            line,
            column,
            message,
        }
    })
}

fn unknown_key(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Line and column (1-based) of the first `key:` at or after `from_line`.
pub fn find_key(text: &str, key: &str, from_line: u64) -> Option<(u64, u64)> {
    // An empty key (serde names one for `? : x`) would match everywhere without progress.
    if key.is_empty() {
        return None;
    }
    for (i, line) in text
        .lines()
        .enumerate()
        .skip(from_line.saturating_sub(1) as usize)
    {
        let mut search = 0;
        while let Some(pos) = line[search..].find(key) {
            let at = search + pos;
            let before = line[..at].chars().next_back();
            let after = line[at + key.len()..].trim_start();
            let boundary = before.is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-');
            if boundary && after.starts_with(':') {
                return Some((i as u64 + 1, at as u64 + 1));
            }
            search = at + key.len();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_unknown_key_is_located_without_looping() {
        // Found by the rules_yaml fuzz target: `? !binary ''` makes serde report an unknown
        // field with an empty name, and searching for "" never advanced.
        let text = "    ?                 !binary    '   \n      '   \ne]";
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Only {
            #[allow(dead_code)]
            rules: Vec<String>,
        }
        assert!(decode::<Only>(text).is_err());
        assert_eq!(find_key("a: 1\n", "", 1), None);
        assert_eq!(find_key("x: 1\n  key: 2\n", "key", 1), Some((2, 3)));
    }
}
