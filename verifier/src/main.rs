//! `verifier`: check pii-enclave evidence.
//!
//! Why one file: the command line: one clap definition and one short handler per subcommand, kept beside the argument structs they read.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Verify pii-enclave evidence. Exit codes: 0 verified, 1 rejected, 2 usage error.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Verify a Nitro attestation document (COSE_Sign1/ES384, chain to the
    /// pinned AWS Nitro Enclaves Root G1, validity, constraints, signature,
    /// then policy). Exit codes: 0 accepted, 1 rejected (the JSON names the
    /// failing step and reason), 2 usage error.
    ///
    /// Example: verifier verify --doc att.cbor --at 1736179625 --expected describe-eif.json --format json
    Verify {
        /// The raw attestation document (CBOR COSE_Sign1).
        #[arg(long)]
        doc: PathBuf,
        /// Verification time, Unix seconds (certificates must be valid then).
        #[arg(long)]
        at: i64,
        /// Expected PCRs: {"PCR0": "hex", …}, `nitro-cli describe-eif` output, or a
        /// measurement record. Only the PCRs it names are pinned.
        #[arg(long)]
        expected: Option<PathBuf>,
        /// Expected nonce, hex.
        #[arg(long)]
        nonce: Option<String>,
        /// Expected public_key, hex.
        #[arg(long)]
        public_key: Option<String>,
        /// Expected user_data, hex.
        #[arg(long)]
        user_data: Option<String>,
        /// Accept debug-mode documents (PCR0/1/2 all zero).
        #[arg(long)]
        allow_debug: bool,
        /// DANGEROUS: trust this root (PEM) instead of AWS's, e.g. the dev NSM's.
        #[arg(long)]
        dangerous_root: Option<PathBuf>,
        /// DANGEROUS, tests only: accept QEMU nitro-enclave documents, which
        /// are not signed and have no chain. Everything else (structure,
        /// PCRs, nonce, public key, user data) is checked; signed documents
        /// are refused in this mode.
        #[arg(long, conflicts_with = "dangerous_root", requires_all = ["expected", "nonce"])]
        dangerous_unsigned_qemu: bool,
        /// Output format: json or text.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Pod boot check: fetch a document with a fresh nonce from the sidecar and
    /// verify it now against the expected measurements. Exit 0 attested, 1 not.
    ///
    /// Example (init container): verifier boot --sidecar http://127.0.0.1:8210 --expected /etc/pii/measurements.json
    Boot {
        /// Sidecar base URL.
        #[arg(long, default_value = "http://127.0.0.1:8210")]
        sidecar: String,
        /// Expected PCRs (same formats as `verify --expected`).
        #[arg(long)]
        expected: PathBuf,
        /// Accept debug-mode enclaves.
        #[arg(long)]
        allow_debug: bool,
        /// DANGEROUS, development only: trust the root the sidecar reports
        /// (the development NSM's). Proves nothing about AWS hardware.
        #[arg(long)]
        dangerous_trust_sidecar_root: bool,
        /// Seconds to wait for the sidecar.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// A token whose policy grants `read` on `sys/attestation` (and
        /// nothing else: the sidecar is on the untrusted host). Deliberately
        /// not VAULT_TOKEN, which may hold a real Vault token.
        #[arg(long, env = "PII_ATTESTATION_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Write an attestation audit report: OUT/evidence.json (document, chain,
    /// decision, hashes) and OUT/report.html (self-contained page). Exit 0 if
    /// the document was accepted, 1 if rejected (the report is written either
    /// way), 2 on usage errors.
    ///
    /// Example: verifier report --doc att.cbor --at 1736179625 --expected eif.json --out audit/2025-01-06
    Report {
        #[arg(long)]
        doc: PathBuf,
        #[arg(long)]
        at: i64,
        #[arg(long)]
        expected: Option<PathBuf>,
        #[arg(long)]
        allow_debug: bool,
        /// Output directory (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate a Rego policy (default: the shipped deployment gate) on an
    /// input; with --doc, `input.attestation` is filled from a real
    /// verification. Prints {"allow", "reasons"}; exit 0 allow, 1 deny, 2 usage.
    ///
    /// Example: verifier policy --input deploy.json --doc att.cbor --at 1736179625
    Policy {
        /// Input document (JSON).
        #[arg(long)]
        input: PathBuf,
        /// Rego policy file [default: the shipped policy/opa/attestation.rego].
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Rego package holding `allow` and `deny`.
        #[arg(long, default_value = "data.pii.attestation")]
        package: String,
        /// Attestation document to verify and attach as input.attestation.
        #[arg(long, requires = "at")]
        doc: Option<PathBuf>,
        /// Verification time for --doc, Unix seconds.
        #[arg(long)]
        at: Option<i64>,
    },
    /// Verify the signed audit log a host stored: each stream's chain and
    /// signatures, the links between streams, and the checkpoints kept
    /// outside the host. Findings are named: deleted-tail, deleted-stream,
    /// deleted-records, edited-record, reordered, key-not-attested.
    ///
    /// Example: verifier audit --dir /var/lib/pii-enclave/audit --attestation att.cbor --checkpoints checkpoints.json
    Audit(AuditArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.cmd {
        Cmd::Report {
            doc,
            at,
            expected,
            allow_debug,
            out,
        } => {
            let bytes = match std::fs::read(&doc) {
                Ok(b) => b,
                Err(e) => return usage(format!("--doc {}: {e}", doc.display())),
            };
            let mut policy = verifier::attestation::Policy::aws(at);
            policy.allow_debug = allow_debug;
            if let Some(p) = &expected {
                match expected_pcrs(p) {
                    Ok(m) => policy.expected_pcrs = m,
                    Err(e) => return usage(e),
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let ev = verifier::report::evidence(&bytes, &policy, now);
            let html = verifier::report::html(&ev);
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(&out)?;
                std::fs::write(
                    out.join("evidence.json"),
                    serde_json::to_vec_pretty(&ev).unwrap_or_default(),
                )?;
                std::fs::write(out.join("report.html"), html)
            };
            if let Err(e) = write() {
                return usage(format!("--out {}: {e}", out.display()));
            }
            let accepted = ev["decision"]["accepted"].as_bool().unwrap_or(false);
            println!(
                "{} → {}",
                if accepted { "accepted" } else { "rejected" },
                out.join("report.html").display()
            );
            if accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Policy {
            input,
            policy,
            package,
            doc,
            at,
        } => {
            let rego = match &policy {
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(t) => t,
                    Err(e) => return usage(format!("--policy {}: {e}", p.display())),
                },
                None => verifier::policy::ATTESTATION_REGO.to_string(),
            };
            let mut input_json: serde_json::Value = match std::fs::read_to_string(&input)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(v) => v,
                Err(e) => return usage(format!("--input {}: {e}", input.display())),
            };
            if let (Some(d), Some(at)) = (&doc, at) {
                let bytes = match std::fs::read(d) {
                    Ok(b) => b,
                    Err(e) => return usage(format!("--doc {}: {e}", d.display())),
                };
                if let Err(e) = verifier::policy::attach_attestation(
                    &mut input_json,
                    &bytes,
                    verifier::attestation::Policy::aws(at),
                ) {
                    return usage(e);
                }
            }
            match verifier::policy::evaluate(&rego, &package, &input_json) {
                Ok(dec) => {
                    println!("{}", serde_json::to_string_pretty(&dec).unwrap_or_default());
                    if dec.allow {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => usage(e),
            }
        }
        Cmd::Boot {
            sidecar,
            expected,
            allow_debug,
            dangerous_trust_sidecar_root,
            timeout,
            token,
        } => {
            let pcrs = match expected_pcrs(&expected) {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let mut template = verifier::attestation::Policy::aws(now);
            template.expected_pcrs = pcrs;
            template.allow_debug = allow_debug;
            let check = verifier::boot::BootCheck {
                sidecar,
                policy_template: template,
                dangerous_trust_sidecar_root,
                timeout: std::time::Duration::from_secs(timeout),
                token,
            };
            match verifier::boot::run(&check, now) {
                Ok(v) => {
                    println!(
                        "attested: {} (PCR0 {})",
                        v.doc.module_id,
                        v.doc.pcrs.get(&0).map(hex::encode).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("verifier boot: NOT attested: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Verify {
            doc,
            at,
            expected,
            nonce,
            public_key,
            user_data,
            allow_debug,
            dangerous_root,
            dangerous_unsigned_qemu,
            format,
        } => verify_cmd(VerifyArgs {
            doc,
            at,
            expected,
            nonce,
            public_key,
            user_data,
            allow_debug,
            dangerous_root,
            dangerous_unsigned_qemu,
            format,
        }),
        Cmd::Audit(a) => audit_cmd(a),
    }
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// Directory with one `<stream>.jsonl` file per enclave run.
    #[arg(long)]
    dir: PathBuf,
    /// An attestation document of the enclave (`GET /v1/attestation?nonce=…`);
    /// its enclave-built user_data carries the audit key's SHA-256, which
    /// every stream's key must match. Verified at its own timestamp, against
    /// --expected (required: any genuine document of another image would
    /// otherwise vouch for a key the host chose).
    #[arg(long, requires = "expected")]
    attestation: Option<PathBuf>,
    /// Expected PCRs for --attestation (same formats as `verify --expected`).
    #[arg(long, requires = "attestation")]
    expected: Option<PathBuf>,
    /// Accept a debug-mode --attestation document.
    #[arg(long, requires = "attestation")]
    allow_debug: bool,
    /// DANGEROUS: trust this root (PEM) for --attestation, e.g. the dev NSM's.
    #[arg(long, requires = "attestation")]
    dangerous_root: Option<PathBuf>,
    /// DANGEROUS: a bare Ed25519 public key (hex) instead of an attestation
    /// document; the host serves `sys/audit-key` and can substitute its own.
    #[arg(long, conflicts_with = "attestation")]
    dangerous_public_key: Option<String>,
    /// The anchor's checkpoint record, read from Vault KV or DynamoDB
    /// directly (not through the host): the set's JSON, `vault kv get
    /// -format=json` output, or `aws dynamodb get-item` output.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// A receipt (`X-Pii-Audit-Receipt` of a decrypt/decode answer); repeatable.
    #[arg(long = "receipt")]
    receipts: Vec<String>,
    /// Output format: json or text.
    #[arg(long, default_value = "text")]
    format: String,
}

/// A command-line argument that cannot be used (exit 2).
#[derive(Debug, thiserror::Error)]
enum ArgError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--dangerous-root {path}: {source}")]
    Root { path: String, source: FileError },
    #[error("--expected {path}: {source}")]
    Expected { path: String, source: FileError },
    #[error("--{name} is not hex")]
    NotHex {
        name: &'static str,
        source: hex::FromHexError,
    },
    #[error("--attestation needs --expected")]
    NoExpected,
    #[error("--expected {0}: PCR0 (the image) must be pinned")]
    NoPcr0(String),
    #[error("--attestation: {0}")]
    Attested(#[from] verifier::audit::AttestedKeyError),
}

/// Why the file an argument names cannot be used (shown after the flag and
/// the path).
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Pem(#[from] verifier::attestation::PemError),
    #[error(transparent)]
    Pcrs(#[from] verifier::attestation::ExpectedPcrsError),
}

/// The audit key's SHA-256 from a verified document (at its own timestamp).
fn attested_audit_key(a: &AuditArgs, doc: &std::path::Path) -> Result<[u8; 32], ArgError> {
    let bytes = std::fs::read(doc).map_err(|source| ArgError::Read {
        path: doc.display().to_string(),
        source,
    })?;
    let at = verifier::audit::document_time(&bytes)?;
    let mut policy = policy_for(at, a.dangerous_root.as_deref())?;
    policy.allow_debug = a.allow_debug;
    let p = a.expected.as_deref().ok_or(ArgError::NoExpected)?;
    policy.expected_pcrs = expected_pcrs(p)?;
    if !policy.expected_pcrs.contains_key(&0) {
        return Err(ArgError::NoPcr0(p.display().to_string()));
    }
    let key = verifier::audit::attested_key(&bytes, &policy)?;
    eprintln!(
        "verifier: audit key {} attested by an enclave with PCR0 {}",
        hex::encode(key),
        hex::encode(&policy.expected_pcrs[&0])
    );
    Ok(key)
}

fn audit_cmd(a: AuditArgs) -> ExitCode {
    use verifier::audit::KeyTrust;
    if a.format != "json" && a.format != "text" {
        return usage("--format must be json or text");
    }
    let trust = if let Some(doc) = a.attestation.clone() {
        match attested_audit_key(&a, &doc) {
            Ok(h) => KeyTrust::Attested(h),
            Err(e) => return usage(e),
        }
    } else if let Some(k) = &a.dangerous_public_key {
        match hex::decode(k) {
            Ok(b) if b.len() == 32 => KeyTrust::Bare(b),
            _ => {
                return usage(
                    "--dangerous-public-key must be 64 hex digits (an Ed25519 public key)",
                )
            }
        }
    } else {
        KeyTrust::Unpinned
    };
    let mut cps = vec![];
    if let Some(p) = &a.checkpoints {
        match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| verifier::audit::load_checkpoints(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => cps.extend(c),
            Err(e) => return usage(format!("--checkpoints {}: {e}", p.display())),
        }
    }
    for r in &a.receipts {
        match pii_proto::audit::SignedCheckpoint::parse_receipt(r) {
            Ok(c) => cps.push(c),
            Err(e) => return usage(format!("--receipt {r:?}: {e}")),
        }
    }
    let report = match verifier::audit::verify_dir(&a.dir, &trust, &cps) {
        Ok(r) => r,
        Err(e) => return usage(format!("cannot read {}: {e}", a.dir.display())),
    };
    if a.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for s in &report.streams {
            let status = if s.problems.is_empty() {
                "ok"
            } else {
                "TAMPERED"
            };
            println!("{status:8} {} ({} records)", s.stream, s.records);
            for p in &s.problems {
                println!("         - {}: {}", p.kind, p.detail);
            }
        }
        if report.streams.is_empty() {
            println!("no audit streams in {}", a.dir.display());
        }
        for p in &report.problems {
            println!("TAMPERED {}: {}", p.kind, p.detail);
        }
        println!(
            "{} checkpoint(s) and receipt(s) checked",
            report.checkpoints
        );
        for w in &report.warnings {
            println!("warning: {w}");
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

struct VerifyArgs {
    doc: PathBuf,
    at: i64,
    expected: Option<PathBuf>,
    nonce: Option<String>,
    public_key: Option<String>,
    user_data: Option<String>,
    allow_debug: bool,
    dangerous_root: Option<PathBuf>,
    dangerous_unsigned_qemu: bool,
    format: String,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("verifier: {msg}");
    ExitCode::from(2)
}

fn hex_arg(name: &'static str, v: &Option<String>) -> Result<Option<Vec<u8>>, ArgError> {
    v.as_ref()
        .map(|h| hex::decode(h).map_err(|source| ArgError::NotHex { name, source }))
        .transpose()
}

/// The pinned AWS root, or (dangerous) another one.
fn policy_for(
    at: i64,
    dangerous_root: Option<&std::path::Path>,
) -> Result<verifier::attestation::Policy, ArgError> {
    use verifier::attestation::{pem_to_der, Policy};
    match dangerous_root {
        None => Ok(Policy::aws(at)),
        Some(p) => {
            let read =
                || -> Result<Vec<u8>, FileError> { Ok(pem_to_der(&std::fs::read_to_string(p)?)?) };
            let der = read().map_err(|source| ArgError::Root {
                path: p.display().to_string(),
                source,
            })?;
            eprintln!(
                "verifier: DANGEROUS: trusting {} instead of the AWS Nitro root",
                p.display()
            );
            Ok(Policy::dangerous_with_root(at, der))
        }
    }
}

fn expected_pcrs(p: &std::path::Path) -> Result<std::collections::BTreeMap<u8, Vec<u8>>, ArgError> {
    let read = || -> Result<_, FileError> {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
        Ok(verifier::attestation::parse_expected(&json)?)
    };
    read().map_err(|source| ArgError::Expected {
        path: p.display().to_string(),
        source,
    })
}

fn verify_cmd(a: VerifyArgs) -> ExitCode {
    use verifier::attestation::verify;
    if a.format != "json" && a.format != "text" {
        return usage("--format must be json or text");
    }
    let bytes = match std::fs::read(&a.doc) {
        Ok(b) => b,
        Err(e) => return usage(format!("cannot read {}: {e}", a.doc.display())),
    };
    let mut policy = if a.dangerous_unsigned_qemu {
        eprintln!(
            "verifier: DANGEROUS: accepting an unsigned QEMU document (no signature, no chain)"
        );
        verifier::attestation::Policy::dangerous_unsigned_qemu(a.at)
    } else {
        match policy_for(a.at, a.dangerous_root.as_deref()) {
            Ok(p) => p,
            Err(e) => return usage(e),
        }
    };
    policy.allow_debug = a.allow_debug;
    if let Some(p) = &a.expected {
        match expected_pcrs(p) {
            Ok(m) => policy.expected_pcrs = m,
            Err(e) => return usage(e),
        }
    }
    for (name, arg, slot) in [
        ("nonce", &a.nonce, &mut policy.nonce),
        ("public-key", &a.public_key, &mut policy.public_key),
        ("user-data", &a.user_data, &mut policy.user_data),
    ] {
        match hex_arg(name, arg) {
            Ok(v) => *slot = v,
            Err(e) => return usage(e),
        }
    }
    let t0 = std::time::Instant::now();
    let result = verify(&bytes, &policy);
    let micros = t0.elapsed().as_micros();
    match result {
        Ok(v) => {
            if a.format == "json" {
                let out = serde_json::json!({
                    "accepted": true,
                    "verified_at": a.at,
                    "document": v.doc,
                    "debug_mode": v.debug_mode,
                    "chain": v.chain,
                    "signed": !a.dangerous_unsigned_qemu,
                    "pinned_pcrs": policy.expected_pcrs.keys().map(|k| format!("PCR{k}")).collect::<Vec<_>>(),
                    "verify_micros": micros,
                });
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!(
                    "accepted{}: {} at {} ({} PCRs pinned)",
                    if a.dangerous_unsigned_qemu {
                        " (UNSIGNED QEMU document: no signature, no chain)"
                    } else {
                        ""
                    },
                    v.doc.module_id,
                    a.at,
                    policy.expected_pcrs.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if a.format == "json" {
                let out = serde_json::json!({"accepted": false, "step": e.step(), "reason": e.to_string()});
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            } else {
                println!("rejected at {:?}: {e}", e.step());
            }
            ExitCode::from(1)
        }
    }
}
