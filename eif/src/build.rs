//! Deterministic EIF builds.
//!
//! Section order and header layout follow nitro-cli (`EifBuilder`): kernel,
//! cmdline, metadata, ramdisks (bootstrap first), signature. Nothing in the
//! output depends on the build's time, working folder, umask, user or the
//! input files' metadata: the metadata section's build time is
//! `SOURCE_DATE_EPOCH` (0 when unset), archive entries have fixed owners,
//! modes and mtimes, and signatures are RFC 6979 deterministic.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_image_format::defs::{
    EifBuildInfo, EifHeader, EifIdentityInfo, EifSectionHeader, EifSectionType, EIF_HDR_ARCH_ARM64,
    EIF_MAGIC, MAX_NUM_SECTIONS,
};

use crate::cpio::{Archive, Source};
use crate::image::{
    extend, Digests, EifError, Pcrs, Route, HEADER_LEN, MAX_VERSION, SECTION_HEADER_LEN,
};
use crate::sign::Signer;

/// The boot ramdisk nitro-cli ships (its `init` and `nsm.ko` blobs), as one
/// prebuilt archive or as the two files to pack.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    Ramdisk(PathBuf),
    Parts { init: PathBuf, nsm_ko: PathBuf },
}

/// The application ramdisk: our binary, its config, and how init starts it.
#[derive(Debug, Clone)]
pub struct App {
    pub binary: PathBuf,
    /// Installed as `/usr/bin/<name>` in the enclave's root file system.
    pub name: String,
    pub config: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct BuildSpec {
    pub kernel: PathBuf,
    pub cmdline: String,
    pub bootstrap: Bootstrap,
    pub app: Option<App>,
    pub extra_ramdisks: Vec<PathBuf>,
    pub signer: Option<Signer>,
    pub aarch64: bool,
    pub memory_mib: u64,
    pub cpus: u64,
    pub image_name: String,
    pub image_version: String,
    pub kernel_version: String,
    pub source_date_epoch: u64,
}

/// A section's bytes, from a file or built in memory.
enum Data {
    File(PathBuf, u64),
    Bytes(Vec<u8>),
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::File(_, n) => *n,
            Data::Bytes(b) => b.len() as u64,
        }
    }

    fn for_each_chunk(
        &self,
        mut f: impl FnMut(&[u8]) -> Result<(), EifError>,
    ) -> Result<(), EifError> {
        match self {
            Data::Bytes(b) => {
                for c in b.chunks(1 << 20) {
                    f(c)?;
                }
                Ok(())
            }
            Data::File(p, n) => {
                let mut file = File::open(p).map_err(EifError::io(p))?;
                let mut buf = vec![0u8; 1 << 20];
                let mut left = *n;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    file.read_exact(&mut buf[..want]).map_err(|e| {
                        EifError::Other(format!(
                            "{}: {e} (did it change during the build?)",
                            p.display()
                        ))
                    })?;
                    f(&buf[..want])?;
                    left -= want as u64;
                }
                Ok(())
            }
        }
    }
}

fn file_data(p: &Path, what: &str) -> Result<Data, EifError> {
    let md = std::fs::metadata(p)
        .map_err(|e| EifError::Other(format!("{what} {}: {e}", p.display())))?;
    if !md.is_file() {
        return Err(EifError::Other(format!(
            "{what} {}: not a regular file",
            p.display()
        )));
    }
    Ok(Data::File(p.to_path_buf(), md.len()))
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct Built {
    pub pcrs: Pcrs,
    pub file_sha384: [u8; 48],
    pub size: u64,
}

/// The application ramdisk's archive, laid out as nitro-cli's init expects:
/// `/cmd` (argv, one per line), `/env` (KEY=VALUE lines) and `/rootfs`.
pub fn app_archive(app: &App) -> Result<Archive, EifError> {
    let e = |x: std::io::Error| EifError::Other(x.to_string());
    if app.name.is_empty() || app.name.contains('/') {
        return Err(EifError::Other(format!(
            "binary name {:?} is not a file name",
            app.name
        )));
    }
    for (k, v) in &app.env {
        if k.is_empty() || k.contains('=') || k.contains('\n') || v.contains('\n') {
            return Err(EifError::Other(format!(
                "environment entry {k:?}: bad name or newline"
            )));
        }
    }
    if app.args.iter().any(|a| a.contains('\n')) {
        return Err(EifError::Other("arguments cannot contain newlines".into()));
    }
    let mut a = Archive::new();
    let mut cmd = format!("/usr/bin/{}\n", app.name);
    for arg in &app.args {
        cmd.push_str(arg);
        cmd.push('\n');
    }
    a.file("cmd", 0o644, Source::Bytes(cmd.into_bytes()))
        .map_err(e)?;
    let mut env: Vec<String> = app.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    env.sort();
    a.file("env", 0o644, Source::Bytes(env.concat().into_bytes()))
        .map_err(e)?;
    a.file(
        &format!("rootfs/usr/bin/{}", app.name),
        0o755,
        Source::Path(app.binary.clone()),
    )
    .map_err(e)?;
    if let Some(c) = &app.config {
        a.file(
            &format!("rootfs/etc/{}/config.toml", app.name),
            0o644,
            Source::Path(c.clone()),
        )
        .map_err(e)?;
    }
    for d in ["rootfs/dev", "rootfs/proc", "rootfs/sys", "rootfs/run"] {
        a.dir(d, 0o755).map_err(e)?;
    }
    a.dir("rootfs/tmp", 0o1777).map_err(e)?;
    Ok(a)
}

/// The boot ramdisk from nitro-cli's `init` and `nsm.ko`.
pub fn bootstrap_archive(init: &Path, nsm_ko: &Path) -> Result<Archive, EifError> {
    let e = |x: std::io::Error| EifError::Other(x.to_string());
    let mut a = Archive::new();
    a.file("init", 0o755, Source::Path(init.to_path_buf()))
        .map_err(e)?;
    a.file("nsm.ko", 0o644, Source::Path(nsm_ko.to_path_buf()))
        .map_err(e)?;
    a.dir("dev", 0o755).map_err(e)?;
    Ok(a)
}

/// RFC 3339 UTC for a Unix time.
pub fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Build `spec` into `output` (written to a temporary file beside it, then
/// renamed). `progress(done, total)` reports bytes processed.
pub fn build(
    spec: &BuildSpec,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Built, EifError> {
    if spec.cmdline.contains('\0') {
        return Err(EifError::Other(
            "kernel command line contains a NUL byte".into(),
        ));
    }
    let mtime = u32::try_from(spec.source_date_epoch).map_err(|_| {
        EifError::Other("SOURCE_DATE_EPOCH does not fit the cpio format (year 2106)".into())
    })?;
    let kernel = file_data(&spec.kernel, "kernel")?;
    let cmdline = Data::Bytes(spec.cmdline.as_bytes().to_vec());
    let mut ramdisks = vec![match &spec.bootstrap {
        Bootstrap::Ramdisk(p) => file_data(p, "bootstrap ramdisk")?,
        Bootstrap::Parts { init, nsm_ko } => Data::Bytes(
            bootstrap_archive(init, nsm_ko)?
                .to_vec(mtime)
                .map_err(|e| EifError::Other(e.to_string()))?,
        ),
    }];
    if let Some(app) = &spec.app {
        ramdisks.push(Data::Bytes(
            app_archive(app)?
                .to_vec(mtime)
                .map_err(|e| EifError::Other(format!("application ramdisk: {e}")))?,
        ));
    }
    for p in &spec.extra_ramdisks {
        ramdisks.push(file_data(p, "ramdisk")?);
    }
    let identity = EifIdentityInfo {
        img_name: spec.image_name.clone(),
        img_version: spec.image_version.clone(),
        build_info: EifBuildInfo {
            build_time: rfc3339(spec.source_date_epoch),
            build_tool: "pii-enclave eif".into(),
            build_tool_version: env!("CARGO_PKG_VERSION").into(),
            img_os: "Linux".into(),
            img_kernel: spec.kernel_version.clone(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::Value::Null,
    };
    let metadata =
        Data::Bytes(serde_json::to_vec(&identity).map_err(|e| EifError::Other(e.to_string()))?);

    let measured: u64 = kernel.len() + cmdline.len() + ramdisks.iter().map(Data::len).sum::<u64>();
    let total = measured * 2;
    let mut done = 0u64;

    // Pass 1: measure.
    let mut digests = Digests::start(false);
    let mut feed = |d: &Data, route: Route, digests: &mut Digests, done: &mut u64| {
        d.for_each_chunk(|c| {
            let mut b = digests.buffer();
            b.extend_from_slice(c);
            digests.feed(b, route);
            *done += c.len() as u64;
            progress(*done, total);
            Ok(())
        })
    };
    let boot = Route {
        image: true,
        boot: true,
        app: false,
        file: false,
    };
    feed(&kernel, boot, &mut digests, &mut done)?;
    feed(&cmdline, boot, &mut digests, &mut done)?;
    for (i, r) in ramdisks.iter().enumerate() {
        let route = Route {
            image: true,
            boot: i == 0,
            app: i > 0,
            file: false,
        };
        feed(r, route, &mut digests, &mut done)?;
    }
    let (image, bootd, appd, _) = digests.finish()?;
    let mut pcrs = Pcrs {
        pcr0: extend(&image),
        pcr1: extend(&bootd),
        pcr2: extend(&appd),
        pcr8: None,
    };
    let signature = match &spec.signer {
        Some(s) => {
            pcrs.pcr8 = Some(s.pcr8());
            Some(Data::Bytes(s.section(&pcrs.pcr0)?))
        }
        None => None,
    };

    // Layout.
    let mut sections: Vec<(EifSectionType, &Data)> = vec![
        (EifSectionType::EifSectionKernel, &kernel),
        (EifSectionType::EifSectionCmdline, &cmdline),
        (EifSectionType::EifSectionMetadata, &metadata),
    ];
    for r in &ramdisks {
        sections.push((EifSectionType::EifSectionRamdisk, r));
    }
    if let Some(s) = &signature {
        sections.push((EifSectionType::EifSectionSignature, s));
    }
    if sections.len() > MAX_NUM_SECTIONS {
        return Err(EifError::Other(format!(
            "{} sections; the format allows at most {MAX_NUM_SECTIONS}",
            sections.len()
        )));
    }
    let mut offsets = [0u64; MAX_NUM_SECTIONS];
    let mut sizes = [0u64; MAX_NUM_SECTIONS];
    let mut at = HEADER_LEN as u64;
    for (i, (_, d)) in sections.iter().enumerate() {
        offsets[i] = at;
        sizes[i] = d.len();
        at += SECTION_HEADER_LEN as u64 + d.len();
    }
    let mut header = EifHeader {
        magic: EIF_MAGIC,
        version: MAX_VERSION,
        flags: if spec.aarch64 { EIF_HDR_ARCH_ARM64 } else { 0 },
        default_mem: spec.memory_mib * 1024 * 1024,
        default_cpus: spec.cpus,
        reserved: 0,
        num_sections: sections.len() as u16,
        section_offsets: offsets,
        section_sizes: sizes,
        unused: 0,
        eif_crc32: 0,
    };

    // Pass 2: write, computing the CRC as nitro-cli does (header without its
    // CRC field, then each section header and its data, in order).
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        output.file_name().and_then(|n| n.to_str()).unwrap_or("eif"),
        std::process::id()
    ));
    let result = (|| {
        let f = File::create(&tmp).map_err(EifError::io(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut crc = crc32fast::Hasher::new();
        let hbytes = header.to_be_bytes();
        crc.update(&hbytes[..HEADER_LEN - 4]);
        w.write_all(&hbytes).map_err(EifError::io(&tmp))?;
        for (kind, d) in &sections {
            let sh = EifSectionHeader {
                section_type: *kind,
                flags: 0,
                section_size: d.len(),
            }
            .to_be_bytes();
            crc.update(&sh);
            w.write_all(&sh).map_err(EifError::io(&tmp))?;
            d.for_each_chunk(|c| {
                crc.update(c);
                w.write_all(c).map_err(EifError::io(&tmp))?;
                if !matches!(
                    kind,
                    EifSectionType::EifSectionMetadata | EifSectionType::EifSectionSignature
                ) {
                    done += c.len() as u64;
                    progress(done, total);
                }
                Ok(())
            })?;
        }
        header.eif_crc32 = crc.finalize();
        let mut f = w
            .into_inner()
            .map_err(|e| EifError::io(&tmp)(e.into_error()))?;
        f.seek(SeekFrom::Start(0)).map_err(EifError::io(&tmp))?;
        f.write_all(&header.to_be_bytes())
            .map_err(EifError::io(&tmp))?;
        f.sync_all().map_err(EifError::io(&tmp))?;
        Ok::<(), EifError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }

    // Read back what we wrote: a full structural check, CRC, signature, and
    // the file digest, with PCRs that must equal the ones we signed.
    let desc = match crate::image::describe(
        &tmp,
        crate::image::DescribeOptions { file_digest: true },
        &mut |_| {},
    ) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(EifError::Other(format!(
                "the image just written does not read back: {e}"
            )));
        }
    };
    if desc.pcrs != pcrs {
        let _ = std::fs::remove_file(&tmp);
        return Err(EifError::Other(
            "the image read back measures differently (input changed during the build?)".into(),
        ));
    }
    std::fs::rename(&tmp, output).map_err(EifError::io(output))?;
    Ok(Built {
        pcrs,
        file_sha384: desc.file_sha384.unwrap_or([0; 48]),
        size: desc.file_len,
    })
}
