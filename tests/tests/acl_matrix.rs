//! Vault's ACL semantics, proven side by side: the same policies loaded into a
//! real OpenBao (`sys/policies/acl`, tokens from `auth/token/create`) and into
//! the enclave's configuration; then every token asks `sys/capabilities-self`
//! about every path, and tries every Transit operation, on both. Allow/deny
//! must agree in every cell.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use pii_enclave::auth::{token_hash, AuthConfig, Capability, Policy, Rule, TokenBinding};
use pii_tests::{Client, OpenBao, Stack, StackOpts};
use serde_json::{json, Value};

use Capability::{Create, Delete, Deny, List, Read, Update};

type Rules = &'static [(&'static str, &'static [Capability])];

/// Policies chosen to hit every rule of Vault's priority order, cross-policy
/// merging, `deny`, `create` versus `update`, and LIST's trailing slash.
const POLICIES: &[(&str, Rules)] = &[
    ("provision", &[("transit/*", &[Create, Read, List])]),
    (
        "pii-svc",
        &[
            ("transit/encrypt/pii", &[Update]),
            ("transit/decrypt/pii", &[Update]),
        ],
    ),
    (
        "plus-vs-deny",
        &[("transit/+/pii", &[Update]), ("transit/decrypt/*", &[Deny])],
    ),
    (
        "keys-admin",
        &[
            ("transit/keys/*", &[Create, Read, Update, Delete, List]),
            ("transit/keys/+/trim", &[Deny]),
        ],
    ),
    (
        "globs",
        &[
            ("transit/en*", &[Update]),
            ("transit/encrypt/new*", &[Create]),
            ("transit/+/pi*", &[Read]),
        ],
    ),
    (
        "segments",
        &[
            ("transit/+/+", &[Read]),
            ("transit/+/+/rotate", &[Update]),
            ("transit/keys/+/config", &[Update, Read]),
            ("transit/+/pii/+", &[List]),
        ],
    ),
    (
        "lists",
        &[
            ("transit/keys", &[List]),
            ("transit/random*", &[Update]),
            ("transit/hash", &[Update]),
        ],
    ),
    ("deny-all", &[("transit/*", &[Deny])]),
    (
        "datakeys",
        &[
            ("transit/datakey/+/pii", &[Update]),
            ("transit/+/pii", &[Read]),
            ("transit/rewrap/+", &[Update]),
        ],
    ),
    (
        "transform",
        &[
            ("transform/*", &[Create, Read, List]),
            ("transform/encode/+", &[Update]),
            ("transform/decode/ssn", &[Deny]),
            ("transform/+/ssn", &[Update]),
        ],
    ),
    (
        "exact-over-glob",
        &[
            ("transit/*", &[Update, Read]),
            ("transit/hmac/pii", &[Read]),
            ("transit/verify/pii", &[Update]),
        ],
    ),
];

/// Tokens: every policy alone, and pairs whose rules interact.
const TOKENS: &[&[&str]] = &[
    &["provision"],
    &["pii-svc"],
    &["plus-vs-deny"],
    &["keys-admin"],
    &["globs"],
    &["segments"],
    &["lists"],
    &["deny-all"],
    &["datakeys"],
    &["transform"],
    &["exact-over-glob"],
    &["provision", "pii-svc"],
    &["pii-svc", "deny-all"],
    &["plus-vs-deny", "keys-admin"],
    &["globs", "segments"],
    &["datakeys", "lists"],
    &["provision", "deny-all"],
    &["keys-admin", "segments"],
    &["exact-over-glob", "pii-svc"],
    &["transform", "provision"],
];

/// Paths asked about with `sys/capabilities-self` (Transit, Transform, sys).
const PATHS: &[&str] = &[
    "transit/keys",
    "transit/keys/",
    "transit/keys/pii",
    "transit/keys/pii/config",
    "transit/keys/pii/rotate",
    "transit/keys/pii/trim",
    "transit/keys/other/rotate",
    "transit/encrypt/pii",
    "transit/encrypt/other",
    "transit/encrypt/new-1",
    "transit/decrypt/pii",
    "transit/decrypt/other",
    "transit/rewrap/pii",
    "transit/datakey/plaintext/pii",
    "transit/datakey/wrapped/pii",
    "transit/datakey/plaintext/other",
    "transit/hmac/pii",
    "transit/hmac/pii/sha2-512",
    "transit/verify/pii",
    "transit/random",
    "transit/random/32",
    "transit/hash",
    "transit/hash/sha2-512",
    "transit/export/encryption-key/pii",
    "transit/en",
    "transit",
    "transform/encode/ssn",
    "transform/encode/email",
    "transform/decode/ssn",
    "transform/decode/email",
    "transform/role/ssn",
    "transform/alphabet/digits",
    "transform/transformations/fpe/ssn",
    "transform/template/t",
    "transform/document/decode/ssn",
    "sys/audit-key",
    "sys/attestation",
];

/// Transit operations tried for real: `{t}` is the token's index (a key no
/// one has created yet, so `encrypt` there needs `create`).
const OPS: &[(&str, &str, &str)] = &[
    ("POST", "transit/keys/fresh-{t}", "{}"),
    ("GET", "transit/keys/pii", ""),
    ("LIST", "transit/keys", ""),
    ("DELETE", "transit/keys/pii", ""),
    (
        "POST",
        "transit/keys/pii/config",
        r#"{"min_decryption_version":1}"#,
    ),
    ("POST", "transit/keys/pii/rotate", "{}"),
    (
        "POST",
        "transit/keys/pii/trim",
        r#"{"min_available_version":1}"#,
    ),
    ("POST", "transit/encrypt/pii", r#"{"plaintext":"aGk="}"#),
    ("POST", "transit/encrypt/new-{t}", r#"{"plaintext":"aGk="}"#),
    ("POST", "transit/encrypt/new-{t}", r#"{"plaintext":"aGk="}"#),
    (
        "POST",
        "transit/decrypt/pii",
        r#"{"ciphertext":"vault:v1:AAAA"}"#,
    ),
    (
        "POST",
        "transit/decrypt/other",
        r#"{"ciphertext":"vault:v1:AAAA"}"#,
    ),
    (
        "POST",
        "transit/rewrap/pii",
        r#"{"ciphertext":"vault:v1:AAAA"}"#,
    ),
    ("POST", "transit/datakey/plaintext/pii", "{}"),
    ("POST", "transit/datakey/wrapped/pii", "{}"),
    ("POST", "transit/hmac/pii", r#"{"input":"aGk="}"#),
    (
        "POST",
        "transit/verify/pii",
        r#"{"input":"aGk=","hmac":"vault:v1:AAAA"}"#,
    ),
    ("POST", "transit/random", "{}"),
    ("POST", "transit/random/16", "{}"),
    ("POST", "transit/hash", r#"{"input":"aGk="}"#),
    ("GET", "transit/export/encryption-key/pii", ""),
];

/// A token with 128 random bits, the same string on both sides.
fn token(i: usize) -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    format!("acl{i}-{}", hex::encode(b))
}

fn hcl(rules: Rules) -> String {
    rules
        .iter()
        .map(|(path, caps)| {
            let names: Vec<String> = caps
                .iter()
                .map(|c| format!("\"{}\"", format!("{c:?}").to_lowercase()))
                .collect();
            format!(
                "path \"{path}\" {{ capabilities = [{}] }}\n",
                names.join(", ")
            )
        })
        .collect()
}

fn auth_config(tokens: &[String]) -> AuthConfig {
    AuthConfig {
        tokens: TOKENS
            .iter()
            .zip(tokens)
            .map(|(policies, t)| TokenBinding {
                token_hmac: hex::encode(token_hash(t)),
                sha256: None,
                policies: policies.iter().map(|p| (*p).to_owned()).collect(),
                display_name: None,
            })
            .collect(),
        policies: POLICIES
            .iter()
            .map(|(name, rules)| {
                let rules = rules
                    .iter()
                    .map(|(path, caps)| Rule {
                        path: (*path).into(),
                        capabilities: caps.to_vec(),
                    })
                    .collect();
                ((*name).to_owned(), Policy { rules })
            })
            .collect(),
    }
}

async fn load_into_openbao(bao: &Client, tokens: &[String]) {
    // What OpenBao's `default` policy grants and the enclave grants every
    // token; it touches no path of the matrix.
    let r = bao
        .post(
            "sys/policies/acl/self",
            json!({ "policy": "path \"sys/capabilities-self\" { capabilities = [\"update\"] }" }),
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    for (name, rules) in POLICIES {
        let r = bao
            .post(
                &format!("sys/policies/acl/{name}"),
                json!({ "policy": hcl(rules) }),
            )
            .await;
        assert_eq!(r.status, 204, "policy {name}: {:?}", r.body);
    }
    for (policies, t) in TOKENS.iter().zip(tokens) {
        let r = bao
            .post(
                "auth/token/create",
                json!({
                    "id": t,
                    "policies": policies.iter().chain(&["self"]).collect::<Vec<_>>(),
                    "no_default_policy": true,
                }),
            )
            .await;
        assert_eq!(r.status, 200, "token {policies:?}: {:?}", r.body);
    }
}

/// Keys both sides start with (created by root).
async fn seed(c: &Client) {
    for k in ["pii", "other"] {
        let r = c.post(&format!("transit/keys/{k}"), json!({})).await;
        assert!(r.status == 200 || r.status == 204, "{k}: {:?}", r.body);
    }
    c.encrypt_ok("pii", b"seed").await;
}

fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_decisions_match_openbao_in_every_cell() {
    let bao = OpenBao::start().await.expect("OpenBao starts");
    let tokens: Vec<String> = (0..TOKENS.len()).map(token).collect();
    let stack = Stack::start_with(StackOpts {
        auth: auth_config(&tokens),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let ours = stack.client();
    let theirs = bao.client();
    load_into_openbao(&theirs, &tokens).await;
    seed(&theirs).await;
    seed(&ours).await;

    // 1. Capabilities of every token on every path.
    let mut cells = 0;
    let mut mismatches = vec![];
    for (i, t) in tokens.iter().enumerate() {
        let body = json!({ "paths": PATHS });
        let a = theirs
            .with_token(t)
            .post("sys/capabilities-self", body.clone())
            .await;
        let b = ours.with_token(t).post("sys/capabilities-self", body).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(b.status, 200, "{:?}", b.body);
        for p in PATHS {
            cells += 1;
            // OpenBao may add capabilities we do not have (patch, scan) only
            // if a policy grants them; ours grant none.
            let (x, y) = (sorted(&a.body["data"][p]), sorted(&b.body["data"][p]));
            if x != y {
                mismatches.push(format!(
                    "{:?} on {p}: OpenBao {x:?}, enclave {y:?}",
                    TOKENS[i]
                ));
            }
        }
    }
    println!(
        "capabilities matrix: {cells} cells (tokens x paths), {} mismatches",
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

    // 2. Every Transit operation with every token: 403 on both or on neither.
    let mut cells = 0;
    let mut allowed = 0;
    for (i, t) in tokens.iter().enumerate() {
        for (method, path, body) in OPS {
            let path = path.replace("{t}", &i.to_string());
            let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
            let a = theirs
                .with_token(t)
                .raw(method, &path, body.clone())
                .await
                .unwrap();
            let b = ours.with_token(t).raw(method, &path, body).await.unwrap();
            cells += 1;
            let (da, db) = (a.status == 403, b.status == 403);
            if da != db {
                mismatches.push(format!(
                    "{:?} {method} {path}: OpenBao {} {}, enclave {} {}",
                    TOKENS[i], a.status, a.body, b.status, b.body
                ));
            }
            allowed += usize::from(!da);
        }
    }
    println!(
        "operation matrix: {cells} cells (tokens x Transit operations), {allowed} allowed, {} mismatches",
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The matrix is not trivially all-deny or all-allow.
    assert!(
        allowed > cells / 10 && allowed < cells * 9 / 10,
        "{allowed}/{cells}"
    );
}

/// Transform's configuration objects have an existence check (our choice,
/// documented in docs/policies.md): `create` makes a missing one, `update`
/// changes an existing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_configuration_needs_create_then_update() {
    let tok = token(99);
    let cfg = AuthConfig {
        tokens: vec![TokenBinding {
            token_hmac: hex::encode(token_hash(&tok)),
            sha256: None,
            policies: vec!["make".into()],
            display_name: None,
        }],
        policies: [(
            "make".to_owned(),
            Policy {
                rules: vec![Rule {
                    path: "transform/alphabet/*".into(),
                    capabilities: vec![Create, Read],
                }],
            },
        )]
        .into(),
    };
    let stack = Stack::start_with(StackOpts {
        auth: cfg,
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client().with_token(&tok);
    let r = c
        .post(
            "transform/alphabet/hexa",
            json!({ "alphabet": "0123456789abcdef" }),
        )
        .await;
    assert!(r.status == 200 || r.status == 204, "{:?}", r.body);
    let r = c
        .post(
            "transform/alphabet/hexa",
            json!({ "alphabet": "0123456789ABCDEF" }),
        )
        .await;
    assert_eq!(r.status, 403, "an update needs `update`: {:?}", r.body);
    assert_eq!(
        c.get("transform/alphabet/hexa").await.data("alphabet"),
        "0123456789abcdef"
    );
}
