use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pii_proto::{
    ErrorCode, Frame, FrameDecoder, Hello, HelloReply, Message, ProtoError, Request, Response,
    HELLO_LEN, PROTOCOL_VERSION, STATUS_NO_COMMON_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::AbortHandle;

use crate::BoxIo;

/// Tunables of one connection.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Largest frame accepted or sent, header included.
    pub max_frame: usize,
    /// Most requests from the other side handled at once; further frames wait.
    pub max_concurrent_incoming: usize,
    /// Frames queued for the writer before senders wait.
    pub write_queue: usize,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Label for logs.
    pub name: String,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            max_frame: 48 * 1024 * 1024,
            max_concurrent_incoming: 1024,
            write_queue: 4096,
            handshake_timeout: Duration::from_secs(5),
            name: "peer".into(),
        }
    }
}

/// Why a call did not produce a response.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    #[error("connection to the peer is closed")]
    Closed,
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    #[error("request does not fit in a frame: {0}")]
    Encode(ProtoError),
}

/// Serves the requests the other side sends.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request. `peer` may be used to call back to the other side.
    fn handle(&self, request: Request, peer: Peer) -> impl Future<Output = Response> + Send;
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Response>>>;

struct Inner {
    name: String,
    out: mpsc::Sender<Bytes>,
    pending: Pending,
    in_flight: Mutex<HashMap<u64, AbortHandle>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    closed_tx: watch::Sender<bool>,
    max_frame: usize,
    /// The reader and writer tasks, aborted on shutdown so the socket closes.
    tasks: Mutex<Vec<AbortHandle>>,
}

/// One end of a multiplexed connection. Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.inner.name)
            .field("closed", &self.is_closed())
            .finish()
    }
}

async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<[u8; HELLO_LEN]> {
    let mut b = [0u8; HELLO_LEN];
    r.read_exact(&mut b).await?;
    Ok(b)
}

fn proto_io(e: ProtoError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

/// Connecting side of the handshake. Returns the agreed version.
pub async fn handshake_client(io: &mut BoxIo, timeout: Duration) -> std::io::Result<u16> {
    let ours = Hello::default();
    tokio::time::timeout(timeout, async {
        io.write_all(&ours.encode()).await?;
        io.flush().await?;
        let reply = HelloReply::decode(&read_hello(io).await?).map_err(proto_io)?;
        reply.into_version(ours).map_err(proto_io)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Accepting side of the handshake. Returns the agreed version.
pub async fn handshake_server(io: &mut BoxIo, timeout: Duration) -> std::io::Result<u16> {
    let ours = Hello::default();
    tokio::time::timeout(timeout, async {
        let theirs = Hello::decode(&read_hello(io).await?).map_err(proto_io)?;
        match theirs.negotiate(ours) {
            Ok(v) => {
                io.write_all(&HelloReply::Accepted(v).encode()).await?;
                io.flush().await?;
                Ok(v)
            }
            Err(e) => {
                let reply = HelloReply::Rejected {
                    version: PROTOCOL_VERSION,
                    status: STATUS_NO_COMMON_VERSION,
                };
                io.write_all(&reply.encode()).await?;
                io.flush().await?;
                Err(proto_io(e))
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

impl Peer {
    /// Run the protocol over an already handshaken `io`, serving incoming
    /// requests with `handler`. Returns at once; the connection lives in
    /// background tasks until either side closes it or a protocol error occurs.
    pub fn start<H: Handler>(io: BoxIo, handler: Arc<H>, cfg: PeerConfig) -> Peer {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(cfg.write_queue.max(1));
        let (closed_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: cfg.name.clone(),
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closed_tx,
            max_frame: cfg.max_frame,
            tasks: Mutex::new(Vec::new()),
        });
        let peer = Peer { inner };
        let writer = tokio::spawn(write_loop(wr, out_rx));
        let p = peer.clone();
        let writer_abort = writer.abort_handle();
        let reader = tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(cfg.max_concurrent_incoming.max(1)));
            let res = read_loop(rd, p.clone(), handler, limit, cfg.max_frame).await;
            match res {
                Ok(()) => tracing::debug!(peer = %p.inner.name, "connection closed by peer"),
                Err(e) => tracing::warn!(peer = %p.inner.name, error = %e, "connection closed"),
            }
            p.shutdown();
        });
        if let Ok(mut t) = peer.inner.tasks.lock() {
            t.push(writer_abort);
            t.push(reader.abort_handle());
        }
        if peer.is_closed() {
            peer.abort_tasks();
        }
        peer
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Close the connection and fail every pending call.
    pub fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Dropping the senders wakes every waiting caller with `Closed`.
        self.inner.pending.lock().map(|mut p| p.clear()).ok();
        if let Ok(mut f) = self.inner.in_flight.lock() {
            for (_, h) in f.drain() {
                h.abort();
            }
        }
        self.inner.closed_tx.send_replace(true);
        self.abort_tasks();
    }

    fn abort_tasks(&self) {
        if let Ok(mut t) = self.inner.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }

    /// Number of our requests waiting for an answer.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Send `request` and wait for its response, at most `timeout` (also sent
    /// to the other side as the request's deadline).
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, CallError> {
        if self.is_closed() {
            return Err(CallError::Closed);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let frame = Message::Request {
            id,
            deadline_ms,
            request,
        }
        .to_frame()
        .map_err(CallError::Encode)?;
        let bytes = encode(&frame, self.inner.max_frame).map_err(CallError::Encode)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending.lock().map_err(|_| CallError::Closed)?;
            p.insert(id, tx);
        }
        // Re-check after registering: shutdown may have drained the map just before.
        if self.is_closed() {
            self.forget(id);
            return Err(CallError::Closed);
        }
        if self.inner.out.send(bytes).await.is_err() {
            self.forget(id);
            return Err(CallError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => {
                self.forget(id);
                if let Ok(f) = (Message::Cancel { id }).to_frame() {
                    if let Ok(b) = encode(&f, self.inner.max_frame) {
                        let _ = self.inner.out.try_send(b);
                    }
                }
                Err(CallError::Timeout(timeout))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.inner.pending.lock() {
            p.remove(&id);
        }
    }
}

fn encode(frame: &Frame, max: usize) -> Result<Bytes, ProtoError> {
    let mut b = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(max, &mut b)?;
    Ok(b.freeze())
}

async fn write_loop<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
        // Coalesce: flush only when nothing else is queued.
        while let Ok(b) = rx.try_recv() {
            if w.write_all(&b).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
}

async fn read_loop<R: AsyncRead + Unpin, H: Handler>(
    mut rd: R,
    peer: Peer,
    handler: Arc<H>,
    limit: Arc<Semaphore>,
    max_frame: usize,
) -> Result<(), ReadError> {
    let mut dec = FrameDecoder::new(max_frame);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(frame) = dec.decode(&mut buf)? {
            dispatch(frame, &peer, &handler, &limit).await?;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if rd.read_buf(&mut buf).await? == 0 {
            if buf.is_empty() {
                return Ok(());
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

async fn dispatch<H: Handler>(
    frame: Frame,
    peer: &Peer,
    handler: &Arc<H>,
    limit: &Arc<Semaphore>,
) -> Result<(), ReadError> {
    let id = frame.id;
    let msg = match Message::from_frame(&frame) {
        Ok(m) => m,
        // A well-framed request we cannot decode gets an error answer; the
        // stream itself is still in sync.
        Err(e) if frame.kind == pii_proto::FrameKind::Request => {
            tracing::warn!(peer = %peer.inner.name, id, error = %e, "undecodable request");
            respond(peer, id, Response::Error(ErrorCode::BadRequest)).await;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match msg {
        Message::Response { id, response } => {
            let tx = peer
                .inner
                .pending
                .lock()
                .ok()
                .and_then(|mut p| p.remove(&id));
            if let Some(tx) = tx {
                let _ = tx.send(response);
            }
        }
        Message::Cancel { id } => {
            let h = peer
                .inner
                .in_flight
                .lock()
                .ok()
                .and_then(|mut f| f.remove(&id));
            if let Some(h) = h {
                h.abort();
            }
        }
        Message::Request {
            id,
            deadline_ms,
            request,
        } => {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return Ok(());
            };
            let h = handler.clone();
            let p = peer.clone();
            let task = tokio::spawn(async move {
                let fut = h.handle(request, p.clone());
                let resp = if deadline_ms == 0 {
                    fut.await
                } else {
                    let d = Duration::from_millis(u64::from(deadline_ms));
                    tokio::time::timeout(d, fut)
                        .await
                        .unwrap_or(Response::Error(ErrorCode::DeadlineExceeded))
                };
                if let Ok(mut f) = p.inner.in_flight.lock() {
                    f.remove(&id);
                }
                respond(&p, id, resp).await;
                drop(permit);
            });
            if let Ok(mut f) = peer.inner.in_flight.lock() {
                if !task.is_finished() {
                    f.insert(id, task.abort_handle());
                }
            }
        }
    }
    Ok(())
}

async fn respond(peer: &Peer, id: u64, resp: Response) {
    let msg = Message::Response { id, response: resp };
    let bytes = match msg
        .to_frame()
        .and_then(|f| encode(&f, peer.inner.max_frame))
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(peer = %peer.inner.name, id, error = %e, "response does not fit in a frame");
            let small = Message::Response {
                id,
                response: Response::Error(ErrorCode::TooLarge),
            };
            match small
                .to_frame()
                .and_then(|f| encode(&f, peer.inner.max_frame))
            {
                Ok(b) => b,
                Err(_) => return,
            }
        }
    };
    let _ = peer.inner.out.send(bytes).await;
}
