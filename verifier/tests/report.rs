//! Audit reports: the evidence bundle's content, and the HTML page rendered
//! by headless Chromium (Debian's `chromium`; `ci/setup.sh` installs it).

use std::process::Command;

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return c.to_string();
        }
    }
    panic!(
        "headless Chromium is required for this test: run ci/setup.sh (apt-get install chromium)"
    );
}

fn render(html: &std::path::Path, out: &std::path::Path) -> (String, Vec<u8>) {
    let chrome = chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let url = format!("file://{}", html.display());
    let dom = Command::new(&chrome)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .expect("chromium runs");
    let shot = out.join("report.png");
    let st = Command::new(&chrome)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args([
            "--window-size=1280,1600",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .output()
        .expect("chromium runs");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (
        String::from_utf8_lossy(&dom.stdout).into_owned(),
        std::fs::read(&shot).expect("screenshot written"),
    )
}

#[test]
fn report_for_accepted_and_rejected_documents_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let bin = env!("CARGO_BIN_EXE_verifier");
    // Accepted, with PCR0 pinned to its real value.
    let doc = format!("{fixtures}/nitro-attest_2025-01-06.cbor");
    let v = Command::new(bin)
        .args([
            "verify",
            "--doc",
            &doc,
            "--at",
            "1736179625",
            "--format",
            "json",
        ])
        .output()
        .expect("runs");
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
    let expected = dir.path().join("expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({"PCR0": j["document"]["pcrs"]["PCR0"]}).to_string(),
    )
    .expect("write");
    let ok_dir = dir.path().join("ok");
    let st = Command::new(bin)
        .args([
            "report",
            "--doc",
            &doc,
            "--at",
            "1736179625",
            "--expected",
            expected.to_str().expect("utf8"),
            "--out",
            ok_dir.to_str().expect("utf8"),
        ])
        .status()
        .expect("runs");
    assert_eq!(st.code(), Some(0));
    let ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ok_dir.join("evidence.json")).expect("evidence"))
            .expect("json");
    assert_eq!(ev["decision"]["accepted"], true);
    assert_eq!(ev["chain"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        ev["document"]["module_id"],
        "i-0bee92034f3d60691-enc01943c5eaab3ad6a"
    );
    let (dom, png) = render(&ok_dir.join("report.html"), &ok_dir);
    assert!(dom.contains("id=\"verdict\">Accepted"), "{dom}");
    assert!(
        dom.contains("PCR0") && dom.contains(">match<"),
        "PCR table rendered"
    );
    assert!(dom.contains("aws.nitro-enclaves"), "chain rendered");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "a real screenshot"
    );

    // Rejected: the bad-signature document.
    let bad_dir = dir.path().join("bad");
    let st = Command::new(bin)
        .args([
            "report",
            "--doc",
            &format!("{fixtures}/eternis_INVALID_badsig_2024-07-23.cbor"),
            "--at",
            "1721770180",
            "--out",
            bad_dir.to_str().expect("utf8"),
        ])
        .status()
        .expect("runs");
    assert_eq!(st.code(), Some(1));
    let (dom, _) = render(&bad_dir.join("report.html"), &bad_dir);
    assert!(dom.contains("id=\"verdict\">Rejected"));
    assert!(dom.contains("signature"), "the failing step is shown");
}
