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
//! platform's roots; [`client_with_roots`] trusts exactly a CA file's
//! certificates instead ([`root_store`], which the PostgreSQL client uses
//! for `sslrootcert` too).
#![forbid(unsafe_code)]

use std::path::Path;

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

/// Why the roots to verify servers against cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: no CA certificates in it")]
    Empty { path: String },
    #[error("no TLS root certificates on this system")]
    NoSystemRoots,
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificates servers are verified against: exactly those of a PEM
/// file (`ca_file`, as `VAULT_CACERT` or libpq's `sslrootcert` name one),
/// or the platform's roots when `None`. An empty set is an error, never a
/// client that trusts nothing and fails later with a vaguer message.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, RootsError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // A platform certificate rustls cannot parse is skipped, as
                // every rustls client does; the set must not end up empty.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(RootsError::NoSystemRoots);
            }
        }
        Some(path) => {
            let bad = |reason: String| RootsError::File {
                path: path.display().to_string(),
                reason,
            };
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?;
            for c in certs {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(RootsError::Empty {
                    path: path.display().to_string(),
                });
            }
        }
    }
    Ok(roots)
}

/// rustls' client configuration with ring named as the provider (not left
/// to rustls' process default: a build that links both ring and aws-lc-rs,
/// as the workspace's tests do, has none, and rustls would panic) and the
/// given roots; no client certificate.
pub fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, RootsError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// hyper's pooled client for http and https (HTTP/1.1) over rustls with
/// ring, verifying servers against [`root_store`]`(ca_file)`.
pub fn client_with_roots<B>(
    max_idle_per_host: usize,
    ca_file: Option<&Path>,
) -> Result<Client<B>, RootsError>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(root_store(ca_file)?)?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(max_idle_per_host)
            .build(https),
    )
}

/// A failed request's error with its sources, for a message: hyper's own
/// text says only `client error (Connect)`; the reason (`invalid peer
/// certificate: UnknownIssuer`, `Connection refused`) is further down.
/// Parts of it come from the server (a certificate's names), so control
/// characters are escaped (no forged log line or terminal sequence) and the
/// text is cut at 1,000 characters.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    let mut safe = String::with_capacity(out.len().min(1_000));
    for ch in out.chars() {
        if safe.len() >= 1_000 {
            safe.push('…');
            break;
        }
        if ch.is_control() {
            safe.extend(ch.escape_default());
        } else {
            safe.push(ch);
        }
    }
    safe
}

/// Whether a request failed because the server cannot be trusted or cannot
/// speak TLS with us (its certificate, no certificate, nothing in common to
/// agree on): trying again will not help. Other TLS errors (a corrupt
/// record, an alert mid-connection) may be the network's and are retried.
/// rustls' error travels inside `io::Error`s (sometimes one inside
/// another), whose `source()` skips what they wrap, so each link is also
/// looked into.
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    fn visit(e: &(dyn std::error::Error + 'static), depth: u8) -> bool {
        if depth > 16 {
            return false;
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                t,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::InvalidCertRevocationList(_)
            );
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| visit(inner, depth + 1));
        wrapped || e.source().is_some_and(|s| visit(s, depth + 1))
    }
    visit(e, 0)
}

/// [`client_with_roots`] with the platform's roots.
pub fn client<B>(max_idle_per_host: usize) -> Result<Client<B>, EndpointError>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    client_with_roots(max_idle_per_host, None).map_err(|_| EndpointError::NoRoots)
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
    fn describe_and_tls_failures_look_through_io_errors() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_tls_failure(&tls));
        assert!(
            describe(&tls).contains("UnknownIssuer"),
            "{}",
            describe(&tls)
        );
        let twice = std::io::Error::other(tls);
        assert!(is_tls_failure(&twice));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&refused));
        // A corrupt record may be the network's: retried.
        let corrupt =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_tls_failure(&corrupt));
        // Names from a certificate cannot forge a line.
        let forged = std::io::Error::other("only valid for x\nINFO backfill done\u{1b}[2J");
        let shown = describe(&forged);
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(shown.contains("\\n"), "{shown}");
        assert!(
            describe(&std::io::Error::other("x".repeat(5_000)))
                .chars()
                .count()
                <= 1_001
        );
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
