//! Egress relay vs a direct TCP connection on loopback, in one process:
//! bulk throughput, round-trip latency, and 1,000 concurrent connections.
//! The relayed path is the production one minus vsock: client → enclave-side
//! tunnel (TCP) → Unix socket (the vsock seam) → host relay → upstream (TCP).
//!
//! `cargo bench -p host-proxy --bench relay` (part of `just bench`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use host_proxy::metrics::Metrics;
use host_proxy::relay::{Relay, RelayConfig, Rule};
use pii_transport::relay::{serve_fixed, Target};
use pii_transport::{Addr, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK: usize = 512 << 20;

/// Echo for round trips; on the first byte 'B', a sink that answers "done"
/// after BULK bytes.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if n > 0 && buf[0] == b'B' {
                    let mut got = n;
                    while got < BULK {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got += k,
                        }
                    }
                    let _ = s.write_all(b"done").await;
                } else {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    a
}

async fn bulk(to: SocketAddr) -> f64 {
    let mut s = TcpStream::connect(to).await.expect("connect");
    let chunk = vec![b'B'; 1 << 20];
    let t = Instant::now();
    for _ in 0..BULK / chunk.len() {
        s.write_all(&chunk).await.expect("write");
    }
    let mut done = [0u8; 4];
    s.read_exact(&mut done).await.expect("done");
    (BULK as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}

async fn latency(to: SocketAddr, n: usize) -> (f64, f64) {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let msg = [1u8; 64];
    let mut back = [0u8; 64];
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let t = Instant::now();
        s.write_all(&msg).await.expect("write");
        s.read_exact(&mut back).await.expect("read");
        if i >= 1000 {
            v.push(t.elapsed());
        }
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99))
}

async fn concurrent(to: SocketAddr, conns: usize, rounds: usize) -> (f64, f64, f64) {
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let b = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let mut back = [0u8; 64];
            b.wait().await;
            let mut v = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let t = Instant::now();
                s.write_all(&[2u8; 64]).await.expect("write");
                s.read_exact(&mut back).await.expect("read");
                v.push(t.elapsed());
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = t.elapsed().as_secs_f64();
    let max = all.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3;
    (all.len() as f64 / secs, pct(&mut all, 0.99) / 1e3, max)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let up = upstream().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let relay_addr: Addr = format!("unix:{}", dir.path().join("relay.sock").display())
            .parse()
            .expect("addr");
        let cfg = RelayConfig {
            listen: relay_addr.to_string(),
            allow: vec![Rule {
                host: "127.0.0.1".into(),
                port: Some(up.port()),
                max_connections: None,
                allow_private: false,
            }],
            deny: vec![],
            vsock_proxy_allowlist: None,
            connect_timeout: Duration::from_secs(5),
            dns_cache_ttl: Duration::from_secs(30),
            max_connections: 16_384,
            idle_timeout: std::time::Duration::from_secs(300),
            max_lifetime: std::time::Duration::from_secs(3600),
        };
        let relay = Arc::new(Relay::new(&cfg, Arc::new(Metrics::new())).expect("relay"));
        tokio::spawn(relay.serve_on(Listener::bind(&relay_addr).expect("bind relay")));
        let local = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let via = local.local_addr().expect("addr");
        let target: Target = up.to_string().parse().expect("target");
        tokio::spawn(serve_fixed(local, relay_addr, target, Duration::from_secs(5)));

        println!("cores: {}", std::thread::available_parallelism().map_or(1, |n| n.get()));
        let (d, r) = (bulk(up).await, bulk(via).await);
        println!("bulk 512 MiB        direct {d:8.0} MiB/s   relay {r:8.0} MiB/s   relay/direct {:.2}", r / d);
        let (dp50, dp99) = latency(up, 20_000).await;
        let (rp50, rp99) = latency(via, 20_000).await;
        println!(
            "64 B round trip     direct p50 {dp50:6.1} µs p99 {dp99:6.1} µs   relay p50 {rp50:6.1} µs p99 {rp99:6.1} µs   added p50 {:.1} µs",
            rp50 - dp50
        );
        for conns in [1000usize] {
            let (drps, dp99, dmax) = concurrent(up, conns, 20).await;
            let (rrps, rp99, rmax) = concurrent(via, conns, 20).await;
            println!(
                "{conns} connections  direct {drps:8.0} rt/s p99 {dp99:6.2} ms max {dmax:6.1} ms   relay {rrps:8.0} rt/s p99 {rp99:6.2} ms max {rmax:6.1} ms"
            );
        }
    });
}
