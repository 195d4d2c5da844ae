//! The egress relay's wire format and its enclave side.
//!
//! The enclave has no network. To reach Vault or KMS it opens a stream to the
//! host's relay (vsock in production, a Unix socket in dev), names the
//! upstream in one preamble line, and from then on the stream carries the
//! enclave's own TLS bytes, which the host only copies:
//!
//! ```text
//! enclave → host   PIIRELAY/1 CONNECT kms.eu-west-1.amazonaws.com:443\n
//! host → enclave   OK\n                 (or: ERR denied <reason>\n)
//! ...raw bytes both ways...
//! ```
//!
//! Inside the enclave, [`serve_fixed`] gives ordinary clients a local TCP port
//! per upstream (point the SDK's endpoint host at 127.0.0.1 via /etc/hosts),
//! and [`serve_connect_proxy`] is an HTTP `CONNECT` proxy (`HTTPS_PROXY`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::addr::{connect, Addr, BoxIo};

/// Buffer per direction when copying.
pub const COPY_BUF: usize = 64 * 1024;

pub use pii_proto::relay::{
    encode_reply, encode_request, normalize_host, parse_reply, parse_request, Refusal, Refused,
    Target, TargetError, MAX_LINE,
};

/// Read one `\n`-terminated line of at most [`MAX_LINE`] bytes, byte by byte
/// so that nothing after it is consumed.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::with_capacity(64);
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if line.len() >= MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "relay line too long",
            ));
        }
        line.push(b);
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "relay line is not UTF-8"))
}

/// Open a relayed stream to `target` (enclave side).
pub async fn open(relay: &Addr, target: &Target, timeout: Duration) -> io::Result<BoxIo> {
    let fut = async {
        let mut s = connect(relay).await?;
        s.write_all(&encode_request(target)).await?;
        let reply = read_line(&mut s).await?;
        match parse_reply(&reply) {
            Ok(()) => Ok(s),
            Err(why) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("relay refused {target}: {why}"),
            )),
        }
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("relay: no answer for {target} in {timeout:?}"),
        )
    })?
}

/// Copy both ways until both sides are done.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUF, COPY_BUF).await
}

/// How a [`splice_bounded`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed.
    Closed,
    /// No byte in either direction for the idle timeout.
    Idle,
    /// The connection reached its maximum lifetime.
    Lifetime,
}

/// Write `data` to `w` (empty: shut its write side), within the idle
/// timeout and the lifetime: a peer that stops reading must not stall the
/// limits. `false` when the deadline passed first.
async fn forward<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
    idle: Duration,
    end: tokio::time::Instant,
) -> io::Result<bool> {
    let deadline = (tokio::time::Instant::now() + idle).min(end);
    let write = async {
        if data.is_empty() {
            w.shutdown().await
        } else {
            w.write_all(data).await
        }
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(r) => r.map(|()| true),
        Err(_) => Ok(false),
    }
}

fn stalled(end: tokio::time::Instant) -> SpliceEnd {
    if tokio::time::Instant::now() >= end {
        SpliceEnd::Lifetime
    } else {
        SpliceEnd::Idle
    }
}

/// [`splice`] with an idle timeout (no byte either way) and a maximum
/// lifetime; half-closes are passed on. Returns the bytes copied each way
/// (a → b, b → a) and why it ended.
pub async fn splice_bounded<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    lifetime: Duration,
) -> io::Result<(u64, u64, SpliceEnd)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let end = tokio::time::Instant::now() + lifetime;
    let (mut buf_a, mut buf_b) = (vec![0u8; COPY_BUF], vec![0u8; COPY_BUF]);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let idle_at = (tokio::time::Instant::now() + idle).min(end);
        tokio::select! {
            r = a.read(&mut buf_a), if a_open => {
                let n = r?;
                if !forward(&mut *b, &buf_a[..n], idle, end).await? {
                    return Ok((up, down, stalled(end)));
                }
                if n == 0 { a_open = false } else { up += n as u64 }
            }
            r = b.read(&mut buf_b), if b_open => {
                let n = r?;
                if !forward(&mut *a, &buf_b[..n], idle, end).await? {
                    return Ok((up, down, stalled(end)));
                }
                if n == 0 { b_open = false } else { down += n as u64 }
            }
            () = tokio::time::sleep_until(idle_at) => return Ok((up, down, stalled(end))),
        }
    }
    Ok((up, down, SpliceEnd::Closed))
}

/// Enclave side: every connection to `local` is relayed to `target`.
pub async fn serve_fixed(
    local: TcpListener,
    relay: Addr,
    target: Target,
    timeout: Duration,
) -> io::Result<()> {
    loop {
        let (mut client, _) = local.accept().await?;
        let _ = client.set_nodelay(true);
        let (relay, target) = (relay.clone(), target.clone());
        tokio::spawn(async move {
            match open(&relay, &target, timeout).await {
                Ok(mut up) => {
                    let _ = splice(&mut client, &mut up).await;
                }
                Err(e) => tracing::warn!(%target, error = %e, "egress refused"),
            }
        });
    }
}

/// Enclave side: an HTTP `CONNECT` proxy (for `HTTPS_PROXY`). Only `CONNECT`
/// is served; the tunnel carries the client's own TLS.
pub async fn serve_connect_proxy(
    local: TcpListener,
    relay: Addr,
    timeout: Duration,
) -> io::Result<()> {
    loop {
        let (client, _) = local.accept().await?;
        let _ = client.set_nodelay(true);
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = connect_proxy_one(client, relay, timeout).await;
        });
    }
}

async fn connect_proxy_one(client: TcpStream, relay: Addr, timeout: Duration) -> io::Result<()> {
    let mut rd = BufReader::new(client);
    let mut head = String::new();
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(timeout, rd.read_line(&mut line))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "slow CONNECT request"))??;
        if n == 0 {
            return Ok(());
        }
        head.push_str(&line);
        if head.len() > 8192 {
            rd.get_mut()
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                .await?;
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.trim_end().to_owned();
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split(' ');
    let target = match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(t)) => t.parse::<Target>().map_err(|e| e.to_string()),
        _ => Err("only CONNECT is supported".to_string()),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            let body = format!(
                "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: {}\r\n\r\n{e}",
                e.len()
            );
            rd.get_mut().write_all(body.as_bytes()).await?;
            return Ok(());
        }
    };
    match open(&relay, &target, timeout).await {
        Ok(mut up) => {
            rd.get_mut()
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await?;
            // Bytes the client sent after the request head are already buffered.
            let buffered = rd.buffer().to_vec();
            if !buffered.is_empty() {
                up.write_all(&buffered).await?;
            }
            let mut client = rd.into_inner();
            splice(&mut client, &mut up).await?;
            Ok(())
        }
        Err(e) => {
            let status = if e.kind() == io::ErrorKind::TimedOut {
                "504 Gateway Timeout"
            } else {
                "403 Forbidden"
            };
            let msg = e.to_string();
            let body = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{msg}",
                msg.len()
            );
            rd.get_mut().write_all(body.as_bytes()).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_line_is_bounded() {
        let long = vec![b'a'; MAX_LINE + 10];
        let err = read_line(&mut long.as_slice()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut two = b"first\nsecond".as_slice();
        assert_eq!(read_line(&mut two).await.unwrap(), "first");
        assert_eq!(two, b"second");
    }
}
