//! Stored random tokens against the embedded SQLite store and a real
//! PostgreSQL server: round trips, metadata, TTL, tidy, forged tokens,
//! restarts, ciphertext-only storage, and no acknowledged token lost when the
//! store dies mid-batch.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use pii_engine::clock::{Clock as _, ManualClock, SystemClock};

use pii_tests::{Client, PgDb, Stack, StackOpts};
use serde_json::{json, Value};

/// The stored-token table's raw bytes (keys and values), to look for
/// plaintext in what the host keeps.
async fn table_bytes(db: &PgDb) -> Vec<u8> {
    let c = db.connect().await;
    let rows = c
        .query("SELECT key, value FROM pii_tokens", &[])
        .await
        .unwrap();
    let mut out = vec![];
    for r in rows {
        out.extend(r.get::<_, String>(0).into_bytes());
        out.extend(r.get::<_, Vec<u8>>(1));
    }
    out
}

/// A clock at today's time that moves only when the test says so (token
/// expiry without sleeping).
fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at(SystemClock.unix()))
}

async fn setup(c: &Client) {
    for (name, body) in [
        (
            "stored",
            json!({"mapping_mode": "stored", "max_ttl": "1h", "allowed_roles": ["svc"]}),
        ),
        (
            "conv",
            json!({"mapping_mode": "stored", "convergent": true, "allowed_roles": ["svc"], "prefix": "c_"}),
        ),
    ] {
        let r = c
            .post(
                &format!("transform/transformations/tokenization/{name}"),
                body,
            )
            .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    let r = c
        .post(
            "transform/role/svc",
            json!({"transformations": ["stored", "conv"]}),
        )
        .await;
    assert_eq!(r.status, 204);
}

async fn exercise(stack: &mut Stack, clock: &ManualClock, store_bytes: impl AsyncFn() -> Vec<u8>) {
    let c = stack.client();
    setup(&c).await;
    let secret = "078-05-1120 stored-secret";
    let r = c
        .post(
            "transform/encode/svc",
            json!({"value": secret, "transformation": "stored", "metadata": {"source": "signup"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let tok = r.data("encoded_value").as_str().unwrap().to_owned();
    assert!(tok.starts_with("tok_"));
    // Random tokens: the same value gives a new token; convergent ones repeat.
    let tok2 = c
        .post(
            "transform/encode/svc",
            json!({"value": secret, "transformation": "stored"}),
        )
        .await;
    assert_ne!(tok2.data("encoded_value"), &json!(tok));
    let c1 = c
        .post(
            "transform/encode/svc",
            json!({"value": secret, "transformation": "conv"}),
        )
        .await;
    let c2 = c
        .post(
            "transform/encode/svc",
            json!({"value": secret, "transformation": "conv"}),
        )
        .await;
    assert_eq!(c1.data("encoded_value"), c2.data("encoded_value"));
    let d = c
        .post(
            "transform/decode/svc",
            json!({"value": tok, "transformation": "stored"}),
        )
        .await;
    assert_eq!(d.data("decoded_value"), secret);
    let m = c
        .post(
            "transform/metadata/svc",
            json!({"value": tok, "transformation": "stored"}),
        )
        .await;
    assert_eq!(m.data("metadata"), &json!({"source": "signup"}));
    let t = c
        .post(
            "transform/tokenized/svc",
            json!({"value": tok, "transformation": "stored"}),
        )
        .await;
    assert_eq!(t.data("is_tokenized"), true);

    // Batch of 1,000 with references.
    let items: Vec<Value> = (0..1000).map(|i| json!({"value": format!("user-{i}@example.com"), "transformation": "stored", "reference": i.to_string()})).collect();
    let r = c
        .post("transform/encode/svc", json!({"batch_input": items}))
        .await;
    assert_eq!(r.status, 200);
    let toks: Vec<Value> = r.data("batch_results").as_array().unwrap().iter().map(|x| json!({"value": x["encoded_value"], "transformation": "stored", "reference": x["reference"]})).collect();
    let back = c
        .post("transform/decode/svc", json!({"batch_input": toks}))
        .await;
    let back = back.data("batch_results").as_array().unwrap().clone();
    assert_eq!(back.len(), 1000);
    assert_eq!(back[999]["decoded_value"], "user-999@example.com");
    assert_eq!(back[999]["reference"], "999");

    // Forged and unknown tokens; TTL limits; expiry refused without a lookup; tidy.
    let mut forged = tok.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '2' { '3' } else { '2' });
    let r = c
        .post(
            "transform/decode/svc",
            json!({"value": forged, "transformation": "stored"}),
        )
        .await;
    assert_eq!((r.status, r.error()), (400, Some("invalid token")));
    let r = c
        .post(
            "transform/encode/svc",
            json!({"value": "x", "transformation": "stored", "ttl": "2h"}),
        )
        .await;
    assert_eq!(
        r.error(),
        Some("ttl 7200s exceeds the transformation's max_ttl of 3600s")
    );
    let short = c
        .post(
            "transform/encode/svc",
            json!({"value": "short-lived", "transformation": "stored", "ttl": 1}),
        )
        .await;
    let short = short.data("encoded_value").as_str().unwrap().to_owned();
    clock.advance(Duration::from_millis(2100));
    let r = c
        .post(
            "transform/decode/svc",
            json!({"value": short, "transformation": "stored"}),
        )
        .await;
    assert_eq!((r.status, r.error()), (400, Some("token expired")));
    let r = c.post("transform/tidy", json!({})).await;
    assert_eq!(r.data("deleted"), 1, "{:?}", r.body);

    // Stored tokens inside JSON documents, both ways.
    let doc =
        json!({"card": "4111111111111111", "nested": {"card": "5500000000000004"}, "keep": 1});
    let r = c
        .post(
            "transform/document/encode/svc",
            json!({"document": doc, "fields": {"card": "stored"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.data("document").clone();
    assert!(t["nested"]["card"].as_str().unwrap().starts_with("tok_"));
    let back = c
        .post(
            "transform/document/decode/svc",
            json!({"document": t, "fields": {"card": "stored"}, "reason": "test"}),
        )
        .await;
    assert_eq!(back.data("document"), &doc, "{:?}", back.body);

    // Only ciphertext in the store.
    let bytes = store_bytes().await;
    assert!(!bytes.is_empty());
    for needle in [
        secret.as_bytes(),
        b"user-999@example.com".as_slice(),
        b"signup".as_slice(),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext in the token store"
        );
    }

    // A fresh enclave decodes through the store.
    stack.kill_enclave().await;
    stack.start_enclave().unwrap();
    assert!(stack.pool().wait_live(Duration::from_secs(10)).await);
    let d = c
        .post(
            "transform/decode/svc",
            json!({"value": tok, "transformation": "stored"}),
        )
        .await;
    assert_eq!(d.data("decoded_value"), secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_tokens_with_sqlite() {
    let clock = manual_clock();
    let mut stack = Stack::start_with(StackOpts {
        clock: Some(clock.clone()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let db = stack.dir.path().join("tokens.db");
    exercise(&mut stack, &clock, || async {
        let mut all = std::fs::read(&db).unwrap();
        if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
            all.extend(wal);
        }
        all
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_tokens_with_postgres() {
    let pg = PgDb::create().await;
    let clock = manual_clock();
    let mut stack = Stack::start_with(StackOpts {
        token_store: Some(pg.url()),
        clock: Some(clock.clone()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    exercise(&mut stack, &clock, || table_bytes(&pg)).await;
    drop(stack);
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dying_mid_batch_loses_no_acknowledged_token() {
    let pg = PgDb::create().await;
    let stack = Stack::start_with(StackOpts {
        token_store: Some(pg.url()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    setup(&c).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..4 {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (vec![], 0u32);
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && round < 200 {
                let items: Vec<Value> = (0..200).map(|i| json!({"value": format!("w{w}-r{round}-{i}"), "transformation": "stored"})).collect();
                let r = c.post("transform/encode/svc", json!({"batch_input": items})).await;
                if r.status == 200 {
                    for (i, x) in r.data("batch_results").as_array().unwrap().iter().enumerate() {
                        acked.push((format!("w{w}-r{round}-{i}"), x["encoded_value"].as_str().unwrap().to_owned()));
                    }
                } else {
                    assert_eq!(r.status, 503, "{:?}", r.body);
                    assert!(r.body["data"].is_null(), "a failed batch returns no tokens");
                    failed += 1;
                }
                round += 1;
            }
            (acked, failed)
        }));
    }
    // Kill the store's connections again and again while batches are in flight.
    let mut kills = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        kills += pg.kill_connections().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut failed) = (vec![], 0);
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(kills > 0, "the store's connections were cut");
    assert!(!acked.is_empty());
    eprintln!(
        "acknowledged {} tokens, {failed} batches refused, {kills} connections cut",
        acked.len()
    );
    // Every token that was handed out decodes after the store comes back.
    for chunk in acked.chunks(500) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|(_, t)| json!({"value": t, "transformation": "stored"}))
            .collect();
        let r = c
            .post("transform/decode/svc", json!({"batch_input": items}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for ((v, _), got) in chunk
            .iter()
            .zip(r.data("batch_results").as_array().unwrap())
        {
            assert_eq!(got["decoded_value"].as_str(), Some(v.as_str()));
        }
    }
    drop(stack);
    pg.drop_db().await;
}

/// A second PostgreSQL of this machine's installation, in a temp folder, with
/// `ssl=on` and a server certificate from a test CA for the name `localhost`
/// only (run as the `postgres` user: initdb refuses root).
struct TlsPostgres {
    child: tokio::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn as_postgres(cmd: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("runuser");
    c.args(["-u", "postgres", "--", cmd]).args(args);
    c
}

impl TlsPostgres {
    async fn start() -> TlsPostgres {
        let bin = [
            "/usr/lib/postgresql/15/bin",
            "/usr/lib/postgresql/16/bin",
            "/usr/lib/postgresql/17/bin",
        ]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|d| d.join("initdb").exists())
        .or_else(|| pii_tests::which("initdb").and_then(|p| p.parent().map(|d| d.to_path_buf())))
        .expect("PostgreSQL's initdb is required for the TLS test");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let chown = |p: &std::path::Path| {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(p)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {}", p.display());
        };
        chown(dir.path());
        let out = as_postgres(
            bin.join("initdb").to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .output()
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Test CA and a server certificate for `localhost` only.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let srv_key = rcgen::KeyPair::generate().unwrap();
        let srv = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&srv_key, &ca)
            .unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (crt, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        std::fs::write(&crt, srv.pem()).unwrap();
        std::fs::write(&key, srv_key.serialize_pem()).unwrap();
        let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&other_file, other.cert.pem()).unwrap();
        chown(dir.path());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let child = as_postgres(
            bin.join("postgres").to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-k",
                dir.path().to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                &format!("ssl_cert_file={}", crt.display()),
                "-c",
                &format!("ssl_key_file={}", key.display()),
                "-c",
                "fsync=off",
            ],
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
        let t0 = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "PostgreSQL with TLS did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Accepting connections is not yet accepting logins.
        tokio::time::sleep(Duration::from_millis(300)).await;
        TlsPostgres {
            child,
            port,
            ca: ca_file,
            other_ca: other_file,
            _dir: dir,
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_and_every_way_it_must_fail() {
    use host_proxy::tokens::{open, TokenStoreError};
    let pg = TlsPostgres::start().await;
    let err =
        |r: Result<std::sync::Arc<dyn host_proxy::tokens::TokenStore>, TokenStoreError>| match r {
            Ok(_) => panic!("connected where it must not"),
            Err(e) => e.to_string(),
        };
    // verify-full with the right CA and name: a working store.
    let good = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca.display()),
    );
    let store = open(&good).await.unwrap();
    store
        .put(vec![pii_proto::TokenEntry {
            key: "k1".into(),
            value: b"sealed".to_vec(),
            expires_at: 0,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get(vec!["k1".into()]).await.unwrap(),
        vec![Some(b"sealed".to_vec())]
    );
    // The whole token-store path over TLS: the stack's stored tokens.
    let mut stack = Stack::start_with(StackOpts {
        token_store: Some(good.clone()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    setup(&c).await;
    let r = c
        .post(
            "transform/encode/svc",
            json!({"value": "4111-1111-1111-1111", "transformation": "stored"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let tok = r.data("encoded_value").as_str().unwrap().to_owned();
    let r = c
        .post(
            "transform/decode/svc",
            json!({"value": tok, "transformation": "stored"}),
        )
        .await;
    assert_eq!(
        r.data("decoded_value"),
        "4111-1111-1111-1111",
        "{:?}",
        r.body
    );
    stack.kill_enclave().await;

    // The right CA, the wrong name: the certificate is for `localhost`.
    let e = err(open(&pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", pg.ca.display()),
    ))
    .await);
    assert!(
        e.contains("certificate") || e.contains("NotValidForName"),
        "{e}"
    );
    // Another CA.
    let e = err(open(&pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", pg.other_ca.display()),
    ))
    .await);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A server without TLS (this machine's PostgreSQL on 5432).
    let e = err(open(&format!(
        "postgres://postgres@localhost:5432/postgres?sslmode=verify-full&sslrootcert={}",
        pg.ca.display()
    ))
    .await);
    assert!(
        e.contains("TLS") || e.contains("tls") || e.contains("ssl"),
        "{e}"
    );
    // Modes that verify nothing, and settings that cannot work.
    for (q, want) in [
        ("sslmode=require", "encrypts without checking"),
        ("sslmode=prefer", "encrypts without checking"),
        ("sslmode=verify-ca", "encrypts without checking"),
        ("sslmode=bogus", "is not one of"),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert /nonexistent/ca.pem",
        ),
        ("sslcert=/x.pem", "not supported"),
    ] {
        let e = err(open(&pg.url("localhost", q)).await);
        assert!(e.contains(want), "{q}: {e}");
    }
    // A remote host without sslmode defaults to verify-full (here: fails
    // closed on the system roots instead of connecting in the clear).
    let e = err(open(&format!(
        "postgres://postgres@pg.invalid:{}/postgres",
        pg.port
    ))
    .await);
    assert!(!e.is_empty());
}
