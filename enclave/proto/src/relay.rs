//! The egress relay's preamble, sans-IO: the enclave names its upstream in
//! one line, the host answers in one line, and from then on the stream
//! carries the enclave's own TLS bytes, which the host only copies:
//!
//! ```text
//! enclave → host   PIIRELAY/1 CONNECT kms.eu-west-1.amazonaws.com:443\n
//! host → enclave   OK\n                 (or: ERR denied <reason>\n)
//! ```
//!
//! The sockets and the copying are in `pii-transport`.

/// Longest preamble or reply line, newline included.
pub const MAX_LINE: usize = 512;
const MAGIC: &str = "PIIRELAY/1 CONNECT ";

/// An upstream: DNS name or IP literal, and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a host name, target or request line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("expected host:port or [ipv6]:port")]
    Shape,
    #[error("{0:?} is not an IPv6 address")]
    BadIpv6(String),
    #[error("{0:?} is not a port")]
    BadPort(String),
    #[error("{0:?} is not a host name or IP address")]
    BadHost(String),
    #[error(
        "{0:?} is numeric but not a dotted-quad IPv4 address (resolvers read such forms as \
         addresses, so rules written for names would not apply)"
    )]
    NumericName(String),
    #[error("not a PIIRELAY/1 CONNECT request")]
    NotRequest,
}

/// The canonical form of a host name or IP literal, as both requests and
/// rules are compared: one trailing dot removed, IDNA (UTS 46) to ASCII —
/// lowercase, punycode — with every label 1–63 letters, digits or hyphens,
/// and IP literals in their canonical text. Numeric names that are not a
/// canonical dotted quad (`2130706433`, `0x7f.1`, `127.1`) are refused:
/// `getaddrinfo` would read them as addresses.
pub fn normalize_host(h: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadHost(h.to_owned());
    let trimmed = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = trimmed.parse::<std::net::IpAddr>() {
        // `::ffff:1.2.3.4` is 1.2.3.4: one form for rules and requests.
        return Ok(ip.to_canonical().to_string());
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.is_empty() || name.ends_with('.') {
        return Err(bad());
    }
    let ascii = idna::domain_to_ascii_strict(name).map_err(|_| bad())?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let ldh = |l: &&str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if ascii.is_empty() || ascii.len() > 253 || !labels.iter().all(ldh) {
        return Err(bad());
    }
    let last = labels.last().copied().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(TargetError::NumericName(h.to_owned()));
    }
    Ok(ascii)
}

impl std::str::FromStr for Target {
    type Err = TargetError;
    /// `host:port` or `[v6]:port`; the host in [`normalize_host`]'s form.
    fn from_str(s: &str) -> Result<Self, TargetError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or(TargetError::Shape)?;
            let ip = h
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| TargetError::BadIpv6(h.to_owned()))?;
            (std::net::IpAddr::V6(ip).to_canonical().to_string(), p)
        } else {
            let (h, p) = s.rsplit_once(':').ok_or(TargetError::Shape)?;
            if h.contains(':') {
                return Err(TargetError::Shape);
            }
            (normalize_host(h)?, p)
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| TargetError::BadPort(port.to_owned()))?;
        Ok(Target { host, port })
    }
}

/// The enclave's request line.
pub fn encode_request(t: &Target) -> Vec<u8> {
    format!("{MAGIC}{t}\n").into_bytes()
}

/// Parse a request line (without its newline).
pub fn parse_request(line: &str) -> Result<Target, TargetError> {
    line.strip_prefix(MAGIC)
        .ok_or(TargetError::NotRequest)?
        .parse()
}

/// Why the relay refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    Limit,
    Dns,
    Connect,
    BadRequest,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::Limit => "limit",
            Refusal::Dns => "dns",
            Refusal::Connect => "connect",
            Refusal::BadRequest => "bad-request",
        }
    }
}

/// The relay's reply line.
pub fn encode_reply(r: Result<(), (Refusal, &str)>) -> Vec<u8> {
    match r {
        Ok(()) => b"OK\n".to_vec(),
        Err((code, reason)) => {
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_LINE - 32)
                .collect();
            format!("ERR {} {reason}\n", code.code()).into_bytes()
        }
    }
}

/// Why the relay refused, as its reply line says (printable characters
/// only: the host wrote it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The relay's reply line (without its newline): `OK`, or `ERR <code> <reason>`.
pub fn parse_reply(line: &str) -> Result<(), Refused> {
    if line == "OK" {
        return Ok(());
    }
    let why: String = line
        .strip_prefix("ERR ")
        .unwrap_or(line)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LINE)
        .collect();
    Err(Refused(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_strictly() {
        let t: Target = "KMS.eu-west-1.amazonaws.com:443".parse().unwrap();
        assert_eq!(t.host, "kms.eu-west-1.amazonaws.com");
        assert_eq!(t.to_string(), "kms.eu-west-1.amazonaws.com:443");
        let v6: Target = "[::1]:8200".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:8200");
        for bad in [
            "nohost",
            "a:0",
            "a:70000",
            "a b:1",
            ":1",
            "[zz]:1",
            "evil\n.com:1",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        // Normalised: a trailing dot, case, IDNA; numeric names refused.
        let dot: Target = "X.Internal.Example.COM.:443".parse().unwrap();
        assert_eq!(dot.host, "x.internal.example.com");
        let idn: Target = "xn--bcher-kva.example:443".parse().unwrap();
        assert_eq!(idn.host, "xn--bcher-kva.example");
        assert_eq!(
            normalize_host("Bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_host("[::FFFF:7F00:1]").unwrap(),
            "127.0.0.1",
            "IPv4-mapped IPv6 is its IPv4 address"
        );
        for numeric in ["2130706433", "0x7f.1", "127.1", "10.0.0.010"] {
            assert!(
                normalize_host(numeric).is_err(),
                "{numeric} passed as a name"
            );
            let r = format!("{numeric}:443").parse::<Target>();
            assert!(r.is_err(), "{numeric}: {r:?}");
        }
        for bad in [
            "a..b:1",
            ".a:1",
            "a.:1.:1",
            "a..:1",
            "-a.com:1",
            "xn--zz.com:1",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let req = encode_request(&t);
        let line = std::str::from_utf8(&req).unwrap().trim_end();
        assert_eq!(parse_request(line).unwrap(), t);
        assert!(parse_request("GET / HTTP/1.1").is_err());
        assert_eq!(
            encode_reply(Err((Refusal::Denied, "no\nrule"))),
            b"ERR denied norule\n"
        );
    }
}
