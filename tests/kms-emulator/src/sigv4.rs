//! SigV4 verification, the server side of AWS Signature Version 4, for the
//! emulator only. Written from AWS's specification independently of the
//! enclave's signer (`pii-custody`), which the emulator does not link: the
//! enclave image carries no verification code, and a misreading of the spec
//! in one cannot hide behind the same misreading in the other. Both are
//! checked against AWS's published test-suite signatures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use aws_lc_rs::{constant_time, digest, hmac};

const SCHEME: &str = "AWS4-HMAC-SHA256";
/// The largest clock skew AWS accepts.
const MAX_SKEW_SECS: i64 = 300;

/// A request as received. Header names are case-insensitive.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub method: &'a str,
    /// The path exactly as sent (already URI-encoded).
    pub path: &'a str,
    /// The raw query string without `?`.
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("missing or malformed Authorization header")]
    Malformed,
    #[error("unknown access key")]
    UnknownKey,
    #[error("request time is missing or more than 5 minutes off")]
    Expired,
    #[error("the signature does not match")]
    BadSignature,
    #[error("credential scope is not {0}")]
    WrongScope(String),
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key: &'a str,
    scope: &'a str,
    signed: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(SCHEME)?.strip_prefix(' ')?;
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        if fields.insert(k, v).is_some() {
            return None;
        }
    }
    if fields.len() != 3 {
        return None;
    }
    let (access_key, scope) = fields.get("Credential")?.split_once('/')?;
    Some(Authorization {
        access_key,
        scope,
        signed: fields.get("SignedHeaders")?.split(';').collect(),
        signature: fields.get("Signature")?,
    })
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn encode_component(raw: &[u8], out: &mut String) {
    for &b in raw {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// Undo percent-encoding (and `+` for space, as form encoding sends it).
fn decode_component(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        let (mut ek, mut ev) = (String::new(), String::new());
        encode_component(&decode_component(k), &mut ek);
        encode_component(&decode_component(v), &mut ev);
        pairs.push((ek, ev));
    }
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{k}={v}");
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

fn mac(key: &[u8], data: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
}

/// The expected signature of `req` over `signed` headers.
fn expected_signature(
    req: &Received<'_>,
    signed: &[&str],
    secret: &str,
    amz_date: &str,
    scope: &str,
) -> Option<String> {
    let mut canonical = String::new();
    let path = if req.path.is_empty() { "/" } else { req.path };
    let _ = writeln!(
        canonical,
        "{}\n{path}\n{}",
        req.method,
        canonical_query(req.query)
    );
    for name in signed {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return None;
        }
        let _ = writeln!(canonical, "{name}:{}", values.join(","));
    }
    let _ = write!(
        canonical,
        "\n{}\n{}",
        signed.join(";"),
        sha256_hex(req.body)
    );
    let string_to_sign = format!(
        "{SCHEME}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    // The signing key: HMAC chain over the scope's date, region, service
    // and "aws4_request".
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = mac(&key, part).as_ref().to_vec();
    }
    Some(hex::encode(mac(&key, &string_to_sign).as_ref()))
}

/// `20150830T123600Z` → Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !s.is_ascii() {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// Check a signed request. `secret_for(access_key_id)` gives the secret;
/// `now_unix` is the time for the skew check. Returns the access key id.
pub fn verify(
    req: &Received<'_>,
    region: &str,
    service: &str,
    now_unix: i64,
    secret_for: impl Fn(&str) -> Option<String>,
) -> Result<String, VerifyError> {
    let header = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let auth = header("authorization")
        .and_then(parse_authorization)
        .ok_or(VerifyError::Malformed)?;
    let amz_date = header("x-amz-date").ok_or(VerifyError::Expired)?;
    let want = format!(
        "{}/{region}/{service}/aws4_request",
        amz_date.get(..8).unwrap_or_default()
    );
    if auth.scope != want {
        return Err(VerifyError::WrongScope(want));
    }
    let t = parse_amz_date(amz_date).ok_or(VerifyError::Expired)?;
    if (t - now_unix).abs() > MAX_SKEW_SECS {
        return Err(VerifyError::Expired);
    }
    // Host and date must be signed; names are lowercase and sorted.
    let sorted = auth.signed.windows(2).all(|w| w[0] < w[1]);
    let lower = auth
        .signed
        .iter()
        .all(|n| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_uppercase()));
    if !sorted || !lower || !auth.signed.contains(&"host") || !auth.signed.contains(&"x-amz-date") {
        return Err(VerifyError::Malformed);
    }
    let secret = secret_for(auth.access_key).ok_or(VerifyError::UnknownKey)?;
    let expected = expected_signature(req, &auth.signed, &secret, amz_date, auth.scope)
        .ok_or(VerifyError::Malformed)?;
    constant_time::verify_slices_are_equal(expected.as_bytes(), auth.signature.as_bytes())
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(auth.access_key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS SigV4 test suite: AKIDEXAMPLE, us-east-1, service "service".
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const NOW: &str = "20150830T123600Z";

    fn headers(sig: &str) -> Vec<(String, String)> {
        vec![
            ("Host".into(), "example.amazonaws.com".into()),
            ("X-Amz-Date".into(), NOW.into()),
            (
                "Authorization".into(),
                format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"),
            ),
        ]
    }

    fn check(method: &str, query: &str, h: &[(String, String)]) -> Result<String, VerifyError> {
        let req = Received {
            method,
            path: "/",
            query,
            headers: h,
            body: b"",
        };
        let now = parse_amz_date(NOW).unwrap();
        verify(&req, "us-east-1", "service", now, |k| {
            (k == "AKIDEXAMPLE").then(|| SECRET.to_owned())
        })
    }

    /// The signatures AWS publishes verify; anything changed does not.
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
            assert_eq!(
                check(method, query, &headers(sig)),
                Ok("AKIDEXAMPLE".into())
            );
            let other = if method == "GET" { "POST" } else { "GET" };
            assert_eq!(
                check(other, query, &headers(sig)),
                Err(VerifyError::BadSignature)
            );
        }
    }

    #[test]
    fn malformed_headers_are_refused_without_panics() {
        for auth in [
            "AWS4-HMAC-SHA256 garbage",
            "AWS4-HMAC-SHA256",
            "Basic abc",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date;host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=00",
        ] {
            let mut h = headers("00");
            h[2].1 = auth.into();
            assert_eq!(check("GET", "", &h), Err(VerifyError::Malformed), "{auth}");
        }
        assert_eq!(decode_component("%"), b"%");
        assert_eq!(decode_component("%4"), b"%4");
        assert_eq!(decode_component("%41%é"), "A%é".as_bytes());
        assert!(parse_amz_date("2015083éT12360Z").is_none());
        assert_eq!(parse_amz_date(NOW), Some(1_440_938_160));
    }
}
