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
/// listeners), `unix:/path` or `unix:///path`, and `hvsock:/path:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Vsock {
        cid: u32,
        port: u32,
    },
    Unix(PathBuf),
    /// "Hybrid vsock", as Firecracker and `vhost-device-vsock` expose a
    /// guest's vsock on the host: the Unix socket `uds` of the VM's vsock
    /// device. Connecting sends `CONNECT <port>\n` and expects `OK <n>\n`,
    /// then the stream is the guest's port `port`; listening binds
    /// `<uds>_<port>`, where the backend delivers connections the guest makes
    /// to the host's CID on `port`.
    HybridVsock {
        uds: PathBuf,
        port: u32,
    },
}

/// Longest `OK <n>` reply of a hybrid-vsock backend we read.
const HYBRID_REPLY_MAX: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid transport address {input:?}: {reason} (expected vsock://CID:PORT, unix:/path or hvsock:/path:PORT)")]
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
        } else if let Some(rest) = s.strip_prefix("hvsock:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
            if path.is_empty() {
                return Err(err("empty path"));
            }
            let port = port.parse().map_err(|_| err("PORT is not a number"))?;
            Ok(Addr::HybridVsock {
                uds: PathBuf::from(path),
                port,
            })
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
            Addr::HybridVsock { uds, port } => write!(f, "hvsock:{}:{port}", uds.display()),
        }
    }
}

impl Addr {
    /// The Unix socket a hybrid-vsock listener on `port` binds: the backend
    /// delivers the guest's connections to the host on `port` there.
    pub fn hybrid_listen_path(uds: &std::path::Path, port: u32) -> PathBuf {
        let mut p = uds.as_os_str().to_owned();
        p.push(format!("_{port}"));
        PathBuf::from(p)
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
            Addr::HybridVsock { uds, port } => {
                Listener::bind(&Addr::Unix(Addr::hybrid_listen_path(uds, *port)))
            }
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
        Addr::HybridVsock { uds, port } => Ok(Box::new(hybrid_connect(uds, *port).await?)),
    }
}

/// How long a hybrid-vsock backend may take to answer `CONNECT` (a backend
/// that accepts but never answers, e.g. a guest whose vsock driver never
/// loads, must not hold a connection slot forever).
const HYBRID_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connect to guest port `port` through a hybrid-vsock backend's socket,
/// the reply bounded by [`HYBRID_REPLY_TIMEOUT`].
async fn hybrid_connect(uds: &std::path::Path, port: u32) -> io::Result<UnixStream> {
    tokio::time::timeout(HYBRID_REPLY_TIMEOUT, hybrid_handshake(uds, port))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "hvsock {}: no reply to CONNECT {port} in {HYBRID_REPLY_TIMEOUT:?}",
                    uds.display()
                ),
            )
        })?
}

async fn hybrid_handshake(uds: &std::path::Path, port: u32) -> io::Result<UnixStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the reply byte by byte so nothing after it is consumed.
    let mut line = Vec::with_capacity(16);
    loop {
        let b = s.read_u8().await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("hvsock {}: no reply to CONNECT {port}: {e}", uds.display()),
            )
        })?;
        if b == b'\n' {
            break;
        }
        if line.len() >= HYBRID_REPLY_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hvsock {}: reply to CONNECT {port} too long", uds.display()),
            ));
        }
        line.push(b);
    }
    let ok = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix("OK "))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "hvsock {}: CONNECT {port} refused ({:?})",
                uds.display(),
                String::from_utf8_lossy(&line)
            ),
        ))
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
        assert_eq!(
            "hvsock:/run/vm.vsock:5000".parse::<Addr>(),
            Ok(Addr::HybridVsock {
                uds: "/run/vm.vsock".into(),
                port: 5000
            })
        );
        let h: Addr = "hvsock:///run/a:b.vsock:7".parse().unwrap();
        assert_eq!(h.to_string(), "hvsock:/run/a:b.vsock:7");
        assert_eq!(
            Addr::hybrid_listen_path(std::path::Path::new("/run/vm.vsock"), 8000),
            PathBuf::from("/run/vm.vsock_8000")
        );
        for bad in [
            "hvsock:/x",
            "hvsock::5",
            "hvsock:/x:port",
            "tcp://1:2",
            "vsock://x:1",
            "vsock://1",
            "unix:",
            "vsock://1:99999999999",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    /// A stand-in for vhost-device-vsock's socket: answers `CONNECT <p>` as
    /// `reply`, then echoes.
    async fn backend(path: PathBuf, reply: &'static str) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut line = vec![];
                    while let Ok(b) = s.read_u8().await {
                        if b == b'\n' {
                            break;
                        }
                        line.push(b);
                    }
                    assert!(line.starts_with(b"CONNECT "), "{line:?}");
                    let _ = s.write_all(reply.as_bytes()).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn hybrid_vsock_connects_refuses_and_listens() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.vsock");
        backend(ok.clone(), "OK 1073741824\n").await;
        let mut s = connect(&Addr::HybridVsock {
            uds: ok.clone(),
            port: 5000,
        })
        .await
        .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping", "the stream after OK is the guest's");

        for (name, reply) in [
            ("refused", "ERR no listener\n"),
            ("empty", "OK \n"),
            ("long", "OK 111111111111111111111111111111111111111\n"),
        ] {
            let p = dir.path().join(format!("{name}.vsock"));
            backend(p.clone(), reply).await;
            let e = connect(&Addr::HybridVsock { uds: p, port: 5000 })
                .await
                .err()
                .unwrap();
            assert!(e.to_string().contains("CONNECT 5000"), "{name}: {e}");
        }
        // No backend at all: a plain connect error.
        assert!(connect(&Addr::HybridVsock {
            uds: dir.path().join("none"),
            port: 1
        })
        .await
        .is_err());

        // Guest-initiated: the listener is `<uds>_<port>`.
        let l = Listener::bind(&Addr::HybridVsock {
            uds: ok.clone(),
            port: 8000,
        })
        .unwrap();
        let p = Addr::hybrid_listen_path(&ok, 8000);
        let c = tokio::spawn(async move { UnixStream::connect(p).await.unwrap() });
        let (_s, from) = l.accept().await.unwrap();
        assert!(from.ends_with("ok.vsock_8000"), "{from}");
        c.await.unwrap();
    }

    /// A backend that accepts and never answers (a guest whose vsock driver
    /// never loads, or a hostile host) cannot hold a connection forever.
    #[tokio::test(start_paused = true)]
    async fn hybrid_vsock_silence_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("silent.vsock");
        let l = UnixListener::bind(&p).unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(s);
        });
        let e = connect(&Addr::HybridVsock { uds: p, port: 5000 })
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("no reply to CONNECT 5000"), "{e}");
        hold.abort();
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
