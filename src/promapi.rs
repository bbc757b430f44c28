//! A client of Prometheus' HTTP API, `/api/v1/query_range`: recorded history for `backtest
//! --prometheus` and for warm start (`--warmup-from`). Long ranges are asked in pieces of at
//! most 10,000 steps (Prometheus refuses more than 11,000 points a series) and joined.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most steps asked in one request.
const STEPS_PER_REQUEST: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PromApiError {
    #[error("bad Prometheus URL {0:?}: {1}")]
    Url(String, String),
    #[error("{url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: Prometheus said {error_type}: {error}")]
    Api {
        url: String,
        error_type: String,
        error: String,
    },
    #[error("{url}: not a query_range answer: {message}")]
    Decode { url: String, message: String },
}

/// One series of a range query: its labels (`__name__` included when it has one) and its
/// samples (ms, value), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, f64)>,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(rename = "errorType", default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// The query endpoint of a Prometheus base URL (`http://prometheus:9090`, with or without a
/// path prefix such as `/prometheus`).
pub fn endpoint(base: &str) -> Result<reqwest::Url, PromApiError> {
    let bad = |e: String| PromApiError::Url(crate::util::redact_url(base), e);
    let mut url = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("use http:// or https://".into()));
    }
    let path = format!("{}/api/v1/query_range", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// `query` evaluated every `step_ms` from `start_ms` to `end_ms` (inclusive).
pub async fn query_range(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Vec<RangeSeries>, PromApiError> {
    let step_ms = step_ms.max(1);
    let mut joined: BTreeMap<Vec<(String, String)>, RangeSeries> = BTreeMap::new();
    let mut from = start_ms;
    while from <= end_ms {
        let to = (from + (STEPS_PER_REQUEST - 1) * step_ms).min(end_ms);
        for s in one_request(client, endpoint, query, from, to, step_ms).await? {
            let key: Vec<(String, String)> = s.labels.clone().into_iter().collect();
            joined
                .entry(key)
                .and_modify(|e| e.samples.extend_from_slice(&s.samples))
                .or_insert(s);
        }
        from = to + step_ms;
    }
    Ok(joined.into_values().collect())
}

async fn one_request(
    client: &reqwest::Client,
    endpoint: &reqwest::Url,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Vec<RangeSeries>, PromApiError> {
    let secs = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    // Errors name the URL without its credentials (a token in the query, a password).
    let url = crate::util::redact_url(endpoint.as_str());
    let form = [
        ("query", query.to_string()),
        ("start", secs(start_ms)),
        ("end", secs(end_ms)),
        ("step", secs(step_ms)),
    ];
    let http = |source: reqwest::Error| PromApiError::Http {
        url: url.clone(),
        source: source.without_url(),
    };
    // POST with a form, as Grafana does: a long selector does not hit URL length limits.
    let response = client
        .post(endpoint.clone())
        .form(&form)
        .send()
        .await
        .map_err(http)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(http)?;
    let answer: Answer = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) if status == 200 => {
            return Err(PromApiError::Decode {
                url,
                message: e.to_string(),
            })
        }
        Err(_) => {
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(PromApiError::Status { url, status, body });
        }
    };
    if answer.status != "success" {
        return Err(PromApiError::Api {
            url,
            error_type: answer.error_type.unwrap_or_default(),
            error: answer.error.unwrap_or_default(),
        });
    }
    let data = answer.data.ok_or_else(|| PromApiError::Decode {
        url: url.clone(),
        message: "no data".into(),
    })?;
    if data.result_type != "matrix" {
        return Err(PromApiError::Decode {
            url,
            message: format!("result type {:?}, expected matrix", data.result_type),
        });
    }
    Ok(data
        .result
        .into_iter()
        .map(|item| RangeSeries {
            labels: item.metric,
            samples: item
                .values
                .into_iter()
                .filter_map(|(t, v)| Some(((t * 1000.0).round() as i64, parse_value(&v)?)))
                .collect(),
        })
        .collect())
}

/// A sample value as the API writes it (`"NaN"`, `"+Inf"` included).
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}

/// A client for the API: bounded time per request.
pub fn client(timeout: Duration) -> Result<reqwest::Client, PromApiError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| PromApiError::Url(String::new(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://p:9090").unwrap().as_str(),
            "http://p:9090/api/v1/query_range"
        );
        assert_eq!(
            endpoint("https://p/prometheus/").unwrap().as_str(),
            "https://p/prometheus/api/v1/query_range"
        );
        assert!(endpoint("p:9090").is_err());
        assert!(endpoint("ftp://p").is_err());
    }
}
