//! The Nitro Security Module seam.
//!
//! [`Nsm`] is what the enclave needs from the NSM: attestation documents with
//! a nonce, public key and user data. [`RealNsm`] talks to `/dev/nsm` through
//! `aws-nitro-enclaves-nsm-api`. [`DangerousDevNsm`] (feature
//! `dangerous-dev`, never in release images) signs documents in exactly
//! AWS's format — COSE_Sign1, ES384, the same CBOR payload fields — with a
//! self-made P-384 PKI (root → intermediate → three-hour leaf), so the real
//! verification path can be tested without Nitro hardware.

/// Why the NSM could not answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("NSM: {0}")]
pub struct NsmError(pub String);

/// Fields the caller binds into a document.
#[derive(Debug, Clone, Default)]
pub struct AttestRequest {
    pub nonce: Option<Vec<u8>>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
}

pub trait Nsm: Send + Sync + 'static {
    /// A signed attestation document (raw COSE_Sign1 bytes).
    fn attest(&self, req: &AttestRequest) -> Result<Vec<u8>, NsmError>;
    /// Random bytes from the NSM's hardware source.
    fn random(&self, len: usize) -> Result<Vec<u8>, NsmError>;
    /// The current value of a PCR.
    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError>;
    /// For the development NSM only: the PEM root its documents chain to.
    fn dangerous_dev_root_pem(&self) -> Option<String> {
        None
    }
}

/// Check the NSM's field limits before asking it.
pub fn check_request(req: &AttestRequest) -> Result<(), NsmError> {
    for (name, v, max) in [
        ("nonce", &req.nonce, 512),
        ("user_data", &req.user_data, 512),
        ("public_key", &req.public_key, 1024),
    ] {
        if v.as_ref().is_some_and(|b| b.len() > max) {
            return Err(NsmError(format!("{name} longer than {max} bytes")));
        }
    }
    Ok(())
}

/// The real NSM (`/dev/nsm`).
#[cfg(target_os = "linux")]
pub struct RealNsm {
    fd: i32,
}

#[cfg(target_os = "linux")]
impl RealNsm {
    /// Open `/dev/nsm`; `None` outside an enclave.
    pub fn open() -> Option<RealNsm> {
        if !std::path::Path::new("/dev/nsm").exists() {
            return None;
        }
        let fd = aws_nitro_enclaves_nsm_api::driver::nsm_init();
        (fd >= 0).then_some(RealNsm { fd })
    }
}

#[cfg(target_os = "linux")]
impl Nsm for RealNsm {
    fn attest(&self, req: &AttestRequest) -> Result<Vec<u8>, NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        check_request(req)?;
        let b = |v: &Option<Vec<u8>>| v.clone().map(serde_bytes::ByteBuf::from);
        let r = aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.fd,
            Request::Attestation {
                user_data: b(&req.user_data),
                nonce: b(&req.nonce),
                public_key: b(&req.public_key),
            },
        );
        match r {
            Response::Attestation { document } => Ok(document),
            Response::Error(e) => Err(NsmError(format!("{e:?}"))),
            _ => Err(NsmError("unexpected NSM response".into())),
        }
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
                self.fd,
                Request::GetRandom,
            ) {
                Response::GetRandom { random } if !random.is_empty() => {
                    out.extend_from_slice(&random)
                }
                Response::Error(e) => return Err(NsmError(format!("{e:?}"))),
                _ => return Err(NsmError("unexpected NSM response".into())),
            }
        }
        out.truncate(len);
        Ok(out)
    }

    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(
            self.fd,
            Request::DescribePCR { index },
        ) {
            Response::DescribePCR { data, .. } => Ok(data),
            Response::Error(e) => Err(NsmError(format!("{e:?}"))),
            _ => Err(NsmError("unexpected NSM response".into())),
        }
    }
}

#[cfg(feature = "dangerous-dev")]
pub use dev::{measure, DangerousDevNsm};

#[cfg(feature = "dangerous-dev")]
mod dev {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    use ciborium::value::Value;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
    };

    use super::{check_request, AttestRequest, Nsm, NsmError};

    const LEAF_LIFETIME: time::Duration = time::Duration::hours(3);

    struct Leaf {
        der: Vec<u8>,
        key: EcdsaKeyPair,
        not_after: time::OffsetDateTime,
    }

    /// **DANGEROUS, development only.** Signs attestation documents that a
    /// verifier accepts only if told to trust this NSM's own root.
    pub struct DangerousDevNsm {
        root_pem: String,
        root_der: Vec<u8>,
        intermediate: CertifiedIssuer<'static, KeyPair>,
        intermediate_der: Vec<u8>,
        leaf: Mutex<Leaf>,
        pcrs: BTreeMap<u8, Vec<u8>>,
        module_id: String,
        indefinite_maps: std::sync::atomic::AtomicBool,
    }

    fn err(e: impl std::fmt::Display) -> NsmError {
        NsmError(e.to_string())
    }

    fn ca_params(cn: &str, years: i64) -> Result<CertificateParams, NsmError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "pii-enclave DANGEROUS dev NSM");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(365 * years);
        Ok(p)
    }

    fn new_leaf(issuer: &CertifiedIssuer<'static, KeyPair>) -> Result<Leaf, NsmError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name
            .push(DnType::CommonName, "i-dev-enclave.dangerous-dev-nsm");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + LEAF_LIFETIME;
        let cert = p.signed_by(&key, issuer).map_err(err)?;
        let signing =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key.serialize_der())
                .map_err(|e| err(format!("leaf key: {e}")))?;
        Ok(Leaf {
            der: cert.der().to_vec(),
            key: signing,
            not_after: p.not_after,
        })
    }

    /// `SHA-384(48 zero bytes ‖ SHA-384(data))`: a PCR extended once.
    pub fn measure(data: &[u8]) -> Vec<u8> {
        use aws_lc_rs::digest::{digest, SHA384};
        let inner = digest(&SHA384, data);
        let mut buf = vec![0u8; 48];
        buf.extend_from_slice(inner.as_ref());
        digest(&SHA384, &buf).as_ref().to_vec()
    }

    impl DangerousDevNsm {
        /// A fresh PKI and PCRs: PCR0 measures `image` (the enclave binary),
        /// PCR1 a fixed development-kernel label, PCR2 `config`; PCR3–15 zero.
        pub fn new(image: &[u8], config: &[u8]) -> Result<DangerousDevNsm, NsmError> {
            let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(err)?;
            let root = CertifiedIssuer::self_signed(
                ca_params("pii-enclave DANGEROUS dev root", 10)?,
                root_key,
            )
            .map_err(err)?;
            let int_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(err)?;
            let intermediate = CertifiedIssuer::signed_by(
                ca_params("pii-enclave dev intermediate", 1)?,
                int_key,
                &root,
            )
            .map_err(err)?;
            let leaf = new_leaf(&intermediate)?;
            let mut pcrs = BTreeMap::new();
            for i in 0u8..16 {
                pcrs.insert(i, vec![0u8; 48]);
            }
            pcrs.insert(0, measure(image));
            pcrs.insert(1, measure(b"pii-enclave dangerous-dev kernel"));
            pcrs.insert(2, measure(config));
            Ok(DangerousDevNsm {
                root_pem: root.pem(),
                root_der: root.der().to_vec(),
                intermediate_der: intermediate.der().to_vec(),
                intermediate,
                leaf: Mutex::new(leaf),
                pcrs,
                module_id: "i-dangerous-dev-enc0000000000000000".into(),
                indefinite_maps: std::sync::atomic::AtomicBool::new(false),
            })
        }

        /// Encode the payload map with indefinite length (as some NSM
        /// versions do), to test that verifiers accept it.
        pub fn set_indefinite_length_payload(&self, on: bool) {
            self.indefinite_maps
                .store(on, std::sync::atomic::Ordering::Relaxed);
        }

        pub fn pcrs(&self) -> &BTreeMap<u8, Vec<u8>> {
            &self.pcrs
        }
    }

    impl Nsm for DangerousDevNsm {
        fn attest(&self, req: &AttestRequest) -> Result<Vec<u8>, NsmError> {
            check_request(req)?;
            let mut leaf = self.leaf.lock().map_err(|_| err("poisoned"))?;
            // Like the real NSM, the leaf is short-lived: renew it before it expires.
            if leaf.not_after - time::OffsetDateTime::now_utc() < time::Duration::minutes(30) {
                *leaf = new_leaf(&self.intermediate)?;
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let bytes = |v: &Option<Vec<u8>>| v.clone().map(Value::Bytes).unwrap_or(Value::Null);
            let payload = Value::Map(vec![
                (
                    Value::Text("module_id".into()),
                    Value::Text(self.module_id.clone()),
                ),
                (Value::Text("digest".into()), Value::Text("SHA384".into())),
                (
                    Value::Text("timestamp".into()),
                    Value::Integer(now_ms.into()),
                ),
                (
                    Value::Text("pcrs".into()),
                    Value::Map(
                        self.pcrs
                            .iter()
                            .map(|(k, v)| (Value::Integer((*k).into()), Value::Bytes(v.clone())))
                            .collect(),
                    ),
                ),
                (
                    Value::Text("certificate".into()),
                    Value::Bytes(leaf.der.clone()),
                ),
                (
                    Value::Text("cabundle".into()),
                    Value::Array(vec![
                        Value::Bytes(self.root_der.clone()),
                        Value::Bytes(self.intermediate_der.clone()),
                    ]),
                ),
                (Value::Text("public_key".into()), bytes(&req.public_key)),
                (Value::Text("user_data".into()), bytes(&req.user_data)),
                (Value::Text("nonce".into()), bytes(&req.nonce)),
            ]);
            let enc = |v: &Value| -> Result<Vec<u8>, NsmError> {
                let mut out = vec![];
                ciborium::into_writer(v, &mut out).map_err(err)?;
                Ok(out)
            };
            let payload = match payload {
                Value::Map(entries)
                    if self
                        .indefinite_maps
                        .load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    // 0xbf (map, indefinite length) … 0xff (break).
                    let mut out = vec![0xbf];
                    for (k, v) in &entries {
                        out.extend(enc(k)?);
                        out.extend(enc(v)?);
                    }
                    out.push(0xff);
                    out
                }
                other => enc(&other)?,
            };
            let protected = enc(&Value::Map(vec![(
                Value::Integer(1.into()),
                Value::Integer((-35).into()),
            )]))?;
            let tbs = enc(&Value::Array(vec![
                Value::Text("Signature1".into()),
                Value::Bytes(protected.clone()),
                Value::Bytes(vec![]),
                Value::Bytes(payload.clone()),
            ]))?;
            let sig = leaf
                .key
                .sign(&aws_lc_rs::rand::SystemRandom::new(), &tbs)
                .map_err(|_| err("signing failed"))?;
            enc(&Value::Array(vec![
                Value::Bytes(protected),
                Value::Map(vec![]),
                Value::Bytes(payload),
                Value::Bytes(sig.as_ref().to_vec()),
            ]))
        }

        fn dangerous_dev_root_pem(&self) -> Option<String> {
            Some(self.root_pem.clone())
        }

        fn random(&self, len: usize) -> Result<Vec<u8>, NsmError> {
            let mut b = vec![0u8; len];
            aws_lc_rs::rand::fill(&mut b).map_err(|_| err("rng"))?;
            Ok(b)
        }

        fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
            u8::try_from(index)
                .ok()
                .and_then(|i| self.pcrs.get(&i).cloned())
                .ok_or_else(|| err(format!("no PCR{index}")))
        }
    }
}
