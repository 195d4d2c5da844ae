//! Architectural invariants, checked on the real dependency graph.

/// The host proxy must never link the enclave's key-handling crate, directly
/// or through another dependency (normal dependencies: what gets linked), and
/// it uses cryptography only for TLS to its PostgreSQL token store.
/// `cargo tree -p host-proxy -e normal` with `extra` arguments, one crate
/// name per line.
fn host_proxy_tree(extra: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "host-proxy",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(extra)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn host_proxy_never_links_key_handling_code() {
    let tree = host_proxy_tree(&[]);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"pii-proto") && crates.contains(&"pii-transport"),
        "{tree}"
    );
    assert!(
        !crates.contains(&"pii-enclave"),
        "host-proxy links pii-enclave:\n{tree}"
    );
    // Its only cryptography is TLS to PostgreSQL (sslmode=verify-full): the
    // crypto library is reached through rustls and nothing else.
    let users = host_proxy_tree(&["-i", "aws-lc-rs"]);
    let allowed = [
        "aws-lc-rs",
        "host-proxy",
        "rustls",
        "rustls-webpki",
        "tokio-rustls",
        "tokio-postgres-rustls",
    ];
    for c in users.lines().filter_map(|l| l.split_whitespace().next()) {
        assert!(
            allowed.contains(&c),
            "host-proxy reaches a crypto library through {c}, not only PostgreSQL's TLS:\n{users}"
        );
    }
}
