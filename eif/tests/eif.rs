//! EIF builds: reproducibility, PCRs against AWS's own image-format crate,
//! corrupt input, and measurement records end to end through the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::eif_signer::SignKeyData;
use aws_nitro_enclaves_image_format::utils::{EifBuilder, PcrSignatureChecker};
use eif::build::{app_archive, bootstrap_archive, App, Bootstrap, BuildSpec};
use eif::sign::{SignError, Signer};

const EIF: &str = env!("CARGO_BIN_EXE_eif");

/// Inputs standing in for nitro-cli's blobs (the format does not care what
/// the kernel is) and a real binary for the application ramdisk.
struct Inputs {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    init: PathBuf,
    nsm_ko: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("bzImage"), pseudo_random(2_500_001, 1)).unwrap();
    std::fs::write(p("init"), pseudo_random(70_003, 2)).unwrap();
    std::fs::write(p("nsm.ko"), pseudo_random(40_000, 3)).unwrap();
    std::fs::write(p("app"), pseudo_random(1_000_000, 4)).unwrap();
    std::fs::write(p("config.toml"), "listen = \"vsock://any:5000\"\n").unwrap();
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        p("key.pem").to_str().unwrap(),
    ]);
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        p("key.pem").to_str().unwrap(),
        "-subj",
        "/CN=pii-enclave eif test",
        "-days",
        "30",
        "-out",
        p("cert.pem").to_str().unwrap(),
    ]);
    Inputs {
        kernel: p("bzImage"),
        init: p("init"),
        nsm_ko: p("nsm.ko"),
        binary: p("app"),
        config: p("config.toml"),
        cert: p("cert.pem"),
        key: p("key.pem"),
        _dir: dir,
    }
}

const CMDLINE: &str = "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on";

fn cli_build(i: &Inputs, cwd: &Path, umask: &str, signed: bool) -> Vec<u8> {
    let mut cmd = format!(
        "umask {umask}; exec '{EIF}' build --kernel '{}' --cmdline '{CMDLINE}' --init '{}' --nsm-ko '{}' --binary '{}' --config '{}' --env RUST_LOG=info --output out.eif",
        i.kernel.display(), i.init.display(), i.nsm_ko.display(), i.binary.display(), i.config.display()
    );
    if signed {
        cmd.push_str(&format!(
            " --signing-certificate '{}' --private-key '{}'",
            i.cert.display(),
            i.key.display()
        ));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(cwd)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(cwd.join("out.eif")).unwrap()
}

#[test]
fn builds_are_byte_identical_across_folders_times_and_umasks() {
    let i = inputs();
    for signed in [false, true] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = cli_build(&i, a.path(), "022", signed);
        // Touch the inputs (new mtimes, other modes) and wait past a second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for p in [&i.kernel, &i.binary, &i.config] {
            let data = std::fs::read(p).unwrap();
            std::fs::write(p, data).unwrap();
            Command::new("chmod").arg("600").arg(p).status().unwrap();
        }
        let second = cli_build(&i, b.path(), "077", signed);
        assert_eq!(first.len(), second.len());
        assert!(first == second, "signed={signed}: builds differ");
    }
}

fn identity(version: &str) -> EifIdentityInfo {
    EifIdentityInfo {
        img_name: "pii-enclave".into(),
        img_version: version.into(),
        build_info: EifBuildInfo {
            build_time: eif::build::rfc3339(1_700_000_000),
            build_tool: "pii-enclave eif".into(),
            build_tool_version: env!("CARGO_PKG_VERSION").into(),
            img_os: "Linux".into(),
            img_kernel: "unknown".into(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::Value::Null,
    }
}

fn spec(i: &Inputs, signer: Option<Signer>) -> BuildSpec {
    BuildSpec {
        kernel: i.kernel.clone(),
        cmdline: CMDLINE.into(),
        bootstrap: Bootstrap::Parts {
            init: i.init.clone(),
            nsm_ko: i.nsm_ko.clone(),
        },
        app: Some(App {
            binary: i.binary.clone(),
            name: "pii-enclave".into(),
            config: Some(i.config.clone()),
            args: vec!["serve".into()],
            env: vec![],
        }),
        extra_ramdisks: vec![],
        signer,
        aarch64: false,
        memory_mib: 1024,
        cpus: 2,
        image_name: "pii-enclave".into(),
        image_version: env!("CARGO_PKG_VERSION").into(),
        kernel_version: "unknown".into(),
        source_date_epoch: 1_700_000_000,
    }
}

/// Build the same image with AWS's `EifBuilder` from the same ramdisks.
fn aws_build(
    i: &Inputs,
    dir: &Path,
    signed: bool,
) -> (PathBuf, std::collections::BTreeMap<String, String>) {
    let s = spec(i, None);
    let boot = dir.join("boot.cpio");
    let app = dir.join("app.cpio");
    std::fs::write(
        &boot,
        bootstrap_archive(&i.init, &i.nsm_ko)
            .unwrap()
            .to_vec(1_700_000_000)
            .unwrap(),
    )
    .unwrap();
    std::fs::write(
        &app,
        app_archive(s.app.as_ref().unwrap())
            .unwrap()
            .to_vec(1_700_000_000)
            .unwrap(),
    )
    .unwrap();
    let sign_info = signed.then(|| SignKeyData::new(i.key.to_str().unwrap(), &i.cert).unwrap());
    let mut b = EifBuilder::new(
        &i.kernel,
        CMDLINE.into(),
        sign_info,
        <sha2::Sha384 as sha2::Digest>::new(),
        0,
        identity(env!("CARGO_PKG_VERSION")),
    );
    b.add_ramdisk(&boot);
    b.add_ramdisk(&app);
    let out = dir.join(if signed { "aws-signed.eif" } else { "aws.eif" });
    let mut f = std::fs::File::create(&out).unwrap();
    let m = b.write_to(&mut f);
    (out, m)
}

#[test]
fn pcrs_match_the_aws_image_format_crate_unsigned_and_signed() {
    let i = inputs();
    let dir = tempfile::tempdir().unwrap();
    for signed in [false, true] {
        let signer = signed.then(|| {
            Signer::from_pem(
                &std::fs::read(&i.cert).unwrap(),
                &std::fs::read_to_string(&i.key).unwrap(),
            )
            .unwrap()
        });
        let ours = dir.path().join(if signed {
            "ours-signed.eif"
        } else {
            "ours.eif"
        });
        let built = eif::build::build(&spec(&i, signer), &ours, &mut |_, _| {}).unwrap();
        let (theirs, mut theirs_pcrs) = aws_build(&i, dir.path(), signed);
        theirs_pcrs.remove("HashAlgorithm");

        // 1. The crate's builder computes the same PCRs from the same inputs.
        assert_eq!(built.pcrs.map(), theirs_pcrs, "signed={signed}");

        // 2. The crate's reader measures our file the same and accepts its CRC.
        let mut reader = EifReader::from_eif(ours.display().to_string()).unwrap();
        assert!(reader.check_crc(), "AWS reader rejects our CRC");
        let mut their_view = reader.get_measurements().unwrap();
        their_view.remove("HashAlgorithm");
        assert_eq!(built.pcrs.map(), their_view);

        // 3. Our reader measures their file the same.
        let d = eif::describe(&theirs, eif::DescribeOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(d.pcrs, built.pcrs);

        if signed {
            // 4. The crate verifies our signature with the certificate's key.
            let mut checker = PcrSignatureChecker::from_eif(ours.to_str().unwrap()).unwrap();
            checker.verify().unwrap();
            assert!(d.signature.is_some(), "their signature verifies with ours");
        } else {
            // Unsigned, the two builders write the very same bytes.
            assert_eq!(
                std::fs::read(&ours).unwrap(),
                std::fs::read(&theirs).unwrap()
            );
        }
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(EIF).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn corrupt_images_get_precise_errors_and_exit_1() {
    let i = inputs();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.eif");
    let signer = Signer::from_pem(
        &std::fs::read(&i.cert).unwrap(),
        &std::fs::read_to_string(&i.key).unwrap(),
    )
    .unwrap();
    eif::build::build(&spec(&i, Some(signer)), &good, &mut |_, _| {}).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let (code, out, _) = run(&["describe", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["IsSigned"], true);
    assert_eq!(v["SignatureCheck"], true);
    assert!(v["Measurements"]["PCR8"].is_string());

    let case = |name: &str, data: Vec<u8>, want: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let (code, _, err) = run(&["describe", p.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    };
    let mut flipped = bytes.clone();
    flipped[100_000] ^= 0x01; // inside the kernel
    case("flipped.eif", flipped, "CRC mismatch");
    case(
        "truncated.eif",
        bytes[..bytes.len() - 10].to_vec(),
        "truncated: section",
    );
    case(
        "header-only.eif",
        bytes[..300].to_vec(),
        "truncated: the EIF header",
    );
    let mut magic = bytes.clone();
    magic[0] = b'X';
    case("magic.eif", magic, "not an EIF: magic");
    let mut appended = bytes.clone();
    appended.extend_from_slice(b"junk");
    case("appended.eif", appended, "4 bytes after the last section");
    let mut version = bytes.clone();
    version[5] = 99;
    case("version.eif", version, "unsupported EIF version 99");
    let mut sections = bytes.clone();
    sections[26] = 0; // num_sections (big-endian u16 at offset 26)
    sections[27] = 200;
    case("sections.eif", sections, "at most 32");

    // A signature over another PCR0 is refused even with a valid CRC.
    let d = eif::describe(&good, eif::DescribeOptions::default(), &mut |_| {}).unwrap();
    let sig = d.sections.iter().find(|s| s.kind == "signature").unwrap();
    let start = (sig.offset + 12) as usize;
    let section = &bytes[start..start + sig.size as usize];
    let mut other = d.pcrs.pcr0;
    other[0] ^= 1;
    let err = eif::sign::verify_section(section, &other).unwrap_err();
    assert!(
        matches!(&err, SignError::WrongPcr0 { index: 0, image, .. } if *image == other),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("does not match the image's PCR0"), "{err}");
    // Flip the last byte of the COSE_Sign1 (inside the ECDSA signature). The
    // section is CBOR with byte strings as arrays of integers, so the flip is
    // made on the decoded value: flipping a raw byte could hit an integer's
    // length marker and test the CBOR parser instead of the signature.
    let tampered = {
        use ciborium::Value;
        let mut v: Value = ciborium::from_reader(section).unwrap();
        let Value::Array(sigs) = &mut v else {
            panic!("not an array")
        };
        let Value::Map(fields) = &mut sigs[0] else {
            panic!("not a map")
        };
        let (_, cose) = fields
            .iter_mut()
            .find(|(k, _)| k.as_text() == Some("signature"))
            .expect("signature field");
        match cose {
            Value::Array(items) => {
                let last = items.last_mut().expect("non-empty");
                let b = u8::try_from(last.as_integer().expect("byte")).expect("u8");
                *last = Value::Integer((b ^ 1).into());
            }
            Value::Bytes(b) => *b.last_mut().expect("non-empty") ^= 1,
            other => panic!("signature is {other:?}"),
        }
        let mut out = vec![];
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    };
    let err = eif::sign::verify_section(&tampered, &d.pcrs.pcr0).unwrap_err();
    assert!(matches!(err, SignError::BadSignature), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("signature"), "{err}");

    // Usage errors exit 2.
    let (code, _, err) = run(&["describe", dir.path().join("missing.eif").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(&["build", "--output", "x.eif"]);
    assert_eq!(code, 2);
}

#[test]
fn signing_key_must_match_certificate() {
    let i = inputs();
    let other = i.kernel.with_file_name("other.pem");
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        other.to_str().unwrap(),
    ]);
    let err = Signer::from_pem(
        &std::fs::read(&i.cert).unwrap(),
        &std::fs::read_to_string(&other).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, SignError::KeyMismatch), "{err:?}");
    assert!(err.to_string().contains("does not belong"), "{err}");
    let err =
        Signer::from_pem(b"not a cert", &std::fs::read_to_string(&i.key).unwrap()).unwrap_err();
    assert!(matches!(err, SignError::CertNotPem(_)), "{err:?}");
    assert!(err.to_string().contains("PEM"), "{err}");
    let err = Signer::from_pem(&std::fs::read(&i.cert).unwrap(), "not a key").unwrap_err();
    assert!(matches!(err, SignError::BadKey), "{err:?}");
}

#[test]
fn measurement_records_compare_and_detect_tampering() {
    let i = inputs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("img.eif");
    eif::build::build(&spec(&i, None), &image, &mut |_, _| {}).unwrap();
    let (key, public, meas) = (
        d.join("rec.pem"),
        d.join("rec.pub.pem"),
        d.join("measurements"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (code, _, err) = run(&[
        "record",
        "keygen",
        "--out",
        &s(&key),
        "--public",
        &s(&public),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&[
        "record",
        "append",
        "--eif",
        &s(&image),
        "--release",
        "v0.1.0",
        "--key",
        &s(&key),
        "--dir",
        &s(&meas),
        "--commit",
        "abc123",
        "--input",
        &format!("kernel={}", s(&i.kernel)),
    ]);
    assert_eq!(code, 0, "{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["seq"], 0);
    assert!(rec["inputs"]["kernel"]["sha384"].is_string());
    let (code, out, err) = run(&["record", "verify", "--key", &s(&public), "--dir", &s(&meas)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 records"), "{out}");

    // The record is what the image measures to; the verifier reads it too.
    let record = meas.join("pii-enclave/v0.1.0.json");
    let (code, out, err) = run(&[
        "compare",
        "--expected",
        &s(&record),
        "--image",
        &s(&image),
        "--record-key",
        &s(&public),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let parsed = verifier::attestation::parse_expected(
        &serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(parsed.len(), 3);

    // Another image: the comparison names the PCR that differs.
    let other = d.join("other.eif");
    let mut sp = spec(&i, None);
    sp.app.as_mut().unwrap().args.push("--verbose".into());
    eif::build::build(&sp, &other, &mut |_, _| {}).unwrap();
    let (code, out, _) = run(&["compare", "--expected", &s(&record), "--image", &s(&other)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("PCR2: MISMATCH") && out.contains("PCR1: match"),
        "{out}"
    );

    // An edited record fails its signature; an edited history fails the chain.
    let mut edited: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    edited["Measurements"]["PCR2"] = "0".repeat(96).into();
    let forged = d.join("forged.json");
    std::fs::write(&forged, edited.to_string()).unwrap();
    let (code, _, err) = run(&[
        "compare",
        "--expected",
        &s(&forged),
        "--image",
        &s(&image),
        "--record-key",
        &s(&public),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("signature does not verify"), "{err}");
    std::fs::write(&record, edited.to_string()).unwrap();
    let (code, _, err) = run(&["record", "verify", "--key", &s(&public), "--dir", &s(&meas)]);
    assert_eq!(code, 1);
    assert!(err.contains("differs from its entry"), "{err}");
    // Releases are never replaced.
    let (code, _, err) = run(&[
        "record",
        "append",
        "--eif",
        &s(&image),
        "--release",
        "v0.1.0",
        "--key",
        &s(&key),
        "--dir",
        &s(&meas),
        "--commit",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("never replaced"), "{err}");
}

#[test]
fn ci_verify_nitro_script_names_the_differing_pcr_and_gates_with_rego() {
    let i = inputs();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.eif");
    let built = eif::build::build(&spec(&i, None), &image, &mut |_, _| {}).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = root.join("ci/attest/verify_nitro.sh");
    let deploy = root.join("policy/opa/examples/deploy.json");
    let good = dir.path().join("good.json");
    std::fs::write(&good, built.pcrs.to_json().to_string()).unwrap();
    let mut bad_pcrs = built.pcrs.to_json();
    bad_pcrs["PCR0"] = "ab".repeat(48).into();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, bad_pcrs.to_string()).unwrap();
    let run_script = |expected: &Path| {
        let o = Command::new("bash")
            .arg(&script)
            .args([
                "--expected",
                expected.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
            ])
            .args(["--rego-input", deploy.to_str().unwrap()])
            .env("EIF_PROFILE", "debug")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = run_script(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"allow\": true"), "{out}");
    let (code, out) = run_script(&bad);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PCR0: MISMATCH") && out.contains("Rego gate denied"),
        "{out}"
    );
}
