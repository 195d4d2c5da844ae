//! One gateway access-log line: the NDJSON schema, strict parsing with a
//! reason for every rejected line, and size limits applied before anything
//! is stored.
//!
//! The schema (docs/fraud.md maps nginx and Envoy JSON access logs onto it):
//!
//! ```json
//! {"ts":"2026-12-01T10:00:00.123Z","client_ip":"203.0.113.7","method":"GET",
//!  "host":"shop.example","path":"/cart","status":200,"bytes":5120,
//!  "duration_ms":12.5,"user_agent":"Mozilla/5.0 …","referer":"","jwt_sub":""}
//! ```
//!
//! `blocked_by` (optional) names the component of ours that produced the
//! response (`"pii-fraud"` for a WAF block, `"pii-shed"` for load shedding):
//! such responses are never evidence against the client.

use std::net::IpAddr;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest accepted line (bytes, without the newline).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest accepted path (bytes, query string included); longer lines are rejected.
pub const MAX_PATH: usize = 4096;
/// Longest accepted user agent, referer and host.
pub const MAX_HEADER: usize = 2048;
/// Longest accepted subject (the raw `jwt_sub`, before tokenization).
pub const MAX_SUBJECT: usize = 256;

/// Why a line was skipped; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not a JSON object with the gateway log fields")]
    BadJson,
    #[error("ts is not an RFC 3339 timestamp")]
    BadTimestamp,
    #[error("client_ip is not an IPv4 or IPv6 address")]
    BadIp,
    #[error("status is not an HTTP status code (100-599)")]
    BadStatus,
    #[error("method is not an HTTP method token")]
    BadMethod,
    #[error("path does not start with '/' or is longer than {MAX_PATH} bytes")]
    BadPath,
    #[error("host, user_agent or referer longer than {MAX_HEADER} bytes")]
    FieldTooLong,
    #[error("jwt_sub longer than {MAX_SUBJECT} bytes")]
    SubjectTooLong,
    #[error(
        "ts is more than 5 minutes ahead of the ingest's clock or more than 24 hours behind it"
    )]
    OutOfWindow,
}

impl Reject {
    pub const ALL: [Reject; 10] = [
        Reject::TooLong,
        Reject::BadJson,
        Reject::BadTimestamp,
        Reject::BadIp,
        Reject::BadStatus,
        Reject::BadMethod,
        Reject::BadPath,
        Reject::FieldTooLong,
        Reject::SubjectTooLong,
        Reject::OutOfWindow,
    ];

    /// The label of this reason in metrics and reports.
    pub fn label(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::BadJson => "bad_json",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::BadIp => "bad_ip",
            Reject::BadStatus => "bad_status",
            Reject::BadMethod => "bad_method",
            Reject::BadPath => "bad_path",
            Reject::FieldTooLong => "field_too_long",
            Reject::SubjectTooLong => "subject_too_long",
            Reject::OutOfWindow => "out_of_window",
        }
    }
}

/// A parsed line. `jwt_sub` is still the raw subject here: the ingest step
/// replaces it with the enclave's token before
/// anything is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The address, canonical (IPv4-mapped IPv6 becomes IPv4).
    pub ip: IpAddr,
    /// The address as the log wrote it (bounded by the parser).
    pub ip_text: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: f64,
    pub user_agent: String,
    pub referer: String,
    /// Empty when anonymous.
    pub jwt_sub: String,
    /// Set when one of our own components produced the response.
    pub blocked_by: Option<String>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    ts: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    client_ip: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    host: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    status: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    duration_ms: Option<f64>,
    /// nginx's `$request_time` (seconds), when `duration_ms` is absent.
    #[serde(default)]
    request_time: Option<f64>,
    #[serde(default, borrow)]
    user_agent: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    referer: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    jwt_sub: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    blocked_by: Option<std::borrow::Cow<'a, str>>,
}

/// Parses one line (without its newline). Every failure names its reason.
pub fn parse_line(line: &[u8]) -> Result<LogRecord, Reject> {
    if line.len() > MAX_LINE {
        return Err(Reject::TooLong);
    }
    let w: Wire<'_> = serde_json::from_slice(line).map_err(|_| Reject::BadJson)?;
    let ts = OffsetDateTime::parse(&w.ts, &Rfc3339).map_err(|_| Reject::BadTimestamp)?;
    let ts_ms =
        i64::try_from(ts.unix_timestamp_nanos() / 1_000_000).map_err(|_| Reject::BadTimestamp)?;
    if w.client_ip.len() > 45 {
        return Err(Reject::BadIp);
    }
    let ip: IpAddr = w.client_ip.parse().map_err(|_| Reject::BadIp)?;
    // Envoy writes null for a header that was absent.
    let host = w.host.unwrap_or_default();
    let user_agent = w.user_agent.unwrap_or_default();
    let referer = w.referer.unwrap_or_default();
    let jwt_sub = w.jwt_sub.unwrap_or_default();
    let status = u16::try_from(w.status)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .ok_or(Reject::BadStatus)?;
    if w.method.is_empty()
        || w.method.len() > 16
        || !w.method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err(Reject::BadMethod);
    }
    if !w.path.starts_with('/') || w.path.len() > MAX_PATH {
        return Err(Reject::BadPath);
    }
    if host.len() > MAX_HEADER || user_agent.len() > MAX_HEADER || referer.len() > MAX_HEADER {
        return Err(Reject::FieldTooLong);
    }
    if jwt_sub.len() > MAX_SUBJECT {
        return Err(Reject::SubjectTooLong);
    }
    let duration_ms = match (w.duration_ms, w.request_time) {
        (Some(ms), _) => ms,
        (None, Some(s)) => s * 1000.0,
        (None, None) => 0.0,
    };
    if !duration_ms.is_finite() {
        return Err(Reject::BadJson);
    }
    Ok(LogRecord {
        ts_ms,
        ip: ip.to_canonical(),
        ip_text: w.client_ip.into_owned(),
        method: w.method.to_ascii_uppercase(),
        host: host.into_owned(),
        path: w.path.into_owned(),
        status,
        bytes: w.bytes,
        duration_ms,
        user_agent: user_agent.into_owned(),
        referer: referer.into_owned(),
        jwt_sub: jwt_sub.into_owned(),
        // An empty marker (nginx logs "" when nothing of ours answered) is none.
        blocked_by: w
            .blocked_by
            .filter(|b| !b.is_empty())
            .map(|b| b.chars().take(32).collect()),
    })
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn format_ts(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let t = t
        .replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"ts":"2026-12-01T10:00:00.250+01:00","client_ip":"::ffff:203.0.113.7","method":"get","host":"shop.example","path":"/cart?x=1","status":200,"bytes":10,"duration_ms":1.5,"user_agent":"Mozilla/5.0","referer":"","jwt_sub":"user-1"}"#;

    #[test]
    fn parses_the_schema_with_offsets_and_mapped_addresses() {
        let r = parse_line(GOOD.as_bytes()).expect("parses");
        assert_eq!(r.ts_ms, 1_796_115_600_250);
        assert_eq!(r.ip, "203.0.113.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.ip_text, "::ffff:203.0.113.7");
        assert_eq!(r.method, "GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.jwt_sub, "user-1");
        assert_eq!(r.blocked_by, None);
        assert_eq!(format_ts(r.ts_ms), "2026-12-01T09:00:00.25Z");
    }

    #[test]
    fn every_bad_field_has_its_reason() {
        let with = |k: &str, v: &str| {
            let mut j: serde_json::Value = serde_json::from_str(GOOD).expect("json");
            j[k] = serde_json::from_str(v).expect("value");
            serde_json::to_vec(&j).expect("vec")
        };
        let cases: Vec<(Vec<u8>, Reject)> = vec![
            (b"not json".to_vec(), Reject::BadJson),
            (b"{}".to_vec(), Reject::BadJson),
            (b"[1,2]".to_vec(), Reject::BadJson),
            (with("ts", "\"yesterday\""), Reject::BadTimestamp),
            (with("ts", "\"2026-12-01 10:00:00\""), Reject::BadTimestamp),
            (with("client_ip", "\"999.1.1.1\""), Reject::BadIp),
            (with("client_ip", "\"203.0.113.7:443\""), Reject::BadIp),
            (with("status", "700"), Reject::BadStatus),
            (with("status", "-1"), Reject::BadJson),
            (with("status", "\"200\""), Reject::BadJson),
            (with("method", "\"GET /x\""), Reject::BadMethod),
            (with("path", "\"cart\""), Reject::BadPath),
            (
                with("path", &format!("\"/{}\"", "a".repeat(MAX_PATH))),
                Reject::BadPath,
            ),
            (
                with("user_agent", &format!("\"{}\"", "a".repeat(MAX_HEADER + 1))),
                Reject::FieldTooLong,
            ),
            (
                with("jwt_sub", &format!("\"{}\"", "a".repeat(MAX_SUBJECT + 1))),
                Reject::SubjectTooLong,
            ),
            (vec![b' '; MAX_LINE + 1], Reject::TooLong),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_line(&line),
                Err(want),
                "{}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            );
        }
    }

    #[test]
    fn own_responses_are_marked() {
        let line = GOOD.replace("\"jwt_sub\"", "\"blocked_by\":\"pii-fraud\",\"jwt_sub\"");
        let r = parse_line(line.as_bytes()).expect("parses");
        assert_eq!(r.blocked_by.as_deref(), Some("pii-fraud"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rejected = 0;
        for n in 0..5000 {
            let mut line = GOOD.as_bytes().to_vec();
            for _ in 0..(n % 7 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % line.len();
                line[i] = (seed >> 32) as u8;
            }
            rejected += usize::from(parse_line(&line).is_err());
        }
        assert!(
            rejected > 1000,
            "mutations should mostly be rejected, got {rejected}"
        );
    }
}
