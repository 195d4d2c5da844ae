use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

/// Anything a peer can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connected byte stream of either transport.
pub type BoxIo = Box<dyn Io>;

/// Where the enclave listens.
///
/// Textual forms: `vsock://CID:PORT` (CID `any` = `VMADDR_CID_ANY` for
/// listeners) and `unix:/path` or `unix:///path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Vsock { cid: u32, port: u32 },
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid transport address {input:?}: {reason} (expected vsock://CID:PORT or unix:/path)")]
pub struct AddrParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Addr {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddrParseError {
            input: s.to_owned(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or_else(|| err("missing :PORT"))?;
            let cid = if cid.eq_ignore_ascii_case("any") {
                tokio_vsock::VMADDR_CID_ANY
            } else {
                cid.parse().map_err(|_| err("CID is not a number"))?
            };
            let port = port.parse().map_err(|_| err("PORT is not a number"))?;
            Ok(Addr::Vsock { cid, port })
        } else if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(err("empty path"));
            }
            Ok(Addr::Unix(PathBuf::from(path)))
        } else {
            Err(err("unknown scheme"))
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Vsock { cid, port } if *cid == tokio_vsock::VMADDR_CID_ANY => {
                write!(f, "vsock://any:{port}")
            }
            Addr::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound listener of either transport.
#[derive(Debug)]
pub enum Listener {
    Vsock(VsockListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Bind. A stale Unix socket file at the path is replaced.
    pub fn bind(addr: &Addr) -> io::Result<Listener> {
        match addr {
            Addr::Vsock { cid, port } => Ok(Listener::Vsock(VsockListener::bind(VsockAddr::new(
                *cid, *port,
            ))?)),
            Addr::Unix(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)?;
                    }
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    pub async fn accept(&self) -> io::Result<(BoxIo, String)> {
        match self {
            Listener::Vsock(l) => {
                let (s, peer) = l.accept().await?;
                Ok((
                    Box::new(s),
                    format!("vsock://{}:{}", peer.cid(), peer.port()),
                ))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), format!("unix:{}", path.display())))
            }
        }
    }

    /// The bound address (for vsock, the kernel-assigned port if 0 was asked).
    pub fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Vsock(l) => {
                let a = l.local_addr()?;
                Ok(Addr::Vsock {
                    cid: a.cid(),
                    port: a.port(),
                })
            }
            Listener::Unix(_, p) => Ok(Addr::Unix(p.clone())),
        }
    }
}

/// Connect to `addr`.
pub async fn connect(addr: &Addr) -> io::Result<BoxIo> {
    match addr {
        Addr::Vsock { cid, port } => Ok(Box::new(
            VsockStream::connect(VsockAddr::new(*cid, *port)).await?,
        )),
        Addr::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(
            "vsock://16:5000".parse::<Addr>(),
            Ok(Addr::Vsock {
                cid: 16,
                port: 5000
            })
        );
        let any: Addr = "vsock://any:5000".parse().unwrap();
        assert_eq!(any.to_string(), "vsock://any:5000");
        assert_eq!(
            "unix:///tmp/x.sock".parse::<Addr>(),
            Ok(Addr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            "unix:rel.sock".parse::<Addr>(),
            Ok(Addr::Unix("rel.sock".into()))
        );
        for bad in [
            "tcp://1:2",
            "vsock://x:1",
            "vsock://1",
            "unix:",
            "vsock://1:99999999999",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    /// Binding an AF_VSOCK listener is allowed on this machine; connecting to
    /// any CID is not, so this test never connects.
    #[tokio::test]
    async fn vsock_listener_binds_when_available() {
        let addr = Addr::Vsock {
            cid: tokio_vsock::VMADDR_CID_ANY,
            port: 0x7fff_0000 + std::process::id() % 0xffff,
        };
        match Listener::bind(&addr) {
            Ok(l) => {
                let local = l.local_addr().unwrap();
                assert!(matches!(local, Addr::Vsock { .. }));
            }
            // Machines without the vsock module (most CI runners) cannot bind.
            Err(e) => eprintln!("vsock unavailable here: {e}"),
        }
    }
}
