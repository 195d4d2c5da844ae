//! `eif`: build, describe and compare reproducible Nitro Enclave images, and
//! keep the signed measurement records of releases.
//!
//! Exit codes: 0 success; 1 the image is corrupt, does not match, or a record
//! does not verify; 2 usage errors (bad flags, unreadable inputs).
//!
//! Why one file: the command line: one clap definition and one short handler per subcommand, kept beside the argument structs they read.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use eif::build::{App, Bootstrap, BuildSpec};
use eif::image::{DescribeOptions, EifError};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "eif",
    version,
    about = "Reproducible AWS Nitro Enclave images: build, describe (PCR0/1/2/8), compare, and signed measurement records",
    after_help = "Examples:\n  eif build --kernel blobs/bzImage --cmdline-file blobs/cmdline --init blobs/init --nsm-ko blobs/nsm.ko \\\n            --binary target/x86_64-unknown-linux-musl/release/pii-enclave --output pii-enclave.eif\n  eif describe pii-enclave.eif\n  eif compare --expected measurements/pii-enclave/v0.1.0.json --image pii-enclave.eif\n  eif record append --eif pii-enclave.eif --service pii-enclave --release v0.1.0 --key record-key.pem\n  eif record verify --service pii-enclave --key measurements/record-signing-key.pub.pem\n\nExit codes: 0 ok, 1 corrupt/mismatch/unverified, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Json,
    Text,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a deterministic EIF and print its measurements.
    Build(Box<BuildArgs>),
    /// Check an EIF (structure, CRC, signature) and print PCR0/1/2/8 and its
    /// SHA-384, with `nitro-cli describe-eif`'s field names.
    Describe {
        file: PathBuf,
        /// Skip the whole-file SHA-384 (PCRs only; faster).
        #[arg(long)]
        no_digest: bool,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Compare an EIF's PCRs with expected ones; names every PCR that differs.
    Compare {
        /// A measurement record, `nitro-cli describe-eif` output, or
        /// `{"PCR0": "hex", …}`. Only the PCRs it names are compared.
        #[arg(long)]
        expected: PathBuf,
        #[arg(long)]
        image: PathBuf,
        /// Verify the record's signature with this public key (PEM) first.
        #[arg(long)]
        record_key: Option<PathBuf>,
    },
    /// Signed, hash-chained measurement records.
    #[command(subcommand)]
    Record(RecordCmd),
}

#[derive(Subcommand, Debug)]
enum RecordCmd {
    /// Create a record-signing key pair (ECDSA P-384).
    Keygen {
        /// Private key (PKCS#8 PEM), written with mode 0600. Keep it secret.
        #[arg(long)]
        out: PathBuf,
        /// Public key (SPKI PEM) to commit beside the records.
        #[arg(long)]
        public: PathBuf,
    },
    /// Describe an EIF and append its signed record to
    /// `<dir>/<service>/history.jsonl` and `<dir>/<service>/<release>.json`.
    Append {
        #[arg(long)]
        eif: PathBuf,
        #[arg(long, default_value = "pii-enclave")]
        service: String,
        #[arg(long)]
        release: String,
        /// Private key (PKCS#8 PEM).
        #[arg(long, env = "EIF_RECORD_KEY")]
        key: PathBuf,
        #[arg(long, default_value = "measurements")]
        dir: PathBuf,
        /// Source commit (default: `git rev-parse HEAD`).
        #[arg(long)]
        commit: Option<String>,
        /// A build input to record as NAME=PATH (its SHA-384 is stored).
        #[arg(long = "input", value_parser = parse_kv)]
        inputs: Vec<(String, String)>,
    },
    /// Verify every record of a service: signatures, order and chain.
    Verify {
        #[arg(long, default_value = "pii-enclave")]
        service: String,
        /// Public key (SPKI PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "measurements")]
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// Kernel image (nitro-cli's `bzImage` on x86_64, `Image` on aarch64).
    #[arg(long)]
    kernel: PathBuf,
    /// Kernel command line.
    #[arg(long, conflicts_with = "cmdline_file")]
    cmdline: Option<String>,
    /// File holding the kernel command line (nitro-cli's `cmdline` blob).
    #[arg(long)]
    cmdline_file: Option<PathBuf>,
    /// Prebuilt boot ramdisk (cpio).
    #[arg(long, conflicts_with_all = ["init", "nsm_ko"])]
    bootstrap_ramdisk: Option<PathBuf>,
    /// nitro-cli's `init` blob, packed with `--nsm-ko` into the boot ramdisk.
    #[arg(long, requires = "nsm_ko")]
    init: Option<PathBuf>,
    /// nitro-cli's `nsm.ko` blob.
    #[arg(long, requires = "init")]
    nsm_ko: Option<PathBuf>,
    /// The enclave binary (static, musl) for the application ramdisk.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Name of the binary inside the enclave (`/usr/bin/NAME`).
    #[arg(long, default_value = "pii-enclave")]
    binary_name: String,
    /// Config file installed as `/etc/NAME/config.toml`.
    #[arg(long, requires = "binary")]
    config: Option<PathBuf>,
    /// Argument passed to the binary (repeatable).
    #[arg(long = "arg", default_values_t = vec!["serve".to_string()], requires = "binary")]
    args: Vec<String>,
    /// Environment variable KEY=VALUE for the binary (repeatable).
    #[arg(long = "env", value_parser = parse_kv, requires = "binary")]
    env: Vec<(String, String)>,
    /// Further ramdisks, measured into PCR2 after the application ramdisk.
    #[arg(long = "ramdisk")]
    ramdisks: Vec<PathBuf>,
    /// Signing certificate (PEM, ECDSA P-384) for PCR8.
    #[arg(long, requires = "private_key")]
    signing_certificate: Option<PathBuf>,
    /// Private key (PEM) of the signing certificate.
    #[arg(long, requires = "signing_certificate")]
    private_key: Option<PathBuf>,
    #[arg(long, value_parser = ["x86_64", "aarch64"], default_value = "x86_64")]
    arch: String,
    /// Default enclave memory recorded in the header.
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// Default enclave vCPUs recorded in the header.
    #[arg(long, default_value_t = 2)]
    cpus: u64,
    #[arg(long, default_value = "pii-enclave")]
    image_name: String,
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    image_version: String,
    #[arg(long, default_value = "unknown")]
    kernel_version: String,
    /// Build time recorded in the metadata and archive mtimes.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    #[arg(long, short)]
    output: PathBuf,
}

/// A `NAME=VALUE` argument without a name or an `=`.
#[derive(Debug, thiserror::Error)]
#[error("{input:?}: expected NAME=VALUE")]
struct KvError {
    input: String,
}

fn parse_kv(s: &str) -> Result<(String, String), KvError> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| KvError {
            input: s.to_owned(),
        })
}

enum Fail {
    Usage(String),
    Rejected(String),
}

impl From<EifError> for Fail {
    fn from(e: EifError) -> Self {
        match e {
            // Unreadable inputs are the caller's problem; anything about the
            // image's contents is a rejection.
            EifError::Io { .. } => Fail::Usage(e.to_string()),
            _ => Fail::Rejected(e.to_string()),
        }
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

fn read(p: &Path) -> Result<Vec<u8>, Fail> {
    std::fs::read(p).map_err(|e| Fail::Usage(format!("{}: {e}", p.display())))
}

fn sha384_file(p: &Path) -> Result<String, Fail> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(p).map_err(|e| Fail::Usage(format!("{}: {e}", p.display())))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Fail::Usage(format!("{}: {e}", p.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

/// `println!` that does not panic when stdout is closed (`eif … | head`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn print_json(v: &serde_json::Value) {
    say!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.cmd {
        Cmd::Build(a) => {
            let a = *a;
            let cmdline = match (&a.cmdline, &a.cmdline_file) {
                (Some(c), _) => c.clone(),
                (None, Some(p)) => String::from_utf8(read(p)?)
                    .map_err(|_| Fail::Usage(format!("{}: not UTF-8", p.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
                (None, None) => return Err(Fail::Usage("give --cmdline or --cmdline-file".into())),
            };
            let bootstrap = match (&a.bootstrap_ramdisk, &a.init, &a.nsm_ko) {
                (Some(r), _, _) => Bootstrap::Ramdisk(r.clone()),
                (None, Some(i), Some(n)) => Bootstrap::Parts {
                    init: i.clone(),
                    nsm_ko: n.clone(),
                },
                _ => {
                    return Err(Fail::Usage(
                        "give --bootstrap-ramdisk, or --init and --nsm-ko (nitro-cli's blobs)"
                            .into(),
                    ))
                }
            };
            let signer = match (&a.signing_certificate, &a.private_key) {
                (Some(c), Some(k)) => {
                    let key = String::from_utf8(read(k)?)
                        .map_err(|_| Fail::Usage("private key is not PEM text".into()))?;
                    Some(
                        eif::sign::Signer::from_pem(&read(c)?, &key)
                            .map_err(|e| Fail::Usage(e.to_string()))?,
                    )
                }
                _ => None,
            };
            if a.binary.is_none() && a.ramdisks.is_empty() {
                return Err(Fail::Usage(
                    "give --binary (and/or --ramdisk): an image needs an application".into(),
                ));
            }
            let spec = BuildSpec {
                kernel: a.kernel,
                cmdline,
                bootstrap,
                app: a.binary.map(|binary| App {
                    binary,
                    name: a.binary_name,
                    config: a.config,
                    args: a.args,
                    env: a.env,
                }),
                extra_ramdisks: a.ramdisks,
                signer,
                aarch64: a.arch == "aarch64",
                memory_mib: a.memory_mib,
                cpus: a.cpus,
                image_name: a.image_name,
                image_version: a.image_version,
                kernel_version: a.kernel_version,
                source_date_epoch: a.source_date_epoch,
            };
            let pb = bar(0, "build");
            let built = eif::build::build(&spec, &a.output, &mut |d, t| {
                pb.set_length(t);
                pb.set_position(d);
            });
            pb.finish_and_clear();
            let built = built.map_err(|e| match e {
                EifError::Io { .. } | EifError::Other(_) | EifError::Signature(_) => {
                    Fail::Usage(e.to_string())
                }
                other => Fail::Rejected(other.to_string()),
            })?;
            print_json(&serde_json::json!({
                "Measurements": built.pcrs.to_json(),
                "ImageSha384": hex::encode(built.file_sha384),
                "ImageSize": built.size,
                "Output": a.output.display().to_string(),
            }));
            Ok(())
        }
        Cmd::Describe {
            file,
            no_digest,
            format,
        } => {
            let len = std::fs::metadata(&file)
                .map_err(|e| Fail::Usage(format!("{}: {e}", file.display())))?
                .len();
            let pb = bar(len, "describe");
            let d = eif::describe(
                &file,
                DescribeOptions {
                    file_digest: !no_digest,
                },
                &mut |n| pb.set_position(n),
            );
            pb.finish_and_clear();
            let d = d?;
            match format {
                Format::Json => print_json(&d.to_json()),
                Format::Text => {
                    say!(
                        "EIF version {} ({}), {} bytes, CRC {:08x} ok",
                        d.version,
                        d.arch,
                        d.file_len,
                        d.crc
                    );
                    for (k, v) in d.pcrs.map() {
                        say!("{k:5} {v}");
                    }
                    if let Some(h) = d.file_sha384 {
                        say!("SHA-384 {}", hex::encode(h));
                    }
                    if let Some(s) = &d.signature {
                        say!(
                            "signed by {} (valid {} .. {}), signature ok",
                            s.subject,
                            s.not_before,
                            s.not_after
                        );
                    }
                    for s in &d.sections {
                        say!(
                            "section {:2} {:9} offset {:>12} size {:>12}",
                            s.index,
                            s.kind,
                            s.offset,
                            s.size
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Compare {
            expected,
            image,
            record_key,
        } => {
            let text = read(&expected)?;
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| Fail::Usage(format!("{}: not JSON: {e}", expected.display())))?;
            if let Some(k) = record_key {
                let pem = String::from_utf8(read(&k)?)
                    .map_err(|_| Fail::Usage("key is not PEM".into()))?;
                let vk = pii_measurements::VerifyingKey::from_pem(&pem)
                    .map_err(|e| Fail::Usage(e.to_string()))?;
                pii_measurements::verify_record(&v, &vk).map_err(|e| {
                    Fail::Rejected(format!("measurement record {}: {e}", expected.display()))
                })?;
                eprintln!("measurement record signature ok (key {})", vk.key_id());
            }
            let want = expected_pcrs(&v).map_err(|e| Fail::Usage(e.to_string()))?;
            let len = std::fs::metadata(&image)
                .map_err(|e| Fail::Usage(format!("{}: {e}", image.display())))?
                .len();
            let pb = bar(len, "measure");
            let d = eif::describe(&image, DescribeOptions { file_digest: true }, &mut |n| {
                pb.set_position(n)
            });
            pb.finish_and_clear();
            let d = d?;
            let have = d.pcrs.map();
            let mut diffs = Vec::new();
            for (k, w) in &want {
                match have.get(k) {
                    Some(h) if h == w => say!("{k}: match {h}"),
                    Some(h) => {
                        say!("{k}: MISMATCH\n  expected {w}\n  actual   {h}");
                        diffs.push(k.clone());
                    }
                    None => {
                        say!(
                            "{k}: MISMATCH (the image has no {k}; unsigned image?)\n  expected {w}"
                        );
                        diffs.push(k.clone());
                    }
                }
            }
            if let Some(want_sha) = v.get("eif_sha384").and_then(|s| s.as_str()) {
                let have_sha = d.file_sha384.map(hex::encode).unwrap_or_default();
                if want_sha == have_sha {
                    say!("eif_sha384: match {have_sha}");
                } else {
                    say!("eif_sha384: MISMATCH\n  expected {want_sha}\n  actual   {have_sha}");
                    diffs.push("eif_sha384".into());
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(Fail::Rejected(format!(
                    "{} differs: {}",
                    image.display(),
                    diffs.join(", ")
                )))
            }
        }
        Cmd::Record(RecordCmd::Keygen { out, public }) => {
            let (key, pem) =
                pii_measurements::SigningKey::generate().map_err(|e| Fail::Usage(e.to_string()))?;
            write_secret(&out, pem.as_bytes())?;
            std::fs::write(&public, key.verifying_key().to_pem())
                .map_err(|e| Fail::Usage(format!("{}: {e}", public.display())))?;
            say!(
                "key id {}\nprivate key {} (keep secret)\npublic key {}",
                key.key_id(),
                out.display(),
                public.display()
            );
            Ok(())
        }
        Cmd::Record(RecordCmd::Append {
            eif,
            service,
            release,
            key,
            dir,
            commit,
            inputs,
        }) => {
            let pem =
                String::from_utf8(read(&key)?).map_err(|_| Fail::Usage("key is not PEM".into()))?;
            let sk = pii_measurements::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| Fail::Usage(e.to_string()))?;
            let d = eif::describe(&eif, DescribeOptions { file_digest: true }, &mut |_| {})?;
            let commit = match commit {
                Some(c) => c,
                None => cmd_out("git", &["rev-parse", "HEAD"]).ok_or_else(|| {
                    Fail::Usage("cannot run git rev-parse HEAD; pass --commit".into())
                })?,
            };
            let mut input_map = BTreeMap::new();
            for (name, path) in inputs {
                let p = PathBuf::from(&path);
                input_map.insert(
                    name,
                    serde_json::json!({"path": path, "sha384": sha384_file(&p)?}),
                );
            }
            input_map.insert("eif".into(), serde_json::json!({"path": eif.display().to_string(), "sha384": d.file_sha384.map(hex::encode)}));
            let mut toolchain = BTreeMap::new();
            toolchain.insert("eif".into(), env!("CARGO_PKG_VERSION").to_string());
            for (name, cmd) in [("rustc", "rustc"), ("cargo", "cargo")] {
                if let Some(v) = cmd_out(cmd, &["--version"]) {
                    toolchain.insert(name.into(), v);
                }
            }
            let created_at = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let rec = pii_measurements::append(
                &dir,
                &pii_measurements::RecordInput {
                    service,
                    release,
                    commit,
                    eif_sha384: d.file_sha384.map(hex::encode).unwrap_or_default(),
                    pcrs: d.pcrs.map(),
                    inputs: input_map,
                    toolchain,
                    created_at,
                },
                &sk,
            )
            .map_err(|e| Fail::Rejected(e.to_string()))?;
            print_json(&rec);
            Ok(())
        }
        Cmd::Record(RecordCmd::Verify { service, key, dir }) => {
            let pem =
                String::from_utf8(read(&key)?).map_err(|_| Fail::Usage("key is not PEM".into()))?;
            let vk = pii_measurements::VerifyingKey::from_pem(&pem)
                .map_err(|e| Fail::Usage(e.to_string()))?;
            let hist = dir.join(&service).join("history.jsonl");
            let text = String::from_utf8(read(&hist)?)
                .map_err(|_| Fail::Rejected("history is not UTF-8".into()))?;
            let records = pii_measurements::verify_history(&text, &vk)
                .map_err(|e| Fail::Rejected(format!("{}: {e}", hist.display())))?;
            // Each release file must be the record the history holds.
            for r in &records {
                let rel = r
                    .get("release")
                    .and_then(|x| x.as_str())
                    .unwrap_or_default();
                let p = dir.join(&service).join(format!("{rel}.json"));
                let file: serde_json::Value = serde_json::from_slice(&read(&p)?)
                    .map_err(|e| Fail::Rejected(format!("{}: {e}", p.display())))?;
                if pii_measurements::record_sha384(&file) != pii_measurements::record_sha384(r) {
                    return Err(Fail::Rejected(format!(
                        "{} differs from its entry in {}",
                        p.display(),
                        hist.display()
                    )));
                }
            }
            say!(
                "{}: {} records, chain and signatures ok (key {})",
                hist.display(),
                records.len(),
                vk.key_id()
            );
            Ok(())
        }
    }
}

/// Why `--expected` names no usable measurements.
#[derive(Debug, thiserror::Error)]
enum ExpectedError {
    #[error("expected measurements must be a JSON object")]
    NotAnObject,
    #[error("unknown key {key:?}: use PCR0 … PCR31")]
    UnknownKey { key: String },
    #[error("{key}: not a hex string")]
    NotAString { key: String },
    #[error("{key}: expected 96 hex digits (SHA-384)")]
    NotSha384 { key: String, value: String },
    #[error("no PCRs in the expected measurements")]
    Empty,
}

fn expected_pcrs(v: &serde_json::Value) -> Result<BTreeMap<String, String>, ExpectedError> {
    let obj = v
        .get("Measurements")
        .unwrap_or(v)
        .as_object()
        .ok_or(ExpectedError::NotAnObject)?;
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        if k == "HashAlgorithm" {
            continue;
        }
        let n: u8 = k
            .strip_prefix("PCR")
            .and_then(|n| n.parse().ok())
            .filter(|n| *n < 32)
            .ok_or_else(|| ExpectedError::UnknownKey { key: k.clone() })?;
        let h = val
            .as_str()
            .ok_or_else(|| ExpectedError::NotAString { key: k.clone() })?
            .to_ascii_lowercase();
        if h.len() != 96 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ExpectedError::NotSha384 {
                key: k.clone(),
                value: h,
            });
        }
        out.insert(format!("PCR{n}"), h);
    }
    if out.is_empty() {
        return Err(ExpectedError::Empty);
    }
    Ok(out)
}

fn cmd_out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn write_secret(p: &Path, data: &[u8]) -> Result<(), Fail> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| {
            Fail::Usage(format!(
                "{}: {e} (refusing to overwrite a key)",
                p.display()
            ))
        })?;
    f.write_all(data)
        .map_err(|e| Fail::Usage(format!("{}: {e}", p.display())))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Rejected(m)) => {
            eprintln!("eif: {m}");
            ExitCode::from(1)
        }
        Err(Fail::Usage(m)) => {
            eprintln!("eif: {m}");
            ExitCode::from(2)
        }
    }
}
