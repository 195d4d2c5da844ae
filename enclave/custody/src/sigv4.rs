//! AWS Signature Version 4 (HMAC-SHA256), for the enclave's own KMS calls:
//! the enclave signs inside itself, so the host relays requests it can
//! neither read (TLS) nor forge. Signing only: the KMS emulator carries its
//! own verifier, so the image has no verification code and a bug here cannot
//! hide behind the same bug on the other side. Checked against AWS's
//! published SigV4 test suite.
//!
//! Scope: header-based signing of a request with a fully buffered body
//! (what the KMS JSON protocol needs). No presigned URLs, no chunked
//! payloads, and no S3 path rules.

use aws_lc_rs::{digest, hmac};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Credentials to sign with. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: zeroize::Zeroizing<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A request to sign or verify. Header names are case-insensitive.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Absolute path, already URI-encoded as sent (`/`).
    pub path: &'a str,
    /// Raw query string without `?` (may be empty).
    pub query: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, b))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

fn uri_encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding on bytes (`+` is a space); malformed escapes stay as
/// they are.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

fn canonical_query(q: &str) -> String {
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// (canonical headers block, signed header list) over `names`.
fn canonical_headers(headers: &[(String, String)], names: &[String]) -> (String, String) {
    let mut block = String::new();
    for n in names {
        let vals: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        block.push_str(&format!("{n}:{}\n", vals.join(",")));
    }
    (block, names.join(";"))
}

/// The string to sign and the signature for `req` under `secret`.
fn signature(
    req: &Request<'_>,
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    signed: &[String],
) -> (String, String) {
    let (headers, signed_list) = canonical_headers(&req.headers, signed);
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        canonical_query(req.query),
        headers,
        signed_list,
        hex_sha256(req.body)
    );
    let date = amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    (scope, hex::encode(hmac_sha256(&k_signing, sts.as_bytes())))
}

/// Sign: adds `x-amz-date` (and `x-amz-security-token`) and returns the
/// `Authorization` header value. Every header present is signed.
pub fn sign(
    req: &mut Request<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    req.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-amz-date"))
    {
        req.headers.push(("x-amz-date".into(), amz_date.into()));
    }
    if let Some(t) = &creds.session_token {
        req.headers.push(("x-amz-security-token".into(), t.clone()));
    }
    let mut names: Vec<String> = req
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let (scope, sig) = signature(
        req,
        &creds.secret_access_key,
        amz_date,
        region,
        service,
        &names,
    );
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        names.join(";")
    )
}

/// `20150830T123600Z` → Unix seconds (RFC 3339 parsing by `humantime`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !s.is_ascii() {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    parse_rfc3339_utc(&rfc)
}

/// An RFC 3339 UTC time (`2026-11-22T21:00:00Z`, fractions allowed) → Unix
/// seconds; `None` before 1970 or when malformed.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_secs()).ok()
}

/// Unix seconds → `YYYYMMDD'T'HHMMSS'Z'`, clamped to 1970-01-01 … 9999-12-31
/// (the four-digit years the format has).
pub fn amz_date(unix: i64) -> String {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = u64::try_from(unix).unwrap_or(0).min(LAST);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS SigV4 test suite: AKIDEXAMPLE, us-east-1, service "service".
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn suite(method: &'static str, query: &'static str) -> Request<'static> {
        Request {
            method,
            path: "/",
            query,
            headers: vec![
                ("Host".into(), "example.amazonaws.com".into()),
                ("X-Amz-Date".into(), "20150830T123600Z".into()),
            ],
            body: b"",
        }
    }

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: zeroize::Zeroizing::new(SECRET.into()),
            session_token: None,
        }
    }

    #[test]
    fn aws_test_suite_vectors() {
        for (method, query, sig) in [
            (
                "GET",
                "",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "GET",
                "Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "POST",
                "",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "POST",
                "Param1=value1",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
        ] {
            let mut r = suite(method, query);
            let auth = sign(&mut r, &creds(), "us-east-1", "service", "20150830T123600Z");
            assert_eq!(
                auth,
                format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"),
                "{method} {query}"
            );
        }
    }

    #[test]
    fn dates_round_trip() {
        for s in [
            "20150830T123600Z",
            "20000229T000000Z",
            "19700101T000000Z",
            "20261122T235959Z",
        ] {
            assert_eq!(amz_date(parse_amz_date(s).unwrap()), s);
        }
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert!(parse_amz_date("2015-08-30").is_none());
        assert!(parse_amz_date("20151330T123600Z").is_none());
        assert_eq!(
            parse_rfc3339_utc("2015-08-30T12:36:00Z"),
            Some(1_440_938_160)
        );
        assert_eq!(
            parse_rfc3339_utc("2015-08-30T12:36:00.123Z"),
            Some(1_440_938_160)
        );
        assert!(parse_rfc3339_utc("1969-12-31T23:59:59Z").is_none());
        assert_eq!(amz_date(i64::MAX), "99991231T235959Z");
        assert_eq!(amz_date(-5), "19700101T000000Z");
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", creds()).contains("wJalr"));
    }
}
