//! Reading an EIF: structure checks, CRC, and PCR0/1/2/8 by streaming.
//!
//! PCR semantics are nitro-cli's (`aws-nitro-enclaves-image-format`):
//!
//! * PCR0 = extend(SHA-384(kernel ‖ cmdline ‖ every ramdisk))
//! * PCR1 = extend(SHA-384(kernel ‖ cmdline ‖ first ramdisk))
//! * PCR2 = extend(SHA-384(every ramdisk after the first))
//! * PCR8 = extend(SHA-384(DER of the signing certificate)), signed images only
//!
//! where extend(h) = SHA-384(48 zero bytes ‖ h). Metadata and signature
//! sections are not measured.
//!
//! The two independent digest streams (PCR0, and PCR1/PCR2, which cover
//! disjoint bytes) run on their own threads, fed from one reader, so a
//! two-core machine measures at about the speed of a single SHA-384 pass.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use aws_lc_rs::digest::{Context, SHA384};
use aws_nitro_enclaves_image_format::defs::{
    EifHeader, EifIdentityInfo, EifSectionHeader, EifSectionType, EIF_HDR_ARCH_ARM64, EIF_MAGIC,
    MAX_NUM_SECTIONS,
};

/// Size of the EIF header on disk.
pub const HEADER_LEN: usize = 548;
/// Size of a section header on disk.
pub const SECTION_HEADER_LEN: usize = 12;
/// Newest EIF version this tool reads and writes.
pub const MAX_VERSION: u16 = 4;

const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EifError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an EIF: magic bytes are {found}, expected 2e656966 (\".eif\")")]
    BadMagic { found: String },
    #[error("truncated: {what} needs bytes {start}..{end}, but the file has {len}")]
    Truncated {
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("unsupported EIF version {0}; this tool reads versions 1 to {MAX_VERSION}")]
    Version(u16),
    #[error("corrupt header: {0}")]
    Header(String),
    #[error("section {index}: {reason}")]
    Section { index: usize, reason: String },
    #[error("CRC mismatch: the header records {recorded:08x}, the contents give {computed:08x} (the file is corrupt or was edited)")]
    Crc { recorded: u32, computed: u32 },
    #[error("signature section: {0}")]
    Signature(#[from] crate::sign::SignError),
    #[error("{0}")]
    Other(String),
}

impl EifError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EifError + '_ {
        move |source| EifError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A section as laid out in the file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SectionInfo {
    pub index: usize,
    pub kind: &'static str,
    pub offset: u64,
    pub size: u64,
}

pub(crate) fn kind_name(t: EifSectionType) -> &'static str {
    match t {
        EifSectionType::EifSectionInvalid => "invalid",
        EifSectionType::EifSectionKernel => "kernel",
        EifSectionType::EifSectionCmdline => "cmdline",
        EifSectionType::EifSectionRamdisk => "ramdisk",
        EifSectionType::EifSectionSignature => "signature",
        EifSectionType::EifSectionMetadata => "metadata",
    }
}

/// The four measurement registers an EIF determines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcrs {
    pub pcr0: [u8; 48],
    pub pcr1: [u8; 48],
    pub pcr2: [u8; 48],
    pub pcr8: Option<[u8; 48]>,
}

impl Pcrs {
    /// As `nitro-cli` prints them under `Measurements`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("HashAlgorithm".into(), "Sha384 { ... }".into());
        m.insert("PCR0".into(), hex::encode(self.pcr0).into());
        m.insert("PCR1".into(), hex::encode(self.pcr1).into());
        m.insert("PCR2".into(), hex::encode(self.pcr2).into());
        if let Some(p8) = self.pcr8 {
            m.insert("PCR8".into(), hex::encode(p8).into());
        }
        serde_json::Value::Object(m)
    }

    pub fn map(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("PCR0".into(), hex::encode(self.pcr0));
        m.insert("PCR1".into(), hex::encode(self.pcr1));
        m.insert("PCR2".into(), hex::encode(self.pcr2));
        if let Some(p8) = self.pcr8 {
            m.insert("PCR8".into(), hex::encode(p8));
        }
        m
    }
}

pub use crate::pcr::{extend, sha384};

/// Which digest streams a chunk of bytes feeds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Route {
    pub image: bool,
    pub boot: bool,
    pub app: bool,
    pub file: bool,
}

type Chunk = (Arc<Vec<u8>>, Route);
/// (PCR0 stream, PCR1 stream, PCR2 stream, whole file) digests.
pub(crate) type Measured = ([u8; 48], [u8; 48], [u8; 48], Option<[u8; 48]>);
/// Which of a lane's digests (if any) a route feeds.
type Pick = fn(&Route) -> Option<usize>;
type Lane = (SyncSender<Chunk>, std::thread::JoinHandle<Vec<[u8; 48]>>);

/// Digest streams on worker threads: lane A = PCR0; lane B = PCR1 and PCR2
/// (disjoint bytes); lane C = whole-file SHA-384 (optional).
pub(crate) struct Digests {
    lanes: Vec<Lane>,
    pool: Vec<Arc<Vec<u8>>>,
}

fn lane(rx: Receiver<Chunk>, pick: Pick, n: usize) -> Vec<[u8; 48]> {
    let mut ctx: Vec<Context> = (0..n).map(|_| Context::new(&SHA384)).collect();
    while let Ok((buf, route)) = rx.recv() {
        if let Some(i) = pick(&route) {
            ctx[i].update(&buf);
        }
    }
    ctx.into_iter()
        .map(|c| {
            let mut o = [0u8; 48];
            o.copy_from_slice(c.finish().as_ref());
            o
        })
        .collect()
}

impl Digests {
    pub(crate) fn start(file_digest: bool) -> Self {
        let mut lanes = Vec::new();
        let picks: Vec<(Pick, usize)> = {
            let mut v: Vec<(Pick, usize)> = vec![
                (|r| r.image.then_some(0), 1),
                (
                    |r| {
                        if r.boot {
                            Some(0)
                        } else if r.app {
                            Some(1)
                        } else {
                            None
                        }
                    },
                    2,
                ),
            ];
            if file_digest {
                v.push((|r| r.file.then_some(0), 1));
            }
            v
        };
        for (pick, n) in picks {
            let (tx, rx) = sync_channel::<Chunk>(8);
            let h = std::thread::spawn(move || lane(rx, pick, n));
            lanes.push((tx, h));
        }
        Digests {
            lanes,
            pool: Vec::new(),
        }
    }

    /// A buffer no worker still holds, to fill with the next chunk.
    pub(crate) fn buffer(&mut self) -> Vec<u8> {
        if let Some(pos) = self.pool.iter().position(|b| Arc::strong_count(b) == 1) {
            let b = self.pool.swap_remove(pos);
            if let Ok(mut v) = Arc::try_unwrap(b) {
                v.clear();
                return v;
            }
        }
        Vec::with_capacity(CHUNK)
    }

    pub(crate) fn feed(&mut self, buf: Vec<u8>, route: Route) {
        if buf.is_empty() {
            return;
        }
        let buf = Arc::new(buf);
        for (tx, _) in &self.lanes {
            // A worker only stops when its sender is dropped.
            let _ = tx.send((buf.clone(), route));
        }
        if self.pool.len() < 32 {
            self.pool.push(buf);
        }
    }

    /// (image, boot, app, file) digests.
    pub(crate) fn finish(self) -> Result<Measured, EifError> {
        let mut res = Vec::new();
        for (tx, h) in self.lanes {
            drop(tx);
            // Never turn a lost digest into a zero PCR.
            res.push(
                h.join()
                    .map_err(|_| EifError::Other("a hashing thread failed".into()))?,
            );
        }
        let get = |l: usize, i: usize| res.get(l).and_then(|v| v.get(i)).copied();
        let missing = || EifError::Other("a digest is missing".into());
        Ok((
            get(0, 0).ok_or_else(missing)?,
            get(1, 0).ok_or_else(missing)?,
            get(1, 1).ok_or_else(missing)?,
            get(2, 0),
        ))
    }
}

/// Everything `eif describe` reports.
#[derive(Debug, Clone)]
pub struct Description {
    pub version: u16,
    pub arch: &'static str,
    pub default_mem: u64,
    pub default_cpus: u64,
    pub sections: Vec<SectionInfo>,
    pub pcrs: Pcrs,
    pub crc: u32,
    pub file_sha384: Option<[u8; 48]>,
    pub file_len: u64,
    pub metadata: Option<serde_json::Value>,
    pub signature: Option<crate::sign::SignatureInfo>,
}

impl Description {
    /// JSON with `nitro-cli describe-eif`'s field names, plus our own
    /// (`ImageSha384`, `Sections`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("EifVersion".into(), self.version.into());
        m.insert("Measurements".into(), self.pcrs.to_json());
        m.insert("IsSigned".into(), self.signature.is_some().into());
        m.insert("CheckCRC".into(), true.into());
        m.insert("ArchType".into(), self.arch.into());
        if let Some(sig) = &self.signature {
            m.insert("SignatureCheck".into(), true.into());
            m.insert("SigningCertificate".into(), sig.to_json());
        }
        if let Some(meta) = &self.metadata {
            for k in ["ImageName", "ImageVersion"] {
                if let Some(v) = meta.get(k) {
                    m.insert(k.into(), v.clone());
                }
            }
            let mut md = serde_json::Map::new();
            if let Some(b) = meta.get("BuildMetadata").and_then(|b| b.as_object()) {
                md.extend(b.clone());
            }
            for k in ["DockerInfo", "CustomMetadata"] {
                if let Some(v) = meta.get(k) {
                    md.insert(k.into(), v.clone());
                }
            }
            m.insert("Metadata".into(), md.into());
        }
        if let Some(d) = self.file_sha384 {
            m.insert("ImageSha384".into(), hex::encode(d).into());
        }
        m.insert("ImageSize".into(), self.file_len.into());
        m.insert(
            "Sections".into(),
            serde_json::to_value(&self.sections).unwrap_or_default(),
        );
        serde_json::Value::Object(m)
    }
}

/// Options for [`describe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DescribeOptions {
    /// Also compute the SHA-384 of the whole file (the measurement record's
    /// `eif_sha384`).
    pub file_digest: bool,
}

fn read_exact_at(
    f: &mut (impl Read + Seek),
    path: &Path,
    len: u64,
    what: &str,
    start: u64,
    buf: &mut [u8],
) -> Result<(), EifError> {
    let end = start + buf.len() as u64;
    if end > len {
        return Err(EifError::Truncated {
            what: what.into(),
            start,
            end,
            len,
        });
    }
    f.seek(SeekFrom::Start(start)).map_err(EifError::io(path))?;
    f.read_exact(buf).map_err(EifError::io(path))
}

/// Parse and validate the header: magic, version, section table layout.
pub(crate) fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<EifHeader, EifError> {
    if bytes[..4] != EIF_MAGIC {
        return Err(EifError::BadMagic {
            found: hex::encode(&bytes[..4]),
        });
    }
    let h = EifHeader::from_be_bytes(bytes).map_err(EifError::Header)?;
    if h.version == 0 || h.version > MAX_VERSION {
        return Err(EifError::Version(h.version));
    }
    if h.num_sections as usize > MAX_NUM_SECTIONS {
        return Err(EifError::Header(format!(
            "{} sections listed; the format allows at most {MAX_NUM_SECTIONS}",
            h.num_sections
        )));
    }
    Ok(h)
}

/// Read, check and measure an EIF. `progress` is called with bytes done.
pub fn describe(
    path: &Path,
    opts: DescribeOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Description, EifError> {
    let mut f = File::open(path).map_err(EifError::io(path))?;
    let len = f.metadata().map_err(EifError::io(path))?.len();
    describe_reader(&mut f, len, path, opts, progress)
}

/// [`describe`] over any reader of `len` bytes (`path` names it in errors).
pub fn describe_reader(
    f: &mut (impl Read + Seek),
    len: u64,
    path: &Path,
    opts: DescribeOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Description, EifError> {
    let mut f = f;
    let mut hbuf = [0u8; HEADER_LEN];
    read_exact_at(&mut f, path, len, "the EIF header", 0, &mut hbuf)?;
    let header = parse_header(&hbuf)?;

    let mut crc = crc32fast::Hasher::new();
    crc.update(&hbuf[..HEADER_LEN - 4]);
    let mut digests = Digests::start(opts.file_digest);
    digests.feed(
        hbuf.to_vec(),
        Route {
            file: true,
            ..Route::default()
        },
    );

    let n = header.num_sections as usize;
    let mut sections = Vec::with_capacity(n);
    let mut next = HEADER_LEN as u64;
    let mut ramdisks = 0usize;
    let mut signature: Option<Vec<u8>> = None;
    let mut metadata: Option<Vec<u8>> = None;
    let mut done = HEADER_LEN as u64;
    for i in 0..n {
        let off = header.section_offsets[i];
        let size = header.section_sizes[i];
        let sec_err = |reason: String| EifError::Section { index: i, reason };
        if off != next {
            return Err(sec_err(format!(
                "starts at offset {off}, but the previous section ends at {next} (sections must be contiguous)"
            )));
        }
        let mut sh = [0u8; SECTION_HEADER_LEN];
        read_exact_at(
            &mut f,
            path,
            len,
            &format!("section {i} header"),
            off,
            &mut sh,
        )?;
        let sh_parsed = EifSectionHeader::from_be_bytes(&sh)
            .map_err(|e| sec_err(format!("{e} (type {})", u16::from_be_bytes([sh[0], sh[1]]))))?;
        if sh_parsed.section_size != size {
            return Err(sec_err(format!(
                "its header says {} bytes, the EIF header says {size}",
                sh_parsed.section_size
            )));
        }
        let data_start = off + SECTION_HEADER_LEN as u64;
        let data_end = data_start
            .checked_add(size)
            .ok_or_else(|| sec_err("size overflows".into()))?;
        let kind = kind_name(sh_parsed.section_type);
        if data_end > len {
            return Err(EifError::Truncated {
                what: format!("section {i} ({kind})"),
                start: data_start,
                end: data_end,
                len,
            });
        }
        crc.update(&sh);
        digests.feed(
            sh.to_vec(),
            Route {
                file: true,
                ..Route::default()
            },
        );
        let route = match sh_parsed.section_type {
            EifSectionType::EifSectionKernel | EifSectionType::EifSectionCmdline => Route {
                image: true,
                boot: true,
                app: false,
                file: true,
            },
            EifSectionType::EifSectionRamdisk => {
                ramdisks += 1;
                Route {
                    image: true,
                    boot: ramdisks == 1,
                    app: ramdisks > 1,
                    file: true,
                }
            }
            EifSectionType::EifSectionSignature | EifSectionType::EifSectionMetadata => Route {
                file: true,
                ..Route::default()
            },
            EifSectionType::EifSectionInvalid => {
                return Err(sec_err("section type 0 (invalid)".into()))
            }
        };
        let keep = matches!(
            sh_parsed.section_type,
            EifSectionType::EifSectionSignature | EifSectionType::EifSectionMetadata
        );
        if keep && size > 16 << 20 {
            return Err(sec_err(format!(
                "{kind} section of {size} bytes is implausibly large"
            )));
        }
        let mut kept = Vec::new();
        let mut left = size;
        while left > 0 {
            let mut buf = digests.buffer();
            let want = left.min(CHUNK as u64) as usize;
            buf.resize(want, 0);
            f.read_exact(&mut buf).map_err(EifError::io(path))?;
            crc.update(&buf);
            if keep {
                kept.extend_from_slice(&buf);
            }
            left -= want as u64;
            done += want as u64;
            digests.feed(buf, route);
            progress(done);
        }
        match sh_parsed.section_type {
            EifSectionType::EifSectionSignature => signature = Some(kept),
            EifSectionType::EifSectionMetadata => metadata = Some(kept),
            _ => {}
        }
        sections.push(SectionInfo {
            index: i,
            kind,
            offset: off,
            size,
        });
        next = data_end;
    }
    if next != len {
        return Err(EifError::Header(format!(
            "{} bytes after the last section (the file was appended to, or the section table is wrong)",
            len.saturating_sub(next)
        )));
    }
    let kinds: Vec<&str> = sections.iter().map(|s| s.kind).collect();
    for need in ["kernel", "cmdline", "ramdisk"] {
        if !kinds.contains(&need) {
            return Err(EifError::Header(format!("no {need} section")));
        }
    }
    let (image, boot, app, file) = digests.finish()?;
    let computed = crc.finalize();
    if header.version >= 2 && computed != header.eif_crc32 {
        return Err(EifError::Crc {
            recorded: header.eif_crc32,
            computed,
        });
    }
    let mut pcrs = Pcrs {
        pcr0: extend(&image),
        pcr1: extend(&boot),
        pcr2: extend(&app),
        pcr8: None,
    };
    let signature = match signature {
        Some(bytes) => {
            let info = crate::sign::verify_section(&bytes, &pcrs.pcr0)?;
            pcrs.pcr8 = Some(info.pcr8);
            Some(info)
        }
        None => None,
    };
    let metadata = match metadata {
        Some(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b)
                .map_err(|e| EifError::Other(format!("metadata section is not JSON: {e}")))?;
            // Shape check against AWS's own definition.
            serde_json::from_value::<EifIdentityInfo>(v.clone()).map_err(|e| {
                EifError::Other(format!("metadata section is not EIF identity info: {e}"))
            })?;
            Some(v)
        }
        None => None,
    };
    Ok(Description {
        version: header.version,
        arch: if header.flags & EIF_HDR_ARCH_ARM64 != 0 {
            "aarch64"
        } else {
            "x86_64"
        },
        default_mem: header.default_mem,
        default_cpus: header.default_cpus,
        sections,
        pcrs,
        crc: computed,
        file_sha384: file,
        file_len: len,
        metadata,
        signature,
    })
}
