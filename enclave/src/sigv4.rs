//! AWS Signature Version 4 (HMAC-SHA256), for the enclave's own KMS calls:
//! the enclave signs inside itself, so the host relays requests it can
//! neither read (TLS) nor forge. [`verify`] is the server side, used by the
//! KMS emulator in tests. Checked against AWS's published SigV4 test suite.
//!
//! Scope: header-based signing of a request with a fully buffered body
//! (what the KMS JSON protocol needs). No presigned URLs, no chunked
//! payloads, and no S3 path rules.

use aws_lc_rs::{digest, hmac};
use subtle::ConstantTimeEq as _;

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

fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// Verify a signed request. `secret_for(access_key_id)` returns the secret;
/// `now_unix` is the current time, for the 5-minute skew check.
pub fn verify(
    req: &Request<'_>,
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
    let auth = header("authorization").ok_or(VerifyError::Malformed)?;
    let rest = auth
        .strip_prefix(ALGORITHM)
        .ok_or(VerifyError::Malformed)?
        .trim();
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(VerifyError::Malformed)?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => return Err(VerifyError::Malformed),
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or(VerifyError::Malformed)?,
        signed.ok_or(VerifyError::Malformed)?,
        sig.ok_or(VerifyError::Malformed)?,
    );
    let (key_id, scope) = cred.split_once('/').ok_or(VerifyError::Malformed)?;
    let amz_date = header("x-amz-date").ok_or(VerifyError::Expired)?;
    let want_scope = format!(
        "{}/{region}/{service}/aws4_request",
        amz_date.get(..8).unwrap_or_default()
    );
    if scope != want_scope {
        return Err(VerifyError::WrongScope(want_scope));
    }
    let t = parse_amz_date(amz_date).ok_or(VerifyError::Expired)?;
    if (t - now_unix).abs() > 300 {
        return Err(VerifyError::Expired);
    }
    let names: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if !names.iter().any(|n| n == "host") || !names.iter().any(|n| n == "x-amz-date") {
        return Err(VerifyError::Malformed);
    }
    let secret = secret_for(key_id).ok_or(VerifyError::UnknownKey)?;
    let (_, expected) = signature(req, &secret, amz_date, region, service, &names);
    if expected.as_bytes().ct_eq(sig.as_bytes()).into() {
        Ok(key_id.to_owned())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// `20150830T123600Z` → Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0, 4)?,
        n(4, 6)?,
        n(6, 8)?,
        n(9, 11)?,
        n(11, 13)?,
        n(13, 15)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3_600 + mi * 60 + se)
}

/// Unix seconds → `YYYYMMDD'T'HHMMSS'Z'`.
pub fn amz_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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
    fn verify_accepts_signed_and_refuses_tampered() {
        let now = parse_amz_date("20150830T123600Z").unwrap();
        let mut r = Request {
            body: br#"{"KeyId":"k"}"#,
            ..suite("POST", "")
        };
        r.headers
            .push(("X-Amz-Target".into(), "TrentService.Decrypt".into()));
        let auth = sign(&mut r, &creds(), "us-east-1", "kms", "20150830T123600Z");
        r.headers.push(("Authorization".into(), auth));
        let secret = |k: &str| (k == "AKIDEXAMPLE").then(|| SECRET.to_owned());
        assert_eq!(
            verify(&r, "us-east-1", "kms", now, secret),
            Ok("AKIDEXAMPLE".into())
        );
        // Body, signed header, time, region, key.
        let mut t = r.clone();
        t.body = br#"{"KeyId":"x"}"#;
        assert_eq!(
            verify(&t, "us-east-1", "kms", now, secret),
            Err(VerifyError::BadSignature)
        );
        let mut t = r.clone();
        t.headers[2].1 = "TrentService.GenerateDataKey".into();
        assert_eq!(
            verify(&t, "us-east-1", "kms", now, secret),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&r, "us-east-1", "kms", now + 3600, secret),
            Err(VerifyError::Expired)
        );
        assert!(matches!(
            verify(&r, "eu-west-1", "kms", now, secret),
            Err(VerifyError::WrongScope(_))
        ));
        assert_eq!(
            verify(&r, "us-east-1", "kms", now, |_| None),
            Err(VerifyError::UnknownKey)
        );
        let mut t = r.clone();
        t.headers.retain(|(k, _)| k != "Authorization");
        t.headers
            .push(("Authorization".into(), "AWS4-HMAC-SHA256 garbage".into()));
        assert_eq!(
            verify(&t, "us-east-1", "kms", now, secret),
            Err(VerifyError::Malformed)
        );
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
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", creds()).contains("wJalr"));
    }
}
