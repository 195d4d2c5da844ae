//! Architectural invariants, checked on the real dependency graph and the
//! real source tree (see ARCHITECTURE.md, "Crates"):
//!
//! - the host proxy links no enclave crate and not the enclave's crypto
//!   library; its only cryptography is the TLS client of its token store
//!   (this is the standalone `-p host-proxy` build, the sidecar's image;
//!   `ci/test.sh` also checks that binary for aws-lc symbols);
//! - `pii-proto` and `pii-engine` link no async runtime and no sockets;
//! - the enclave binary links no emulator code, and the image's SigV4 code
//!   only signs;
//! - no import cycles between the modules of a crate;
//! - no source file over 600 lines of code without a reason at its top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `cargo tree -p <package> -e normal` (what gets linked) with `extra`
/// arguments: the crate names, one per line.
fn tree(package: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(extra)
        .current_dir(root())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn refuse(package: &str, names: &[String], forbidden: &[&str], why: &str) {
    for f in forbidden {
        assert!(
            !names.iter().any(|n| n == f),
            "{package} links {f}: {why}\n{names:?}"
        );
    }
}

#[test]
fn host_proxy_never_links_key_handling_code() {
    let crates = tree("host-proxy", &[]);
    assert!(
        crates.iter().any(|c| c == "pii-proto") && crates.iter().any(|c| c == "pii-transport"),
        "{crates:?}"
    );
    refuse(
        "host-proxy",
        &crates,
        &[
            "pii-enclave",
            "pii-engine",
            "pii-custody",
            "aws-lc-rs",
            "aws-lc-sys",
        ],
        "the host side must not hold key-handling code or the enclave's crypto library",
    );
    // Its only cryptography is TLS (to PostgreSQL, sslmode=verify-full; the
    // fraud crate's WAF calls): the TLS provider is reached through rustls.
    ring_only_through_tls("host-proxy");
}

/// `ring` is reached only through rustls and its adapters.
fn ring_only_through_tls(package: &str) {
    let users = tree(package, &["-i", "ring"]);
    let allowed = [
        "ring",
        "host-proxy",
        "pii-fraud",
        "pii-pg",
        "pii-http-client",
        "pii-fle",
        "rustls",
        "rustls-webpki",
        "tokio-rustls",
        "tokio-postgres-rustls",
        "hyper-rustls",
    ];
    for c in &users {
        assert!(
            allowed.contains(&c.as_str()),
            "{package} reaches a crypto library through {c}, not only through TLS:\n{users:?}"
        );
    }
}

#[test]
fn the_fraud_crate_sees_tokens_only() {
    // The fraud signal bus runs on the host: it reaches subjects only as the
    // enclave's tokens, over the sidecar's API, and holds no key-handling code.
    let crates = tree("pii-fraud", &[]);
    refuse(
        "pii-fraud",
        &crates,
        &[
            "pii-enclave",
            "pii-engine",
            "pii-custody",
            "aws-lc-rs",
            "aws-lc-sys",
        ],
        "the fraud crate runs on the host and must not link key-handling code",
    );
    ring_only_through_tls("pii-fraud");
}

#[test]
fn the_load_shedder_is_policy_only() {
    // Decisions and waiting: no HTTP, no broker, no key handling; the
    // sidecar calls it, not the other way round.
    let crates = tree("pii-loadshed", &[]);
    refuse(
        "pii-loadshed",
        &crates,
        &[
            "host-proxy",
            "pii-enclave",
            "pii-engine",
            "pii-custody",
            "aws-lc-rs",
            "ring",
            "hyper",
            "axum",
            "rdkafka",
        ],
        "the load shedder holds policy only",
    );
}

#[test]
fn proto_and_engine_link_no_runtime_and_no_sockets() {
    for package in ["pii-proto", "pii-engine"] {
        let crates = tree(package, &[]);
        refuse(
            package,
            &crates,
            &[
                "tokio",
                "mio",
                "socket2",
                "tokio-vsock",
                "vsock",
                "hyper",
                "reqwest",
                "vaultrs",
                "pii-transport",
                "pii-custody",
                "pii-enclave",
            ],
            "it is sans-IO: no runtime, no sockets, no layer above it",
        );
    }
    // The engine is below custody and the API: custody may use it, never
    // the other way round.
    let engine = tree("pii-engine", &[]);
    assert!(engine.iter().any(|c| c == "pii-proto"), "{engine:?}");
}

#[test]
fn the_enclave_binary_links_no_emulator_code() {
    for features in [&[][..], &["--features", "dangerous-dev"][..]] {
        let crates = tree("pii-enclave", features);
        for needed in ["pii-engine", "pii-custody", "pii-proto", "pii-transport"] {
            assert!(crates.iter().any(|c| c == needed), "{needed}: {crates:?}");
        }
        refuse(
            "pii-enclave",
            &crates,
            &["pii-kms-emulator", "pii-tests", "host-proxy", "verifier"],
            "the image carries no test, emulator or host code",
        );
    }
    // The development NSM's certificate maker exists only with the feature.
    refuse(
        "pii-enclave",
        &tree("pii-enclave", &[]),
        &["rcgen"],
        "the production build has no development NSM",
    );
    // The emulator links nothing the image links (so the image carries no
    // code only the emulator needs, such as SigV4 verification).
    let emulator = tree(
        "pii-kms-emulator",
        &["--features", "dangerous-kms-emulator"],
    );
    refuse(
        "pii-kms-emulator",
        &emulator,
        &[
            "pii-enclave",
            "pii-engine",
            "pii-custody",
            "pii-transport",
            "pii-config-file",
        ],
        "the emulator must be an independent implementation",
    );
    let sigv4 =
        std::fs::read_to_string(root().join("enclave/custody/src/sigv4.rs")).expect("sigv4.rs");
    assert!(
        !sigv4.contains("fn verify"),
        "the image's SigV4 module only signs; verification belongs to the emulator"
    );
}

/// (The emulator does reach `pii-proto`, the wire format, through the
/// verifier it uses to check attestation documents: a format both sides
/// must agree on, not code that handles keys.)
///
/// The crates whose module graphs are checked.
const CRATES: &[&str] = &[
    "enclave/proto/src",
    "enclave/transport/src",
    "enclave/engine/src",
    "enclave/custody/src",
    "enclave/config-file/src",
    "enclave/src",
    "host-proxy/src",
    "host-proxy/fraud/src",
    "host-proxy/loadshed/src",
    "verifier/src",
    "eif/src",
    "measurements/src",
    "tests/kms-emulator/src",
];

/// The source without its `#[cfg(test)] mod tests` block (tests may reach
/// anywhere in their crate).
fn code_of(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).expect("source dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level module a file belongs to (`a.rs`, `a/mod.rs`, `a/b.rs` → `a`),
/// or `None` for the crate root and binaries.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.trim_end_matches(".rs").to_owned();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

/// The top-level modules `code` names through `crate::…`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        // Skip `pii_crate::` and the like: only the keyword `crate`.
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let w = word(part.trim());
                if !w.is_empty() {
                    out.insert(w);
                }
            }
        } else {
            let w = word(rest);
            if !w.is_empty() {
                out.insert(w);
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut vec![], &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycles_between_modules() {
    for krate in CRATES {
        let src = root().join(krate);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in rust_files(&src) {
            let Some(m) = top_module(&src, &f) else {
                continue;
            };
            let text = std::fs::read_to_string(&f).expect("source");
            let refs = crate_refs(code_of(&text));
            let e = graph.entry(m.clone()).or_default();
            e.extend(refs.into_iter().filter(|r| *r != m));
        }
        // Only edges between modules that exist (`crate::SomeType`
        // re-exported at the root is not a module).
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for deps in graph.values_mut() {
            deps.retain(|d| modules.contains(d));
        }
        assert_eq!(
            find_cycle(&graph),
            None,
            "{krate}: modules import each other in a cycle"
        );
    }
}

#[test]
fn the_cycle_check_sees_cycles() {
    let code = "use crate::{a, b::X};\nfn f() { crate::c::g(); pii_crate::x(); }";
    assert_eq!(
        crate_refs(code),
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    g.entry("c".into()).or_default();
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert!(find_cycle(&g).is_some());
}

/// Lines of code above which a file must say why it is one file.
const LONG_FILE: usize = 600;
/// The marker of that reason, in the file's leading `//!` comment.
const REASON: &str = "//! Why one file:";

#[test]
fn long_files_say_why_they_are_one_file() {
    let mut long = vec![];
    for krate in CRATES.iter().chain(["tests/src"].iter()) {
        for f in rust_files(&root().join(krate)) {
            let text = std::fs::read_to_string(&f).expect("source");
            let lines = code_of(&text).lines().count();
            let header: String = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            if lines > LONG_FILE && !header.contains(REASON) {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these files or give the reason at their top (`{REASON} …`):\n{}",
        long.join("\n")
    );
}
