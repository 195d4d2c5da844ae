//! Load shedding through the real sidecar and enclave: a client over its
//! share gets `429` with `Retry-After` while another client is still
//! served, the metrics count it, and `[loadshed]` follows the config file.

use std::time::{Duration, Instant};

use pii_tests::{Stack, ROOT_TOKEN};
use serde_json::json;

fn fixed_limit(limit: u32, threshold_ms: u64) -> pii_loadshed::Config {
    pii_loadshed::Config {
        mode: pii_loadshed::Mode::Adaptive,
        shed_threshold_ms: threshold_ms,
        max_drop_percent: 30,
        min_limit: limit,
        max_limit: limit,
        initial_limit: limit,
    }
}

/// A batch big enough that concurrent ones overlap on the hop.
fn batch() -> serde_json::Value {
    let items: Vec<_> = (0..2000)
        .map(|_| json!({"plaintext": "amFuZUBleGFtcGxlLmNvbQ=="}))
        .collect();
    json!({ "batch_input": items })
}

/// `n` concurrent encrypt calls with `token`: (status, Retry-After) each.
async fn burst(url: &str, token: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let http = reqwest::Client::new();
    let body = batch();
    let calls = (0..n).map(|_| {
        let req = http
            .post(format!("{url}/v1/transit/encrypt/pii"))
            .header("X-Vault-Token", token)
            .json(&body);
        async move {
            let r = req.send().await.expect("the sidecar answers");
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = r.status().as_u16();
            if status == 429 {
                let v: serde_json::Value = r.json().await.expect("Vault's error shape");
                assert!(
                    v["errors"][0]
                        .as_str()
                        .is_some_and(|e| e.contains("over its share")),
                    "{v}"
                );
            }
            (status, retry)
        }
    });
    futures_util::future::join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_share_gets_429_and_the_settings_follow_the_file() {
    let stack = Stack::start().await;
    let root = stack.client();
    let r = root.post("transit/keys/pii", json!({})).await;
    assert!(r.status < 300, "{r:?}");
    let running = stack.proxy.as_ref().expect("proxy");
    let gate = running.shed.clone();

    // Off (the default): nothing is refused, however many at once.
    let out = burst(&stack.url, ROOT_TOKEN, 16).await;
    assert!(out.iter().all(|(s, _)| *s == 200), "{out:?}");

    // One place on the hop: the same client's second request at once is over
    // its share (429, Retry-After), never a 503 for it.
    gate.reconfigure(fixed_limit(1, 1500));
    let mut refused = Vec::new();
    for _ in 0..5 {
        let out = burst(&stack.url, ROOT_TOKEN, 16).await;
        assert!(out.iter().any(|(s, _)| *s == 200), "{out:?}");
        assert!(out.iter().all(|(s, _)| *s == 200 || *s == 429), "{out:?}");
        refused.extend(out.into_iter().filter(|(s, _)| *s == 429));
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "no request was over its share");
    assert!(
        refused.iter().all(|(_, r)| r.as_deref() == Some("1")),
        "{refused:?}"
    );
    let s = gate.snapshot();
    assert_eq!((s.inflight, s.waiting), (0, 0), "every place given back");
    assert!(s.stats.over_share > 0);

    // Meanwhile another client (its own token; the enclave refuses it, the
    // shedder does not) is not held to the first one's share.
    let flood = burst(&stack.url, ROOT_TOKEN, 16);
    let other = burst(&stack.url, "another-client", 1);
    let (_, other) = tokio::join!(flood, other);
    assert_eq!(other[0].0, 403, "{other:?}");

    // The metrics say what happened.
    let text = reqwest::get(format!("{}/metrics", stack.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = text
        .lines()
        .find(|l| l.starts_with("pii_proxy_loadshed_events_total{event=\"over_share\"}"))
        .unwrap_or_else(|| panic!("no over_share counter:\n{text}"));
    let n: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(n >= 1.0, "{line}");
    assert!(text.contains("pii_proxy_loadshed_limit 1"), "{text}");
    assert!(text.contains("http_requests_total{op=\"transit/encrypt\",status=\"429\"}"));

    // `[loadshed]` follows the file: off again, without a restart; a file
    // that does not check keeps what is in force.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[loadshed]\nmode = \"adaptive\"\nmax_drop_percent = 400\n",
    )
    .expect("write");
    let follow = tokio::spawn(host_proxy::follow_loadshed(
        path.clone(),
        gate.clone(),
        Duration::from_millis(50),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gate.config().min_limit, 1, "a bad file changes nothing");
    std::fs::write(&path, "[loadshed]\nmode = \"off\"\n").expect("write");
    let t0 = Instant::now();
    while gate.config().mode != pii_loadshed::Mode::Off {
        assert!(t0.elapsed() < Duration::from_secs(10), "not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = burst(&stack.url, ROOT_TOKEN, 16).await;
    assert!(out.iter().all(|(s, _)| *s == 200), "{out:?}");
    follow.abort();
}
