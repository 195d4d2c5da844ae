//! The EIF signature section (PCR8): a COSE_Sign1 (ES384) over the CBOR
//! `PcrInfo {register_index: 0, register_value: PCR0}`, stored with the
//! signing certificate, as nitro-cli writes it.
//!
//! Signing uses RFC 6979 deterministic ECDSA (the `p384` crate), so a signed
//! image is as byte-reproducible as an unsigned one. Verification checks the
//! signature with the certificate's key and that the signed PCR0 is the
//! image's.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use aws_nitro_enclaves_image_format::defs::{PcrInfo, PcrSignature};
use ciborium::Value;
use p384::ecdsa::signature::Signer as _;
use p384::pkcs8::DecodePrivateKey as _;

use crate::pcr::{extend, sha384};

/// Protected header `{1: -35}` (alg ES384), CBOR-encoded.
const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];

/// A certificate and key to sign images with.
pub struct Signer {
    cert_pem: Vec<u8>,
    cert_der: Vec<u8>,
    key: p384::ecdsa::SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

/// Why a signing certificate or key cannot be used, or a signature section
/// does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("signing certificate is not PEM: {0}")]
    CertNotPem(#[source] x509_parser::nom::Err<x509_parser::error::PEMError>),
    #[error("PEM block is {label:?}, not CERTIFICATE")]
    NotCertificate { label: String },
    /// The certificate's DER does not parse.
    #[error("signing certificate: {0}")]
    CertDer(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("signing certificate: trailing bytes after the DER")]
    CertTrailingBytes { len: usize },
    #[error("signing certificate key is not ECDSA P-384 (nitro-cli signs with P-384)")]
    NotP384,
    #[error("private key: not a PEM P-384 key (PKCS#8 or SEC1 EC PRIVATE KEY)")]
    BadKey,
    #[error("the private key does not belong to the signing certificate")]
    KeyMismatch,
    /// CBOR encoding failed (writing to memory: not expected to happen).
    #[error(transparent)]
    Encode(#[from] ciborium::ser::Error<std::io::Error>),
    #[error("not CBOR PCR signatures: {0}")]
    NotPcrSignatures(#[source] ciborium::de::Error<std::io::Error>),
    #[error("{len} trailing bytes")]
    TrailingBytes { len: usize },
    #[error("no signatures")]
    NoSignatures,
    #[error("COSE_Sign1 is not CBOR: {0}")]
    CoseNotCbor(#[source] ciborium::de::Error<std::io::Error>),
    #[error("trailing bytes after COSE_Sign1")]
    CoseTrailingBytes { len: usize },
    #[error("CBOR tag {tag}, expected 18 (COSE_Sign1)")]
    CoseTag { tag: u64 },
    #[error("COSE_Sign1 is not a 4-element array")]
    CoseNotArray,
    #[error("COSE_Sign1 fields have the wrong types")]
    CoseFieldTypes,
    #[error("protected header: {0}")]
    ProtectedHeader(#[source] ciborium::de::Error<std::io::Error>),
    /// The protected header's algorithm (`None`: absent; `Some(None)`: not
    /// an integer) is not ES384.
    #[error("algorithm is {alg:?}, expected ES384 (-35)")]
    Algorithm { alg: Option<Option<i128>> },
    #[error("ECDSA signature does not verify with the certificate's key")]
    BadSignature,
    #[error("signed payload is not PcrInfo: {0}")]
    NotPcrInfo(#[source] ciborium::de::Error<std::io::Error>),
    /// The signature is over another register or another image.
    #[error(
        "signed PCR{index} = {} does not match the image's PCR0 = {}",
        hex::encode(.signed),
        hex::encode(.image)
    )]
    WrongPcr0 {
        index: i32,
        signed: Vec<u8>,
        image: [u8; 48],
    },
}

/// What a verified signature section says.
#[derive(Debug, Clone)]
pub struct SignatureInfo {
    pub pcr8: [u8; 48],
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
}

impl SignatureInfo {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "SubjectName": self.subject,
            "IssuerName": self.issuer,
            "Algorithm": "ecdsa-with-SHA384",
            "NotBefore": self.not_before,
            "NotAfter": self.not_after,
        })
    }
}

fn first_pem_cert(pem: &[u8]) -> Result<Vec<u8>, SignError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).map_err(SignError::CertNotPem)?;
    if p.label != "CERTIFICATE" {
        return Err(SignError::NotCertificate { label: p.label });
    }
    Ok(p.contents)
}

/// The P-384 public point of a DER certificate, with its names and validity.
fn cert_info(der: &[u8]) -> Result<(Vec<u8>, SignatureInfo), SignError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(SignError::CertDer)?;
    if !rest.is_empty() {
        return Err(SignError::CertTrailingBytes { len: rest.len() });
    }
    let spki = cert.public_key();
    let p384_oid = x509_parser::oid_registry::OID_NIST_EC_P384;
    let curve_ok = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|o| o == p384_oid);
    let point = spki.subject_public_key.data.to_vec();
    if !curve_ok || point.len() != 97 {
        return Err(SignError::NotP384);
    }
    let v = cert.validity();
    let fmt = |t: &x509_parser::time::ASN1Time| {
        t.to_rfc2822().unwrap_or_else(|_| t.timestamp().to_string())
    };
    Ok((
        point,
        SignatureInfo {
            pcr8: extend(&sha384(der)),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: fmt(&v.not_before),
            not_after: fmt(&v.not_after),
        },
    ))
}

fn cbor(v: &impl serde::Serialize) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out)?;
    Ok(out)
}

fn sig_structure(protected: &[u8], payload: &[u8]) -> Result<Vec<u8>, SignError> {
    cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.to_vec()),
    ]))
}

impl Signer {
    /// Load a PEM certificate and its PEM private key (PKCS#8 or SEC1 "EC
    /// PRIVATE KEY", as `openssl ecparam -genkey` writes). The key must be
    /// the certificate's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &str) -> Result<Self, SignError> {
        let cert_der = first_pem_cert(cert_pem)?;
        let (point, _) = cert_info(&cert_der)?;
        let key = p384::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
            .or_else(|_| p384::SecretKey::from_sec1_pem(key_pem).map(p384::ecdsa::SigningKey::from))
            .map_err(|_| SignError::BadKey)?;
        let ours = key.verifying_key().to_encoded_point(false);
        if ours.as_bytes() != point.as_slice() {
            return Err(SignError::KeyMismatch);
        }
        Ok(Self {
            cert_pem: cert_pem.to_vec(),
            cert_der,
            key,
        })
    }

    pub fn pcr8(&self) -> [u8; 48] {
        extend(&sha384(&self.cert_der))
    }

    /// The signature section for an image whose PCR0 is `pcr0`.
    pub fn section(&self, pcr0: &[u8; 48]) -> Result<Vec<u8>, SignError> {
        let payload = cbor(&PcrInfo::new(0, pcr0.to_vec()))?;
        let tbs = sig_structure(&PROTECTED_ES384, &payload)?;
        let sig: p384::ecdsa::Signature = self.key.sign(&tbs);
        let cose = cbor(&Value::Array(vec![
            Value::Bytes(PROTECTED_ES384.to_vec()),
            Value::Map(vec![]),
            Value::Bytes(payload),
            Value::Bytes(sig.to_bytes().to_vec()),
        ]))?;
        cbor(&vec![PcrSignature {
            signing_certificate: self.cert_pem.clone(),
            signature: cose,
        }])
    }
}

/// Verify a signature section against the image's PCR0.
pub fn verify_section(bytes: &[u8], pcr0: &[u8; 48]) -> Result<SignatureInfo, SignError> {
    verify(bytes, pcr0)
}

fn verify(bytes: &[u8], pcr0: &[u8; 48]) -> Result<SignatureInfo, SignError> {
    let mut rd = bytes;
    let sigs: Vec<PcrSignature> =
        ciborium::from_reader(&mut rd).map_err(SignError::NotPcrSignatures)?;
    if !rd.is_empty() {
        return Err(SignError::TrailingBytes { len: rd.len() });
    }
    let first = sigs.first().ok_or(SignError::NoSignatures)?;
    let der = first_pem_cert(&first.signing_certificate)?;
    let (point, info) = cert_info(&der)?;

    let mut rd = first.signature.as_slice();
    let v: Value = ciborium::from_reader(&mut rd).map_err(SignError::CoseNotCbor)?;
    if !rd.is_empty() {
        return Err(SignError::CoseTrailingBytes { len: rd.len() });
    }
    let v = match v {
        Value::Tag(18, inner) => *inner,
        Value::Tag(tag, _) => return Err(SignError::CoseTag { tag }),
        other => other,
    };
    let parts = match v {
        Value::Array(a) if a.len() == 4 => a,
        _ => return Err(SignError::CoseNotArray),
    };
    let (protected, payload, signature) = match (&parts[0], &parts[2], &parts[3]) {
        (Value::Bytes(p), Value::Bytes(pl), Value::Bytes(s)) => (p, pl, s),
        _ => return Err(SignError::CoseFieldTypes),
    };
    let hdr: Value =
        ciborium::from_reader(protected.as_slice()).map_err(SignError::ProtectedHeader)?;
    let alg = match &hdr {
        Value::Map(m) => m.iter().find_map(|(k, v)| {
            (k.as_integer() == Some(1.into())).then(|| v.as_integer().map(i128::from))
        }),
        _ => None,
    };
    if alg != Some(Some(-35)) {
        return Err(SignError::Algorithm { alg });
    }
    let tbs = sig_structure(protected, payload)?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &point)
        .verify(&tbs, signature)
        .map_err(|_| SignError::BadSignature)?;
    let info_payload: PcrInfo =
        ciborium::from_reader(payload.as_slice()).map_err(SignError::NotPcrInfo)?;
    if info_payload.register_index != 0 || info_payload.register_value != pcr0.as_slice() {
        return Err(SignError::WrongPcr0 {
            index: info_payload.register_index,
            signed: info_payload.register_value,
            image: *pcr0,
        });
    }
    Ok(info)
}
