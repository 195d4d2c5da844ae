//! AWS Nitro Enclaves attestation documents: parsing and verification.
//!
//! [`verify`] checks, in this order, and stops at the first failure (each
//! failure names its [`Step`]):
//!
//! 1. **parse** — exactly one CBOR item (trailing bytes rejected), a
//!    COSE_Sign1 array, tagged (18) or not;
//! 2. **cose_header** — protected header exactly `{1: -35}` (ES384);
//! 3. **payload** — the fields and bounds of AWS's syntactic rules
//!    (indefinite-length maps accepted; optional fields null or absent);
//! 4. **chain** — pinned root → `cabundle[1..]` → leaf, every link signed with
//!    ECDSA P-384/SHA-384 by the previous certificate's P-384 key;
//!    `cabundle[0]` must be the pinned root but is never trusted as one;
//! 5. **validity** — every certificate valid at the caller's time;
//! 6. **constraints** — CA certificates have `cA` and `keyCertSign` and
//!    respect `pathLenConstraint`; the leaf is not a CA and may sign;
//! 7. **signature** — the COSE signature over the standard `Sig_structure`
//!    (high-S signatures accepted: most genuine AWS signatures are high-S);
//! 8. **policy** — expected PCRs match exactly (a missing PCR fails; zero is
//!    never a wildcard), debug documents (PCR0/1/2 all zero) are refused unless
//!    allowed, and `nonce`, `public_key`, `user_data` match when given.
//!
//! Success returns [`Verified`], which only this module can construct.
//!
//! Why one file: attestation verification is one ordered sequence of checks (COSE_Sign1, payload CBOR, certificate chain to the pinned root, PCRs); the order is the security argument and the file reads top to bottom in it.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED};
use ciborium::value::Value;
use serde::Serialize;
use x509_parser::prelude::*;

/// AWS Nitro Enclaves Root G1 (PEM), pinned.
/// DER SHA-256: `641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b`.
pub const AWS_NITRO_ROOT_G1_PEM: &str = include_str!("../roots/aws_nitro_root_g1.pem");
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";

/// The verification step a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Parse,
    CoseHeader,
    Payload,
    Chain,
    Validity,
    Constraints,
    Signature,
    Policy,
}

/// Why a document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("not a CBOR document: {0}")]
    Cbor(String),
    #[error("{0} trailing bytes after the COSE_Sign1 item")]
    TrailingBytes(usize),
    #[error("not a COSE_Sign1 structure: {0}")]
    NotCoseSign1(&'static str),
    #[error("protected header must be exactly {{1: -35}} (ES384): {0}")]
    WrongAlgorithm(String),
    #[error("payload: {0}")]
    Payload(String),
    #[error("certificate {index}: {reason}")]
    Chain { index: usize, reason: String },
    #[error("certificate {index} not valid before {not_before} (verification time {at})")]
    CertNotYetValid {
        index: usize,
        not_before: i64,
        at: i64,
    },
    #[error("certificate {index} expired at {not_after} (verification time {at})")]
    CertExpired {
        index: usize,
        not_after: i64,
        at: i64,
    },
    #[error("certificate {index}: {reason}")]
    Constraints { index: usize, reason: String },
    #[error("COSE signature does not verify with the leaf certificate's key")]
    Signature,
    #[error("PCR{index} is not in the document")]
    PcrMissing { index: u8 },
    #[error("PCR{index} mismatch: expected {expected}, document has {actual}")]
    PcrMismatch {
        index: u8,
        expected: String,
        actual: String,
    },
    #[error("debug-mode document (PCR0, PCR1 and PCR2 are all zero) refused; allow it explicitly to accept")]
    DebugMode,
    #[error("{field} does not match: expected {expected}, document has {actual}")]
    Binding {
        field: &'static str,
        expected: String,
        actual: String,
    },
    /// QEMU's nitro-enclave machine does not sign its documents (protected
    /// header `{1: -1}`, a zero signature, no certificate chain).
    #[error("unsigned QEMU nitro-enclave document (protected header {{1: -1}}, zero signature, no chain): it proves nothing about hardware; accepted only with --dangerous-unsigned-qemu")]
    UnsignedQemu,
    /// `--dangerous-unsigned-qemu` was given but the document is not one.
    #[error("not an unsigned QEMU document: {0}")]
    NotUnsignedQemu(&'static str),
}

impl VerifyError {
    pub fn step(&self) -> Step {
        use VerifyError::*;
        match self {
            Cbor(_) | TrailingBytes(_) | NotCoseSign1(_) => Step::Parse,
            WrongAlgorithm(_) => Step::CoseHeader,
            Payload(_) => Step::Payload,
            Chain { .. } => Step::Chain,
            CertNotYetValid { .. } | CertExpired { .. } => Step::Validity,
            Constraints { .. } => Step::Constraints,
            Signature | UnsignedQemu | NotUnsignedQemu(_) => Step::Signature,
            PcrMissing { .. } | PcrMismatch { .. } | DebugMode | Binding { .. } => Step::Policy,
        }
    }
}

/// The document's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationDoc {
    pub module_id: String,
    pub digest: String,
    pub timestamp_ms: u64,
    #[serde(serialize_with = "hex_map")]
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    #[serde(skip)]
    pub certificate: Vec<u8>,
    #[serde(skip)]
    pub cabundle: Vec<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub public_key: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub user_data: Option<Vec<u8>>,
    #[serde(serialize_with = "hex_opt")]
    pub nonce: Option<Vec<u8>>,
}

fn hex_map<S: serde::Serializer>(m: &BTreeMap<u8, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(&format!("PCR{k}"), &hex::encode(v))?;
    }
    map.end()
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

/// A certificate of the verified chain, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ChainCert {
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub sha256: String,
}

/// Proof that a document passed every check. Only [`verify`] makes one
/// (`non_exhaustive`: it cannot be built outside this crate).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Verified {
    pub doc: AttestationDoc,
    /// Root first, leaf last.
    pub chain: Vec<ChainCert>,
    pub debug_mode: bool,
}

/// What to check the document against.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Verification time, Unix seconds.
    pub at: i64,
    root_der: Vec<u8>,
    pub expected_pcrs: BTreeMap<u8, Vec<u8>>,
    pub allow_debug: bool,
    pub nonce: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    /// **Dangerous, tests only**: accept QEMU's unsigned documents, checking
    /// everything but the signature and the chain (see
    /// [`Policy::dangerous_unsigned_qemu`]).
    unsigned_qemu: bool,
}

/// A PEM certificate that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No well-formed PEM block (missing or bad header, bad base64, …).
    #[error("bad PEM: {0}")]
    Malformed(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
}

/// Decode a PEM certificate to DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PemError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(PemError::Malformed)?;
    Ok(p.contents)
}

impl Policy {
    /// Verify against the pinned AWS Nitro Enclaves Root G1 at time `at`.
    pub fn aws(at: i64) -> Policy {
        let root = pem_to_der(AWS_NITRO_ROOT_G1_PEM).unwrap_or_default();
        Policy::with_root(at, root)
    }

    /// **Dangerous**: trust another root (the development NSM's). Documents
    /// that verify this way prove nothing about AWS hardware.
    pub fn dangerous_with_root(at: i64, root_der: Vec<u8>) -> Policy {
        Policy::with_root(at, root_der)
    }

    /// **Dangerous, tests only**: accept the documents of QEMU's
    /// nitro-enclave machine, which are not signed (protected header
    /// `{1: -1}`, 64 zero bytes of signature, zero bytes for the
    /// certificate and the bundle). Structure, payload, PCRs, nonce,
    /// public_key and user_data are checked as always; the signature and the
    /// chain cannot be, so such a document proves only what the test
    /// harness that started QEMU already knows. Signed documents are refused
    /// under this policy, so the two kinds never mix.
    pub fn dangerous_unsigned_qemu(at: i64) -> Policy {
        Policy {
            unsigned_qemu: true,
            ..Policy::with_root(at, vec![])
        }
    }

    fn with_root(at: i64, root_der: Vec<u8>) -> Policy {
        Policy {
            at,
            root_der,
            expected_pcrs: BTreeMap::new(),
            allow_debug: false,
            nonce: None,
            public_key: None,
            user_data: None,
            unsigned_qemu: false,
        }
    }
}

/// The COSE_Sign1 fields the verifier uses, parsed by `coset` — except
/// QEMU's unsigned form, whose algorithm `-1` is not a registered COSE
/// algorithm and which coset therefore refuses to parse.
struct CoseSign1 {
    inner: Option<coset::CoseSign1>,
    payload: Vec<u8>,
    /// Protected header exactly `{1: -1}` and 64 zero bytes of signature.
    unsigned_qemu: bool,
}

/// QEMU's protected header, `{1: -1}`, as it encodes it.
const QEMU_PROTECTED: &[u8] = &[0xa1, 0x01, 0x20];

/// Exactly one COSE_Sign1 (RFC 9052), untagged or with tag 18, and nothing
/// after it. The outer structure (one CBOR item, the tag, four elements of
/// the types `[bstr, map, bstr, bstr]`) is checked here first, so its faults
/// are parse errors with their detail; `coset` then reads the headers
/// (refusing duplicate labels, trailing bytes inside the protected bstr and
/// mistyped well-known headers: header errors) and keeps the protected
/// header's original bytes for the Sig_structure.
fn parse_cose(bytes: &[u8]) -> Result<CoseSign1, VerifyError> {
    use coset::AsCborValue as _;
    let mut rd = bytes;
    let v: Value = ciborium::from_reader(&mut rd).map_err(|e| VerifyError::Cbor(e.to_string()))?;
    if !rd.is_empty() {
        return Err(VerifyError::TrailingBytes(rd.len()));
    }
    let v = match v {
        Value::Tag(18, inner) => *inner,
        Value::Tag(_, _) => return Err(VerifyError::NotCoseSign1("tag is not 18 (COSE_Sign1)")),
        other => other,
    };
    let shape = match &v {
        Value::Array(items) if items.len() == 4 => match items.as_slice() {
            [Value::Bytes(p), Value::Map(_), Value::Bytes(pl), Value::Bytes(sig)]
                if p.as_slice() == QEMU_PROTECTED
                    && sig.len() == 64
                    && sig.iter().all(|b| *b == 0) =>
            {
                return Ok(CoseSign1 {
                    inner: None,
                    payload: pl.clone(),
                    unsigned_qemu: true,
                });
            }
            items => matches!(
                items,
                [
                    Value::Bytes(_),
                    Value::Map(_),
                    Value::Bytes(_),
                    Value::Bytes(_)
                ]
            ),
        },
        Value::Array(_) => return Err(VerifyError::NotCoseSign1("array does not have 4 elements")),
        _ => return Err(VerifyError::NotCoseSign1("not an array")),
    };
    if !shape {
        return Err(VerifyError::NotCoseSign1(
            "element types are not [bstr, map, bstr, bstr]",
        ));
    }
    let inner = coset::CoseSign1::from_cbor_value(v)
        .map_err(|e| VerifyError::WrongAlgorithm(format!("header: {e}")))?;
    let payload = inner
        .payload
        .clone()
        .ok_or(VerifyError::NotCoseSign1("payload is nil (detached)"))?;
    Ok(CoseSign1 {
        inner: Some(inner),
        payload,
        unsigned_qemu: false,
    })
}

/// The protected header must be exactly `{1: -35}` (alg ES384), as AWS's
/// documents have it: no key id, no critical headers, nothing else.
fn check_header(cose: &CoseSign1) -> Result<(), VerifyError> {
    let want = coset::HeaderBuilder::new()
        .algorithm(coset::iana::Algorithm::ES384)
        .build();
    match &cose.inner {
        _ if cose.unsigned_qemu => Err(VerifyError::UnsignedQemu),
        Some(c) if c.protected.header == want => Ok(()),
        Some(c) => Err(VerifyError::WrongAlgorithm(format!(
            "{:?}",
            c.protected.header
        ))),
        None => Err(VerifyError::WrongAlgorithm("no header".into())),
    }
}

fn bstr(v: &Value, field: &str, min: usize, max: usize) -> Result<Vec<u8>, VerifyError> {
    match v {
        Value::Bytes(b) if b.len() >= min && b.len() <= max => Ok(b.clone()),
        Value::Bytes(b) => Err(VerifyError::Payload(format!(
            "{field}: {} bytes, allowed {min}..={max}",
            b.len()
        ))),
        _ => Err(VerifyError::Payload(format!("{field}: not a byte string"))),
    }
}

fn opt_bstr(
    v: Option<&Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => bstr(x, field, min, max).map(Some),
    }
}

/// Parse and check the payload fields (AWS's syntactic rules).
pub fn parse_payload(payload: &[u8]) -> Result<AttestationDoc, VerifyError> {
    let mut rd = payload;
    let v: Value = ciborium::from_reader(&mut rd)
        .map_err(|e| VerifyError::Payload(format!("not CBOR: {e}")))?;
    if !rd.is_empty() {
        return Err(VerifyError::Payload("trailing bytes".into()));
    }
    let Value::Map(entries) = v else {
        return Err(VerifyError::Payload("not a map".into()));
    };
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    for (k, val) in entries {
        let Value::Text(k) = k else {
            return Err(VerifyError::Payload("a key is not text".into()));
        };
        if fields.insert(k.clone(), val).is_some() {
            return Err(VerifyError::Payload(format!("duplicate field {k}")));
        }
    }
    let get = |k: &str| {
        fields
            .get(k)
            .ok_or_else(|| VerifyError::Payload(format!("missing {k}")))
    };
    let module_id = match get("module_id")? {
        Value::Text(t) if !t.is_empty() => t.clone(),
        _ => {
            return Err(VerifyError::Payload(
                "module_id: not a non-empty text".into(),
            ))
        }
    };
    let digest = match get("digest")? {
        Value::Text(t) if t == "SHA384" => t.clone(),
        _ => return Err(VerifyError::Payload("digest: not \"SHA384\"".into())),
    };
    let timestamp_ms = match get("timestamp")? {
        Value::Integer(i) => u64::try_from(i128::from(*i)).ok().filter(|t| *t > 0),
        _ => None,
    }
    .ok_or_else(|| VerifyError::Payload("timestamp: not a positive integer".into()))?;
    let Value::Map(pcr_entries) = get("pcrs")? else {
        return Err(VerifyError::Payload("pcrs: not a map".into()));
    };
    if pcr_entries.is_empty() || pcr_entries.len() > 32 {
        return Err(VerifyError::Payload(format!(
            "pcrs: {} entries, allowed 1..=32",
            pcr_entries.len()
        )));
    }
    let mut pcrs = BTreeMap::new();
    for (k, v) in pcr_entries {
        let idx = match k {
            Value::Integer(i) => u8::try_from(i128::from(*i)).ok().filter(|i| *i < 32),
            _ => None,
        }
        .ok_or_else(|| VerifyError::Payload("pcrs: index not in 0..32".into()))?;
        let val = bstr(v, &format!("PCR{idx}"), 32, 64)?;
        if ![32, 48, 64].contains(&val.len()) {
            return Err(VerifyError::Payload(format!(
                "PCR{idx}: {} bytes, allowed 32, 48 or 64",
                val.len()
            )));
        }
        if pcrs.insert(idx, val).is_some() {
            return Err(VerifyError::Payload(format!("pcrs: duplicate index {idx}")));
        }
    }
    let certificate = bstr(get("certificate")?, "certificate", 1, 1024)?;
    let Value::Array(cab) = get("cabundle")? else {
        return Err(VerifyError::Payload("cabundle: not an array".into()));
    };
    if cab.is_empty() {
        return Err(VerifyError::Payload("cabundle: empty".into()));
    }
    let cabundle = cab
        .iter()
        .enumerate()
        .map(|(i, c)| bstr(c, &format!("cabundle[{i}]"), 1, 1024))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AttestationDoc {
        module_id,
        digest,
        timestamp_ms,
        pcrs,
        certificate,
        cabundle,
        public_key: opt_bstr(fields.get("public_key"), "public_key", 1, 1024)?,
        user_data: opt_bstr(fields.get("user_data"), "user_data", 0, 512)?,
        nonce: opt_bstr(fields.get("nonce"), "nonce", 0, 512)?,
    })
}

fn ec_p384_key<'a>(c: &'a X509Certificate<'_>, index: usize) -> Result<&'a [u8], VerifyError> {
    let spki = c.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY
        || curve.as_deref() != Some(OID_SECP384R1)
    {
        return Err(VerifyError::Chain {
            index,
            reason: "public key is not ECDSA P-384".into(),
        });
    }
    Ok(spki.subject_public_key.data.as_ref())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

/// Chains (pinned root + intermediates) that already passed the chain,
/// validity and constraint checks, so later documents from the same enclave
/// only check their leaf link, leaf validity and signature. Entries are used
/// only while the verification time lies inside every cached certificate's
/// validity window.
#[derive(Debug, Default)]
pub struct ChainCache {
    inner: std::sync::Mutex<std::collections::HashMap<[u8; 32], CachedChain>>,
}

#[derive(Debug, Clone)]
struct CachedChain {
    not_before: i64,
    not_after: i64,
    certs: Vec<ChainCert>,
}

const CACHE_LIMIT: usize = 1024;

fn chain_key(root: &[u8], intermediates: &[Vec<u8>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for d in std::iter::once(root).chain(intermediates.iter().map(Vec::as_slice)) {
        ctx.update(&(d.len() as u32).to_be_bytes());
        ctx.update(d);
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(ctx.finish().as_ref());
    k
}

/// Verify `bytes` against `policy`. See the module docs for the steps.
pub fn verify(bytes: &[u8], policy: &Policy) -> Result<Verified, VerifyError> {
    verify_inner(bytes, policy, None)
}

/// As [`verify`], reusing (and filling) `cache` for the root and intermediates.
pub fn verify_cached(
    bytes: &[u8],
    policy: &Policy,
    cache: &ChainCache,
) -> Result<Verified, VerifyError> {
    verify_inner(bytes, policy, Some(cache))
}

fn verify_leaf_only(
    cose: &CoseSign1,
    doc: AttestationDoc,
    policy: &Policy,
    cached: CachedChain,
) -> Result<Verified, VerifyError> {
    let leaf_index = doc.cabundle.len();
    let parent_der = doc.cabundle.last().ok_or(VerifyError::Chain {
        index: 0,
        reason: "empty chain".into(),
    })?;
    let (_, parent) = X509Certificate::from_der(parent_der).map_err(|e| VerifyError::Chain {
        index: leaf_index - 1,
        reason: e.to_string(),
    })?;
    let (rest, leaf) =
        X509Certificate::from_der(&doc.certificate).map_err(|e| VerifyError::Chain {
            index: leaf_index,
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(VerifyError::Chain {
            index: leaf_index,
            reason: "trailing bytes after the certificate".into(),
        });
    }
    check_link(&parent, &leaf, leaf_index)?;
    check_validity(&leaf, leaf_index, policy.at)?;
    check_constraints(&leaf, leaf_index, true, 0)?;
    verify_signature(cose, &leaf, leaf_index)?;
    check_policy(&doc, policy)?;
    let mut chain = cached.certs;
    chain.push(ChainCert {
        subject: leaf.subject().to_string(),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        sha256: sha256_hex(&doc.certificate),
    });
    let debug_mode = is_debug(&doc);
    Ok(Verified {
        doc,
        chain,
        debug_mode,
    })
}

fn check_link(
    parent: &X509Certificate<'_>,
    child: &X509Certificate<'_>,
    i: usize,
) -> Result<(), VerifyError> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(VerifyError::Chain {
            index: i,
            reason: "issuer is not the previous certificate's subject".into(),
        });
    }
    if child.signature_algorithm.algorithm.to_id_string() != OID_ECDSA_SHA384 {
        return Err(VerifyError::Chain {
            index: i,
            reason: "not signed with ecdsa-with-SHA384".into(),
        });
    }
    let key = ec_p384_key(parent, i - 1)?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, key)
        .verify(
            child.tbs_certificate.as_ref(),
            child.signature_value.data.as_ref(),
        )
        .map_err(|_| VerifyError::Chain {
            index: i,
            reason: "signature by the previous certificate does not verify".into(),
        })
}

fn check_validity(c: &X509Certificate<'_>, i: usize, at: i64) -> Result<(), VerifyError> {
    let (nb, na) = (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    );
    if at < nb {
        return Err(VerifyError::CertNotYetValid {
            index: i,
            not_before: nb,
            at,
        });
    }
    if at > na {
        return Err(VerifyError::CertExpired {
            index: i,
            not_after: na,
            at,
        });
    }
    Ok(())
}

/// `below`: CA certificates between this one and the leaf.
fn check_constraints(
    c: &X509Certificate<'_>,
    i: usize,
    is_leaf: bool,
    below: u32,
) -> Result<(), VerifyError> {
    let bc = c
        .basic_constraints()
        .map_err(|e| VerifyError::Constraints {
            index: i,
            reason: format!("bad basicConstraints: {e}"),
        })?
        .map(|b| b.value.clone());
    let ku = c
        .key_usage()
        .map_err(|e| VerifyError::Constraints {
            index: i,
            reason: format!("bad keyUsage: {e}"),
        })?
        .map(|k| k.value);
    if !is_leaf {
        let Some(bc) = bc.filter(|b| b.ca) else {
            return Err(VerifyError::Constraints {
                index: i,
                reason: "CA certificate without cA=true".into(),
            });
        };
        if !ku.is_some_and(|k| k.key_cert_sign()) {
            return Err(VerifyError::Constraints {
                index: i,
                reason: "CA certificate without keyCertSign".into(),
            });
        }
        if let Some(max) = bc.path_len_constraint {
            if below > max {
                return Err(VerifyError::Constraints {
                    index: i,
                    reason: format!("pathLenConstraint {max} exceeded by {below} intermediate(s)"),
                });
            }
        }
    } else {
        if bc.is_some_and(|b| b.ca) {
            return Err(VerifyError::Constraints {
                index: i,
                reason: "leaf certificate is a CA".into(),
            });
        }
        if ku.is_some_and(|k| !k.digital_signature()) {
            return Err(VerifyError::Constraints {
                index: i,
                reason: "leaf certificate may not sign".into(),
            });
        }
    }
    Ok(())
}

fn verify_signature(
    cose: &CoseSign1,
    leaf: &X509Certificate<'_>,
    leaf_index: usize,
) -> Result<(), VerifyError> {
    // Sig_structure = ["Signature1", protected (as received), h'', payload].
    let leaf_key = ec_p384_key(leaf, leaf_index)?;
    let inner = cose.inner.as_ref().ok_or(VerifyError::Signature)?;
    inner.verify_signature(b"", |sig, tbs| {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, leaf_key)
            .verify(tbs, sig)
            .map_err(|_| VerifyError::Signature)
    })
}

fn is_debug(doc: &AttestationDoc) -> bool {
    let zero = |i: u8| doc.pcrs.get(&i).is_some_and(|v| v.iter().all(|b| *b == 0));
    zero(0) && zero(1) && zero(2)
}

fn check_policy(doc: &AttestationDoc, policy: &Policy) -> Result<(), VerifyError> {
    if is_debug(doc) && !policy.allow_debug {
        return Err(VerifyError::DebugMode);
    }
    for (i, want) in &policy.expected_pcrs {
        match doc.pcrs.get(i) {
            None => return Err(VerifyError::PcrMissing { index: *i }),
            Some(got) if got != want => {
                return Err(VerifyError::PcrMismatch {
                    index: *i,
                    expected: hex::encode(want),
                    actual: hex::encode(got),
                })
            }
            Some(_) => {}
        }
    }
    for (field, want, got) in [
        ("nonce", &policy.nonce, &doc.nonce),
        ("public_key", &policy.public_key, &doc.public_key),
        ("user_data", &policy.user_data, &doc.user_data),
    ] {
        if let Some(w) = want {
            if got.as_ref() != Some(w) {
                return Err(VerifyError::Binding {
                    field,
                    expected: hex::encode(w),
                    actual: got
                        .as_ref()
                        .map(hex::encode)
                        .unwrap_or_else(|| "none".into()),
                });
            }
        }
    }
    Ok(())
}

/// Verify one of QEMU's unsigned documents: everything but the signature
/// and the chain (which it does not have).
fn verify_unsigned_qemu(cose: &CoseSign1, policy: &Policy) -> Result<Verified, VerifyError> {
    if !cose.unsigned_qemu {
        return Err(VerifyError::NotUnsignedQemu(
            "protected header is not {1: -1} with a zero signature",
        ));
    }
    let doc = parse_payload(&cose.payload)?;
    let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
    if !zero(&doc.certificate) || !doc.cabundle.iter().all(|c| zero(c)) {
        return Err(VerifyError::NotUnsignedQemu(
            "it carries a certificate chain (a signed document must be verified as one)",
        ));
    }
    check_policy(&doc, policy)?;
    let debug_mode = is_debug(&doc);
    Ok(Verified {
        doc,
        chain: vec![],
        debug_mode,
    })
}

fn verify_inner(
    bytes: &[u8],
    policy: &Policy,
    cache: Option<&ChainCache>,
) -> Result<Verified, VerifyError> {
    let cose = parse_cose(bytes)?;
    if policy.unsigned_qemu {
        return verify_unsigned_qemu(&cose, policy);
    }
    check_header(&cose)?;
    let doc = parse_payload(&cose.payload)?;

    // Chain: pinned root, then cabundle[1..], then the leaf.
    if doc.cabundle[0] != policy.root_der {
        return Err(VerifyError::Chain {
            index: 0,
            reason: "cabundle[0] is not the pinned root".into(),
        });
    }
    let key = cache.map(|_| chain_key(&policy.root_der, &doc.cabundle[1..]));
    if let (Some(c), Some(k)) = (cache, key) {
        let hit = c.inner.lock().ok().and_then(|m| m.get(&k).cloned());
        if let Some(hit) = hit.filter(|h| policy.at >= h.not_before && policy.at <= h.not_after) {
            return verify_leaf_only(&cose, doc, policy, hit);
        }
    }
    let mut ders: Vec<&[u8]> = vec![&policy.root_der];
    ders.extend(doc.cabundle[1..].iter().map(Vec::as_slice));
    ders.push(&doc.certificate);
    let mut certs = Vec::with_capacity(ders.len());
    for (i, d) in ders.iter().enumerate() {
        let (rest, c) = X509Certificate::from_der(d).map_err(|e| VerifyError::Chain {
            index: i,
            reason: format!("not an X.509 certificate: {e}"),
        })?;
        if !rest.is_empty() {
            return Err(VerifyError::Chain {
                index: i,
                reason: "trailing bytes after the certificate".into(),
            });
        }
        certs.push(c);
    }
    for i in 1..certs.len() {
        check_link(&certs[i - 1], &certs[i], i)?;
    }
    for (i, c) in certs.iter().enumerate() {
        check_validity(c, i, policy.at)?;
    }
    let leaf_index = certs.len() - 1;
    for (i, c) in certs.iter().enumerate() {
        let below = leaf_index.saturating_sub(i + 1) as u32;
        check_constraints(c, i, i == leaf_index, below)?;
    }
    verify_signature(&cose, &certs[leaf_index], leaf_index)?;
    check_policy(&doc, policy)?;
    let chain: Vec<ChainCert> = certs
        .iter()
        .zip(&ders)
        .map(|(c, d)| ChainCert {
            subject: c.subject().to_string(),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            sha256: sha256_hex(d),
        })
        .collect();
    if let (Some(c), Some(k)) = (cache, key) {
        let cas = &chain[..leaf_index];
        let entry = CachedChain {
            not_before: cas.iter().map(|c| c.not_before).max().unwrap_or(i64::MIN),
            not_after: cas.iter().map(|c| c.not_after).min().unwrap_or(i64::MAX),
            certs: cas.to_vec(),
        };
        if let Ok(mut m) = c.inner.lock() {
            if m.len() >= CACHE_LIMIT {
                m.clear();
            }
            m.insert(k, entry);
        }
    }
    let debug_mode = is_debug(&doc);
    Ok(Verified {
        doc,
        chain,
        debug_mode,
    })
}

/// The payload fields without any verification (for reports about documents
/// that were rejected). Never use this to make a trust decision.
pub fn parse_document_unverified(bytes: &[u8]) -> Result<AttestationDoc, VerifyError> {
    let cose = parse_cose(bytes)?;
    parse_payload(&cose.payload)
}

/// Why expected measurements cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpectedPcrsError {
    #[error("expected PCRs must be a JSON object")]
    NotAnObject,
    /// A key that is not `PCR0` … `PCR31` (or `HashAlgorithm`).
    #[error("unknown key {key:?}: use PCR0 … PCR31")]
    UnknownKey { key: String },
    #[error("{key}: not a hex string")]
    NotAString { key: String },
    #[error("{key}: not hex")]
    NotHex {
        key: String,
        source: hex::FromHexError,
    },
    /// A digest of a length no PCR has.
    #[error("{key}: {len} bytes; PCRs are 32, 48 or 64 bytes")]
    Length { key: String, len: usize },
    #[error("no PCRs in the expected measurements")]
    Empty,
}

/// Parse `--expected`: `{"PCR0": "hex", …}`, `nitro-cli describe-eif` output
/// (`{"Measurements": {…}}`), or a measurement record with `pcrs`/`measurements`.
pub fn parse_expected(
    json: &serde_json::Value,
) -> Result<BTreeMap<u8, Vec<u8>>, ExpectedPcrsError> {
    let obj = json
        .get("Measurements")
        .or_else(|| json.get("measurements"))
        .or_else(|| json.get("pcrs"))
        .unwrap_or(json)
        .as_object()
        .ok_or(ExpectedPcrsError::NotAnObject)?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        if k == "HashAlgorithm" || k == "hash_algorithm" {
            continue;
        }
        let idx: u8 = k
            .strip_prefix("PCR")
            .or_else(|| k.strip_prefix("pcr"))
            .and_then(|n| n.parse().ok())
            .filter(|n| *n < 32)
            .ok_or_else(|| ExpectedPcrsError::UnknownKey { key: k.clone() })?;
        let hexs = v
            .as_str()
            .ok_or_else(|| ExpectedPcrsError::NotAString { key: k.clone() })?;
        let bytes = hex::decode(hexs).map_err(|source| ExpectedPcrsError::NotHex {
            key: k.clone(),
            source,
        })?;
        if ![32, 48, 64].contains(&bytes.len()) {
            return Err(ExpectedPcrsError::Length {
                key: k.clone(),
                len: bytes.len(),
            });
        }
        out.insert(idx, bytes);
    }
    if out.is_empty() {
        return Err(ExpectedPcrsError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_root_fingerprint() {
        let der = pem_to_der(AWS_NITRO_ROOT_G1_PEM).unwrap();
        assert_eq!(sha256_hex(&der), AWS_NITRO_ROOT_G1_SHA256);
        let e = pem_to_der("not PEM").unwrap_err();
        assert!(matches!(e, PemError::Malformed(_)), "{e:?}");
        assert!(e.to_string().starts_with("bad PEM: "), "{e}");
    }

    #[test]
    fn expected_formats() {
        let p = "a".repeat(96);
        let plain = serde_json::json!({"PCR0": p, "PCR8": p});
        assert_eq!(parse_expected(&plain).unwrap().len(), 2);
        let nitro =
            serde_json::json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR1": p}});
        assert_eq!(
            parse_expected(&nitro).unwrap().keys().collect::<Vec<_>>(),
            vec![&1]
        );
        let err = |j: serde_json::Value| parse_expected(&j).unwrap_err();
        let e = err(serde_json::json!({"PCR99": p}));
        assert_eq!(
            e,
            ExpectedPcrsError::UnknownKey {
                key: "PCR99".into()
            }
        );
        assert_eq!(e.to_string(), "unknown key \"PCR99\": use PCR0 … PCR31");
        let e = err(serde_json::json!({"PCR0": "abc"}));
        assert!(
            matches!(&e, ExpectedPcrsError::NotHex { key, .. } if key == "PCR0"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "PCR0: not hex");
        let e = err(serde_json::json!({"PCR0": "ab"}));
        assert_eq!(
            e,
            ExpectedPcrsError::Length {
                key: "PCR0".into(),
                len: 1
            }
        );
        assert_eq!(e.to_string(), "PCR0: 1 bytes; PCRs are 32, 48 or 64 bytes");
        assert!(matches!(
            err(serde_json::json!({"PCR0": 1})),
            ExpectedPcrsError::NotAString { .. }
        ));
        assert_eq!(err(serde_json::json!([])), ExpectedPcrsError::NotAnObject);
        assert_eq!(err(serde_json::json!({})), ExpectedPcrsError::Empty);
    }
}
