//! The egress relay end to end: enclave-side tunnel (fixed port and HTTP
//! CONNECT) → Unix socket (the vsock seam) → host relay → a real TCP upstream
//! on loopback. Allow/deny rules, per-upstream limits, refusals, and 1,000
//! concurrent connections without a stall.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use host_proxy::metrics::Metrics;
use host_proxy::relay::{Relay, RelayConfig, Rule};
use pii_transport::relay::{open, serve_connect_proxy, serve_fixed, Target};
use pii_transport::{Addr, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

struct Setup {
    _dir: tempfile::TempDir,
    relay_addr: Addr,
    metrics: Arc<Metrics>,
}

async fn relay(allow: Vec<Rule>, deny: Vec<Rule>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let relay_addr: Addr = format!("unix:{}", dir.path().join("relay.sock").display())
        .parse()
        .unwrap();
    let cfg = RelayConfig {
        listen: relay_addr.to_string(),
        allow,
        deny,
        vsock_proxy_allowlist: None,
        connect_timeout: Duration::from_secs(2),
        dns_cache_ttl: Duration::from_secs(30),
        max_connections: 4096,
        idle_timeout: std::time::Duration::from_secs(300),
        max_lifetime: std::time::Duration::from_secs(3600),
    };
    let metrics = Arc::new(Metrics::new());
    let r = Arc::new(Relay::new(&cfg, metrics.clone()).unwrap());
    let listener = Listener::bind(&relay_addr).unwrap();
    tokio::spawn(r.serve_on(listener));
    Setup {
        _dir: dir,
        relay_addr,
        metrics,
    }
}

fn allow(host: &str, port: u16, max: Option<usize>) -> Rule {
    Rule {
        host: host.into(),
        port: Some(port),
        max_connections: max,
        allow_private: false,
    }
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_tunnel_and_connect_proxy_reach_allowed_upstreams_only() {
    let port = echo_server().await;
    let s = relay(vec![allow("127.0.0.1", port, None)], vec![]).await;
    let t: Target = format!("127.0.0.1:{port}").parse().unwrap();

    // Fixed local port in the enclave.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    tokio::spawn(serve_fixed(
        local,
        s.relay_addr.clone(),
        t.clone(),
        Duration::from_secs(2),
    ));
    let mut c = TcpStream::connect(local_addr).await.unwrap();
    round_trip(&mut c, b"hello through the relay").await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    round_trip(&mut c, &big).await;
    drop(c);

    // HTTP CONNECT proxy in the enclave.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    tokio::spawn(serve_connect_proxy(
        proxy,
        s.relay_addr.clone(),
        Duration::from_secs(2),
    ));
    let mut c = TcpStream::connect(proxy_addr).await.unwrap();
    c.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nearly")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 39];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let mut early = [0u8; 5];
    c.read_exact(&mut early).await.unwrap();
    assert_eq!(
        &early, b"early",
        "bytes sent with the CONNECT head are forwarded"
    );
    round_trip(&mut c, b"more").await;

    // Not allowed: refused by the host relay, with the reason.
    let err = open(
        &s.relay_addr,
        &"example.com:443".parse().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("denied") && err.contains("no allow rule"),
        "{err}"
    );
    let other_port: Target = format!("127.0.0.1:{}", port.wrapping_add(1).max(1))
        .parse()
        .unwrap();
    assert!(open(&s.relay_addr, &other_port, Duration::from_secs(2))
        .await
        .is_err());
    let mut c = TcpStream::connect(proxy_addr).await.unwrap();
    c.write_all(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let mut c = TcpStream::connect(proxy_addr).await.unwrap();
    c.write_all(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");

    // A garbage preamble is answered, not crashed on.
    let mut raw = pii_transport::connect(&s.relay_addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\n").await.unwrap();
    let mut resp = String::new();
    raw.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("ERR bad-request"), "{resp}");

    let m = s.metrics.encode();
    assert!(m.contains("result=\"ok\""), "{m}");
    assert!(m.contains("result=\"denied\""), "{m}");
    assert!(m.contains("pii_proxy_relay_bytes_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_win_and_per_upstream_limits_hold() {
    let port = echo_server().await;
    let s = relay(vec![allow("127.0.0.1", port, Some(2))], vec![]).await;
    let t: Target = format!("127.0.0.1:{port}").parse().unwrap();
    let a = open(&s.relay_addr, &t, Duration::from_secs(2))
        .await
        .unwrap();
    let b = open(&s.relay_addr, &t, Duration::from_secs(2))
        .await
        .unwrap();
    let err = open(&s.relay_addr, &t, Duration::from_secs(2))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("limit"), "{err}");
    drop(a);
    // The slot frees when a connection ends.
    let mut ok = false;
    for _ in 0..50 {
        if open(&s.relay_addr, &t, Duration::from_secs(2))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "limit slot never freed");
    drop(b);

    let s = relay(
        vec![Rule {
            host: "*".into(),
            port: None,
            max_connections: None,
            allow_private: true,
        }],
        vec![allow("127.0.0.1", port, None)],
    )
    .await;
    let err = open(&s.relay_addr, &t, Duration::from_secs(2))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("deny rule"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_without_a_stall() {
    let port = echo_server().await;
    let s = relay(vec![allow("127.0.0.1", port, None)], vec![]).await;
    let t: Target = format!("127.0.0.1:{port}").parse().unwrap();
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    tokio::spawn(serve_fixed(
        local,
        s.relay_addr.clone(),
        t,
        Duration::from_secs(10),
    ));
    // Every connection is held open until all are established, so all 1,000
    // are concurrent (the AWS vsock-proxy serves 4 at a time).
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(local_addr).await.unwrap();
            round_trip(&mut c, &i.to_le_bytes()).await;
            barrier.wait().await;
            for _ in 0..5 {
                round_trip(&mut c, &[7u8; 64]).await;
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    // Not a performance bound (that is the benchmark's job): a stall shows up
    // as never finishing.
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("1,000 concurrent relayed connections stalled");
    assert!(s.metrics.encode().contains("result=\"ok\"} 1000"));
}
