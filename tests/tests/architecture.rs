//! Architectural invariants, checked on the real dependency graph.

/// The host proxy must never link the enclave's key-handling crate, directly
/// or through another dependency (normal dependencies: what gets linked).
#[test]
fn host_proxy_never_links_key_handling_code() {
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
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
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
    assert!(
        !crates.contains(&"aws-lc-rs"),
        "host-proxy links a crypto library:\n{tree}"
    );
}
