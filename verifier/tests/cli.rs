//! The `verifier verify` command-line contract: exit 0 accepted, 1 rejected
//! (JSON with the failing step and reason), 2 usage errors.

use std::process::Command;

fn run(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_verifier"))
        .args(args)
        .output()
        .expect("runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn exit_codes_and_json() {
    let genuine = fixture("nitro-attest_2025-01-06.cbor");
    let (code, j) = run(&[
        "verify",
        "--doc",
        &genuine,
        "--at",
        "1736179625",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["accepted"], true);
    assert_eq!(
        j["document"]["module_id"],
        "i-0bee92034f3d60691-enc01943c5eaab3ad6a"
    );
    let pcr0 = j["document"]["pcrs"]["PCR0"]
        .as_str()
        .expect("PCR0")
        .to_owned();

    // Expected PCRs as nitro-cli describe-eif prints them.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        serde_json::json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr0}})
            .to_string(),
    )
    .expect("write");
    let (code, _) = run(&[
        "verify",
        "--doc",
        &genuine,
        "--at",
        "1736179625",
        "--expected",
        good.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        serde_json::json!({"PCR0": "00".repeat(48)}).to_string(),
    )
    .expect("write");
    let (code, j) = run(&[
        "verify",
        "--doc",
        &genuine,
        "--at",
        "1736179625",
        "--expected",
        bad.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    assert_eq!((code, j["step"].as_str()), (1, Some("policy")));
    assert!(j["reason"]
        .as_str()
        .expect("reason")
        .contains("PCR0 mismatch"));

    let (code, j) = run(&[
        "verify",
        "--doc",
        &fixture("eternis_INVALID_badsig_2024-07-23.cbor"),
        "--at",
        "1721770180",
        "--format",
        "json",
    ]);
    assert_eq!((code, j["step"].as_str()), (1, Some("signature")));
    let (code, j) = run(&[
        "verify",
        "--doc",
        &genuine,
        "--at",
        "1800000000",
        "--format",
        "json",
    ]);
    assert_eq!((code, j["step"].as_str()), (1, Some("validity")));
    let (code, j) = run(&[
        "verify",
        "--doc",
        &fixture("evervault_ga_2023-09-18.cbor"),
        "--at",
        "1695049410",
        "--format",
        "json",
    ]);
    assert_eq!((code, j["step"].as_str()), (1, Some("policy")));
    let (code, _) = run(&[
        "verify",
        "--doc",
        &fixture("evervault_ga_2023-09-18.cbor"),
        "--at",
        "1695049410",
        "--allow-debug",
    ]);
    assert_eq!(code, 0);

    // Usage errors.
    assert_eq!(run(&["verify", "--doc", &genuine]).0, 2, "missing --at");
    assert_eq!(run(&["verify", "--doc", "/nonexistent", "--at", "1"]).0, 2);
    assert_eq!(
        run(&["verify", "--doc", &genuine, "--at", "1", "--nonce", "zz"]).0,
        2
    );
    assert_eq!(
        run(&[
            "verify",
            "--doc",
            &genuine,
            "--at",
            "1",
            "--expected",
            "/nonexistent"
        ])
        .0,
        2
    );
    assert_eq!(run(&["bogus"]).0, 2);
}
