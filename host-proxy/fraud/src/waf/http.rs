//! The HTTPS client the cloud WAF targets share: rustls with the platform's
//! roots, plain HTTP only to a loopback test server (credentials travel in
//! every request), bounded answers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::WafError;

pub type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;
pub type Client = hyper_util::client::legacy::Client<Https, Full<Bytes>>;

/// Largest answer read from a WAF API.
pub const MAX_ANSWER: usize = 16 << 20;
/// Longest wait for one answer.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn err(target: &str, message: String) -> WafError {
    WafError::Target {
        target: target.to_owned(),
        message,
    }
}

/// A client for `endpoint`, refused when it is plain `http://` to anything
/// but the loopback interface.
pub fn client(target: &str, endpoint: &str) -> Result<Client, WafError> {
    check_endpoint(endpoint).map_err(|why| err(target, format!("{endpoint}: {why}")))?;
    // The provider is named, not left to rustls' process default: a build
    // that links both ring and aws-lc-rs (the workspace's tests) has no
    // default, and rustls would panic.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| err(target, format!("TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// An endpoint is `https://host[:port][/path]`, or `http://` to the
/// loopback interface; never with user info (`http://localhost:x@evil/`
/// would connect to `evil`).
pub fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let uri: hyper::Uri = endpoint.parse().map_err(|_| "not a URL")?;
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("user info in the URL is refused");
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = authority.host();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let local = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if local {
                Ok(())
            } else {
                Err("https:// (plain http only on the loopback interface)")
            }
        }
        _ => Err("not an http(s) URL"),
    }
}

/// Sends `req` and reads the answer (status, headers, at most
/// [`MAX_ANSWER`] bytes) within [`DEADLINE`].
pub async fn send(
    http: &Client,
    target: &str,
    what: &str,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes), WafError> {
    let resp = tokio::time::timeout(DEADLINE, http.request(req))
        .await
        .map_err(|_| err(target, format!("{what}: no answer within 30 s")))?
        .map_err(|e| err(target, format!("{what}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(
        DEADLINE,
        http_body_util::Limited::new(body, MAX_ANSWER).collect(),
    )
    .await
    .map_err(|_| err(target, format!("{what}: answer not read within 30 s")))?
    .map_err(|e| err(target, format!("{what}: {e}")))?
    .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

#[cfg(test)]
mod tests {
    use super::check_endpoint;

    #[test]
    fn plain_http_only_reaches_the_loopback_interface() {
        for ok in [
            "https://api.cloudflare.com/client/v4",
            "http://127.0.0.1:8080/client/v4",
            "http://localhost:1",
            "http://[::1]:8080",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://localhost:x@evil.example/client/v4",
            "http://127.0.0.1:80@evil.example",
            "https://user@api.cloudflare.com",
            "http://evil.example",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
