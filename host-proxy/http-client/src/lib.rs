//! # pii-http-client — how the host tools call out over HTTP(S)
//!
//! Credentials (tokens, API keys) and often plaintext travel in every
//! request these tools send, so one rule decides where they may go:
//! `https://` anywhere, plain `http://` only to the loopback interface (the
//! sidecar beside us, a local test server), and never a URL with user info
//! (`http://localhost:x@evil/` connects to `evil`). [`classify`] applies it;
//! each caller decides what it accepts beyond that (the field-level
//! encryption tool has an explicit `--insecure-http`). [`client`] is hyper's
//! pooled client over rustls with ring named as the provider and the
//! platform's roots.
#![forbid(unsafe_code)]

use hyper_util::client::legacy::connect::HttpConnector;

pub type Https = hyper_rustls::HttpsConnector<HttpConnector>;
pub type Client<B> = hyper_util::client::legacy::Client<Https, B>;

/// Where an endpoint's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// `https://`: TLS, verified against the platform's roots.
    Https,
    /// `http://` to `localhost`, `127.0.0.0/8` or `::1`.
    LoopbackHttp,
    /// `http://` to anything else: credentials in clear on the network.
    RemoteHttp,
}

/// Why an endpoint is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("not a URL")]
    NotUrl,
    #[error("no host")]
    NoHost,
    #[error("user info in the URL is refused")]
    UserInfo,
    #[error("scheme must be https:// or http://")]
    Scheme,
    #[error(
        "plain http:// only to the loopback interface (credentials travel in every request); use https://"
    )]
    PlainHttp,
    #[error("no TLS root certificates on this system")]
    NoRoots,
}

/// What `endpoint` reaches; refuses anything but an http(s) URL with a host
/// and without user info.
pub fn classify(endpoint: &str) -> Result<Reach, EndpointError> {
    let uri: hyper::Uri = endpoint.parse().map_err(|_| EndpointError::NotUrl)?;
    let authority = uri.authority().ok_or(EndpointError::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(EndpointError::UserInfo);
    }
    match uri.scheme_str() {
        Some("https") => Ok(Reach::Https),
        Some("http") => {
            let host = authority.host();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let local = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            Ok(if local {
                Reach::LoopbackHttp
            } else {
                Reach::RemoteHttp
            })
        }
        _ => Err(EndpointError::Scheme),
    }
}

/// `endpoint` fit for a message or a log line: user info (which may hold a
/// password) replaced by `***`.
pub fn redact(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => endpoint.to_owned(),
    }
}

/// `https://` anywhere or `http://` to the loopback interface.
pub fn check_endpoint(endpoint: &str) -> Result<Reach, EndpointError> {
    match classify(endpoint)? {
        Reach::RemoteHttp => Err(EndpointError::PlainHttp),
        r => Ok(r),
    }
}

/// hyper's pooled client for http and https (HTTP/1.1), rustls with ring and
/// the platform's roots. The provider is named, not left to rustls' process
/// default: a build that links both ring and aws-lc-rs (the workspace's
/// tests) has no default, and rustls would panic.
pub fn client<B>(max_idle_per_host: usize) -> Result<Client<B>, EndpointError>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|_| EndpointError::NoRoots)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(max_idle_per_host)
            .build(https),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_reaches_the_loopback_interface() {
        for (url, want) in [
            ("https://api.cloudflare.com/client/v4", Reach::Https),
            ("https://10.0.0.1:8200", Reach::Https),
            ("http://127.0.0.1:8080/client/v4", Reach::LoopbackHttp),
            ("http://127.9.9.9:1", Reach::LoopbackHttp),
            ("http://localhost:1", Reach::LoopbackHttp),
            ("http://LocalHost:1", Reach::LoopbackHttp),
            ("http://[::1]:8080", Reach::LoopbackHttp),
            ("http://10.0.0.1:8200", Reach::RemoteHttp),
            ("http://localhost.evil.example:80", Reach::RemoteHttp),
            ("http://127.0.0.1.nip.io/", Reach::RemoteHttp),
            ("http://[::ffff:10.0.0.1]/", Reach::RemoteHttp),
        ] {
            assert_eq!(classify(url), Ok(want), "{url}");
        }
        assert_eq!(
            check_endpoint("http://10.0.0.1"),
            Err(EndpointError::PlainHttp)
        );
        assert_eq!(check_endpoint("http://[::1]:1"), Ok(Reach::LoopbackHttp));
    }

    #[test]
    fn redact_hides_user_info_only() {
        assert_eq!(
            redact("https://user:pw@vault.example/v1"),
            "https://***@vault.example/v1"
        );
        assert_eq!(
            redact("http://a@b@evil.example:1/x@y"),
            "http://***@evil.example:1/x@y"
        );
        assert_eq!(
            redact("https://vault.example/v1?x=a@b"),
            "https://vault.example/v1?x=a@b"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn malformed_or_deceptive_urls_are_refused() {
        for (url, want) in [
            ("", EndpointError::NotUrl),
            ("not a url", EndpointError::NotUrl),
            ("/v1/transit", EndpointError::NoHost),
            ("ftp://127.0.0.1/", EndpointError::Scheme),
            ("unix:///run/x.sock", EndpointError::NotUrl),
            ("http://localhost:x@evil.example/", EndpointError::UserInfo),
            ("http://127.0.0.1:80@evil.example", EndpointError::UserInfo),
            ("https://user:pw@vault.example/", EndpointError::UserInfo),
        ] {
            assert_eq!(classify(url), Err(want), "{url}");
        }
    }
}
