//! Tokenization, shaped like Vault's Transform engine: alphabets, templates,
//! transformations and roles, with `encode`, `decode`, `validate`,
//! `tokenized` and JSON-document endpoints.
//!
//! Transformation types:
//! * `fpe` — FF1 (NIST SP 800-38G) over a template's alphabet: the output keeps
//!   the input's length, alphabet and formatting (dashes, an email's domain);
//! * `tokenization` — deterministic tokens: same value + same transformation →
//!   same token (joins and per-user aggregation keep working), reversible only
//!   inside the enclave. Token = prefix ‖ base58/hex(0x01 ‖ siv ‖ AES-256-GCM-SIV
//!   ciphertext ‖ tag), where `siv` is an HMAC-SHA256 of the value under a
//!   second derived key (a synthetic IV);
//! * `masking` — irreversible.
//!
//! Stored random tokens (with TTL and metadata, kept in a host-side store) are
//! not built yet: asking for them is a clear 400.
//!
//! All configuration and key material lives in the sealed keyring; the host
//! sees none of it.
//!
//! Why this size: 560 lines of code, the rest its unit tests; the engine's roles, transformations and the encode/decode dispatch share one set of lookup rules that reads best in one place (the formats themselves live in the sibling modules).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM_SIV, NONCE_LEN};
use aws_lc_rs::hmac;
use fpe::ff1::FF1;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::{CryptoError, EngineError, Result};

mod doc;
mod format;

pub use doc::{
    transformation_info, AlphabetDoc, Kind, RoleDoc, StoredOpts, TemplateDoc, TokenEncoding,
    TransformDoc, TransformationDoc, TweakSource, BUILTIN_ALPHABETS, BUILTIN_TEMPLATES,
    LOW_ENTROPY_ENCODES_PER_MINUTE,
};
pub use format::validate_alphabet;
use format::{base58, compile_template, fpe_apply, match_template};

// ---------------------------------------------------------------------------
// Prepared state

fn derive(ikm: &[u8], label: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
    Ok(crypto::hkdf_sha256(ikm, &[label], len)?)
}

/// A compiled regex template.
pub struct Template {
    regex: regex::Regex,
    alphabet: Vec<char>,
    index: BTreeMap<char, u16>,
}

#[allow(clippy::large_enum_variant)] // one per transformation, behind an Arc
enum Engine {
    Fpe {
        ff1: FF1<aes::Aes256>,
        template: Arc<Template>,
        tweak_source: TweakSource,
    },
    Masking {
        template: Arc<Template>,
        ch: char,
    },
    Token {
        aead: LessSafeKey,
        siv: hmac::Key,
        prefix: String,
        encoding: TokenEncoding,
        stored: Option<Box<StoredKeys>>,
    },
}

/// Keys of stored tokens, derived from the transformation key.
struct StoredKeys {
    opts: StoredOpts,
    /// Authenticates `version ‖ expiry ‖ id` inside the token.
    mac: hmac::Key,
    /// Turns a token id into the store key (the host never sees ids).
    lookup: hmac::Key,
    /// Encrypts the stored value and metadata.
    value: LessSafeKey,
    /// Convergent ids.
    conv: hmac::Key,
}

pub struct Transformation {
    name: String,
    allowed_roles: Vec<String>,
    engine: Engine,
}

/// Ready-to-use Transform configuration.
#[derive(Default)]
pub struct TransformState {
    pub doc: TransformDoc,
    transformations: BTreeMap<String, Arc<Transformation>>,
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_AAD: &[u8] = b"pii-enclave/token/v1";
/// Longest value accepted by any transformation, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

impl TransformState {
    pub fn from_doc(doc: TransformDoc) -> Result<TransformState> {
        let mut templates: BTreeMap<String, Arc<Template>> = BTreeMap::new();
        let mut transformations = BTreeMap::new();
        for (name, t) in &doc.transformations {
            let mut tpl = |n: &str| -> Result<Arc<Template>> {
                if let Some(t) = templates.get(n) {
                    return Ok(t.clone());
                }
                let t = Arc::new(compile_template(&doc, n)?);
                templates.insert(n.to_owned(), t.clone());
                Ok(t)
            };
            let engine = match &t.kind {
                Kind::Fpe {
                    template,
                    tweak_source,
                } => {
                    let template = tpl(template)?;
                    let ff1 = FF1::<aes::Aes256>::new(&t.key, template.alphabet.len() as u32)
                        .map_err(|_| EngineError::AlphabetFf1)?;
                    Engine::Fpe {
                        ff1,
                        template,
                        tweak_source: *tweak_source,
                    }
                }
                Kind::Masking {
                    template,
                    masking_character,
                } => Engine::Masking {
                    template: tpl(template)?,
                    ch: *masking_character,
                },
                Kind::Tokenization {
                    prefix,
                    encoding,
                    stored,
                } => {
                    let enc = derive(&t.key, b"pii-enclave/token/v1/enc", 32)?;
                    let siv = derive(&t.key, b"pii-enclave/token/v1/siv", 32)?;
                    let unbound = UnboundKey::new(&AES_256_GCM_SIV, &enc)
                        .map_err(|_| CryptoError::KeyLength)?;
                    let stored = match stored {
                        None => None,
                        Some(opts) => {
                            let hk = |label: &[u8]| -> Result<hmac::Key> {
                                Ok(hmac::Key::new(
                                    hmac::HMAC_SHA256,
                                    &derive(&t.key, label, 32)?,
                                ))
                            };
                            let vk = derive(&t.key, b"pii-enclave/token/v2/value", 32)?;
                            let value = LessSafeKey::new(
                                UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &vk)
                                    .map_err(|_| CryptoError::KeyLength)?,
                            );
                            Some(Box::new(StoredKeys {
                                opts: *opts,
                                mac: hk(b"pii-enclave/token/v2/mac")?,
                                lookup: hk(b"pii-enclave/token/v2/lookup")?,
                                value,
                                conv: hk(b"pii-enclave/token/v2/convergent")?,
                            }))
                        }
                    };
                    Engine::Token {
                        aead: LessSafeKey::new(unbound),
                        siv: hmac::Key::new(hmac::HMAC_SHA256, &siv),
                        prefix: prefix.clone(),
                        encoding: *encoding,
                        stored,
                    }
                }
            };
            transformations.insert(
                name.clone(),
                Arc::new(Transformation {
                    name: name.clone(),
                    allowed_roles: t.allowed_roles.clone(),
                    engine,
                }),
            );
        }
        Ok(TransformState {
            doc,
            transformations,
        })
    }

    /// The transformation a role uses for a request.
    /// The encode allowance (per minute per token) of `transformation` if
    /// any low-entropy role lists it: the smallest of theirs. It holds for
    /// every role that reaches the transformation, so no second role is a
    /// way around it.
    pub fn low_entropy_rate(&self, transformation: &str) -> Option<u32> {
        self.doc
            .roles
            .values()
            .filter(|r| r.low_entropy && r.transformations.iter().any(|t| t == transformation))
            .map(|r| {
                r.encode_per_minute
                    .unwrap_or(LOW_ENTROPY_ENCODES_PER_MINUTE)
            })
            .min()
    }

    pub fn resolve(&self, role: &str, requested: Option<&str>) -> Result<Arc<Transformation>> {
        let r = self
            .doc
            .roles
            .get(role)
            .ok_or_else(|| EngineError::RoleNotFound(role.to_owned()))?;
        let name = match requested.filter(|s| !s.is_empty()) {
            Some(n) => {
                if !r.transformations.iter().any(|t| t == n) {
                    return Err(EngineError::NotInRole {
                        transformation: n.to_owned(),
                        role: role.to_owned(),
                    });
                }
                n.to_owned()
            }
            None => match r.transformations.as_slice() {
                [only] => only.clone(),
                [] => return Err(EngineError::RoleEmpty(role.to_owned())),
                _ => return Err(EngineError::TransformationAmbiguous),
            },
        };
        let t = self
            .transformations
            .get(&name)
            .cloned()
            .ok_or_else(|| EngineError::TransformationNotFound(name.to_owned()))?;
        if !t.allowed_roles.iter().any(|a| a == "*" || a == role) {
            return Err(EngineError::RoleNotAllowed {
                transformation: name.to_owned(),
                role: role.to_owned(),
            });
        }
        Ok(t)
    }
}

// ---------------------------------------------------------------------------
// Operations

/// Result of encoding one value.
pub struct Encoded {
    pub value: String,
    /// For `generated` tweaks: the tweak the caller must keep for decoding.
    pub tweak: Option<Vec<u8>>,
}

const STORED_TOKEN_VERSION: u8 = 2;

fn lookup_key(k: &StoredKeys, id: &[u8]) -> String {
    hex::encode(&hmac::sign(&k.lookup, id).as_ref()[..16])
}

fn check_len(v: &str) -> Result<()> {
    if v.len() > MAX_VALUE_LEN {
        return Err(EngineError::ValueTooLong(MAX_VALUE_LEN));
    }
    Ok(())
}

impl Transformation {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_reversible(&self) -> bool {
        !matches!(self.engine, Engine::Masking { .. })
    }

    fn tweak(
        &self,
        source: TweakSource,
        supplied: Option<&[u8]>,
        encoding: bool,
    ) -> Result<Vec<u8>> {
        match source {
            TweakSource::Internal => {
                let d = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &[
                        b"pii-enclave/fpe-tweak/v1\0".as_slice(),
                        self.name.as_bytes(),
                    ]
                    .concat(),
                );
                Ok(d.as_ref()[..7].to_vec())
            }
            TweakSource::Supplied => match supplied {
                Some(t) if t.len() == 7 => Ok(t.to_vec()),
                Some(_) => Err(EngineError::TweakLength),
                None => Err(EngineError::TweakMissingSupplied),
            },
            TweakSource::Generated if encoding => {
                let mut t = vec![0u8; 7];
                crypto::random(&mut t)?;
                Ok(t)
            }
            TweakSource::Generated => match supplied {
                Some(t) if t.len() == 7 => Ok(t.to_vec()),
                _ => Err(EngineError::TweakMissingGenerated),
            },
        }
    }

    pub fn encode(&self, value: &str, tweak: Option<&[u8]>) -> Result<Encoded> {
        check_len(value)?;
        match &self.engine {
            Engine::Fpe {
                ff1,
                template,
                tweak_source,
            } => {
                let t = self.tweak(*tweak_source, tweak, true)?;
                let out = fpe_apply(ff1, template, value, &t, true)?;
                Ok(Encoded {
                    value: out,
                    tweak: (*tweak_source == TweakSource::Generated).then_some(t),
                })
            }
            Engine::Masking { template, ch } => {
                let caps = match_template(template, value)?;
                let mut out: Vec<char> = value.chars().collect();
                let mut spans = vec![];
                for g in caps.iter().skip(1).flatten() {
                    spans.push((g.start(), g.end()));
                }
                let byte_to_char: Vec<usize> = value.char_indices().map(|(b, _)| b).collect();
                for (s, e) in spans {
                    for (ci, b) in byte_to_char.iter().enumerate() {
                        if *b >= s && *b < e {
                            out[ci] = *ch;
                        }
                    }
                }
                Ok(Encoded {
                    value: out.into_iter().collect(),
                    tweak: None,
                })
            }
            Engine::Token {
                stored: Some(_), ..
            } => Err(EngineError::StoredEntryPoint),
            Engine::Token {
                aead,
                siv,
                prefix,
                encoding,
                stored: None,
            } => {
                let tag = hmac::sign(siv, value.as_bytes());
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
                let buf = crypto::seal_framed(
                    aead,
                    &[TOKEN_VERSION],
                    nonce,
                    value.as_bytes(),
                    TOKEN_AAD,
                )?;
                let body = match encoding {
                    TokenEncoding::Base58 => base58(&buf),
                    TokenEncoding::Hex => hex::encode(&buf),
                };
                Ok(Encoded {
                    value: format!("{prefix}{body}"),
                    tweak: None,
                })
            }
        }
    }

    pub fn decode(&self, value: &str, tweak: Option<&[u8]>) -> Result<Zeroizing<String>> {
        check_len(value)?;
        match &self.engine {
            Engine::Fpe {
                ff1,
                template,
                tweak_source,
            } => {
                let t = self.tweak(*tweak_source, tweak, false)?;
                Ok(Zeroizing::new(fpe_apply(ff1, template, value, &t, false)?))
            }
            Engine::Masking { .. } => Err(EngineError::MaskingIrreversible),
            Engine::Token {
                stored: Some(_), ..
            } => Err(EngineError::StoredEntryPoint),
            Engine::Token {
                aead,
                prefix,
                encoding,
                ..
            } => {
                let invalid = || EngineError::InvalidToken;
                let body = value.strip_prefix(prefix.as_str()).ok_or_else(invalid)?;
                let raw = match encoding {
                    TokenEncoding::Base58 => {
                        bs58::decode(body).into_vec().map_err(|_| invalid())?
                    }
                    TokenEncoding::Hex => hex::decode(body).map_err(|_| invalid())?,
                };
                if raw.first() != Some(&TOKEN_VERSION) {
                    return Err(invalid());
                }
                let ct = crypto::open(aead, &raw[1..], TOKEN_AAD).map_err(|_| invalid())?;
                let s = String::from_utf8(ct.to_vec()).map_err(|_| invalid())?;
                Ok(Zeroizing::new(s))
            }
        }
    }

    /// Whether this transformation keeps mappings in the token store.
    pub fn is_stored(&self) -> bool {
        matches!(
            self.engine,
            Engine::Token {
                stored: Some(_),
                ..
            }
        )
    }

    fn stored_parts(&self) -> Result<(&StoredKeys, &str, TokenEncoding)> {
        match &self.engine {
            Engine::Token {
                stored: Some(k),
                prefix,
                encoding,
                ..
            } => Ok((k, prefix, *encoding)),
            _ => Err(EngineError::StoredEntryPoint),
        }
    }

    /// Issue a stored token: the token and the entry the host must store
    /// (durably) before the token is returned. `ttl` 0 = the maximum allowed.
    pub fn issue_stored(
        &self,
        value: &str,
        ttl: u64,
        metadata: Option<&Value>,
        now: u64,
    ) -> Result<(String, pii_proto::TokenEntry)> {
        check_len(value)?;
        let (k, prefix, encoding) = self.stored_parts()?;
        let max = k.opts.max_ttl;
        if max > 0 && ttl > max {
            return Err(EngineError::TtlAboveMax { ttl, max });
        }
        let ttl = if ttl == 0 { max } else { ttl };
        let expires = if ttl == 0 { 0 } else { now.saturating_add(ttl) };
        let expires32 = u32::try_from(expires).map_err(|_| EngineError::TtlTooLarge)?;
        let mut id = [0u8; 16];
        if k.opts.convergent {
            id.copy_from_slice(&hmac::sign(&k.conv, value.as_bytes()).as_ref()[..16]);
        } else {
            crypto::random(&mut id)?;
        }
        let mut raw = Vec::with_capacity(37);
        raw.push(STORED_TOKEN_VERSION);
        raw.extend_from_slice(&expires32.to_be_bytes());
        raw.extend_from_slice(&id);
        let mac = hmac::sign(&k.mac, &raw);
        raw.extend_from_slice(&mac.as_ref()[..16]);
        let token = match encoding {
            TokenEncoding::Base58 => format!("{prefix}{}", base58(&raw)),
            TokenEncoding::Hex => format!("{prefix}{}", hex::encode(&raw)),
        };
        let key = lookup_key(k, &id);
        let plain = Zeroizing::new(
            serde_json::to_vec(&json!({ "v": value, "m": metadata, "e": expires }))
                .map_err(|_| CryptoError::Encoding)?,
        );
        let sealed = crypto::seal(&k.value, &plain, key.as_bytes())?;
        Ok((
            token,
            pii_proto::TokenEntry {
                key,
                value: sealed,
                expires_at: expires,
            },
        ))
    }

    /// Check a stored token without a lookup (format, MAC, expiry) and return
    /// its store key. Forged tokens fail the MAC; expired ones are refused here.
    pub fn stored_key(&self, token: &str, now: u64) -> Result<String> {
        let (k, prefix, encoding) = self.stored_parts()?;
        let invalid = || EngineError::InvalidToken;
        let body = token.strip_prefix(prefix).ok_or_else(invalid)?;
        let raw = match encoding {
            TokenEncoding::Base58 => bs58::decode(body).into_vec().map_err(|_| invalid())?,
            TokenEncoding::Hex => hex::decode(body).map_err(|_| invalid())?,
        };
        if raw.len() != 37 || raw[0] != STORED_TOKEN_VERSION {
            return Err(invalid());
        }
        let mac = hmac::sign(&k.mac, &raw[..21]);
        aws_lc_rs::constant_time::verify_slices_are_equal(&mac.as_ref()[..16], &raw[21..])
            .map_err(|_| invalid())?;
        let expires = u64::from(u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]));
        if expires != 0 && expires < now {
            return Err(EngineError::TokenExpired);
        }
        Ok(lookup_key(k, &raw[5..21]))
    }

    /// Open a stored mapping: the original value and its metadata.
    pub fn open_stored(&self, key: &str, sealed: &[u8]) -> Result<(Zeroizing<String>, Value)> {
        let (k, _, _) = self.stored_parts()?;
        let bad = || EngineError::StoredMapping;
        let buf = crypto::open(&k.value, sealed, key.as_bytes()).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&buf).map_err(|_| bad())?;
        let value = v["v"].as_str().ok_or_else(bad)?.to_owned();
        Ok((Zeroizing::new(value), v["m"].clone()))
    }

    /// Whether `value` is acceptable input for `encode`.
    pub fn validate(&self, value: &str) -> bool {
        match &self.engine {
            Engine::Fpe { template, .. } | Engine::Masking { template, .. } => {
                value.len() <= MAX_VALUE_LEN && match_template(template, value).is_ok()
            }
            Engine::Token { .. } => value.len() <= MAX_VALUE_LEN,
        }
    }

    /// Whether `value` is a token this transformation produced.
    pub fn is_tokenized(&self, value: &str) -> Result<bool> {
        match &self.engine {
            Engine::Token { .. } => Ok(self.decode(value, None).is_ok()),
            _ => Err(EngineError::NotTokenization),
        }
    }
}

// ---------------------------------------------------------------------------
// Config changes (used by the API layer)

pub fn new_key() -> Result<Zeroizing<Vec<u8>>> {
    let mut k = Zeroizing::new(vec![0u8; 32]);
    crypto::random(&mut k)?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(kind: Kind) -> TransformState {
        state_of(TransformDoc::default(), kind)
    }

    /// `doc` plus transformation `t` of `kind`, allowed for role `r`.
    fn state_of(mut doc: TransformDoc, kind: Kind) -> TransformState {
        doc.transformations.insert(
            "t".into(),
            TransformationDoc {
                kind,
                allowed_roles: vec!["r".into()],
                key: new_key().unwrap(),
            },
        );
        doc.roles.insert(
            "r".into(),
            RoleDoc {
                transformations: vec!["t".into()],
                ..RoleDoc::default()
            },
        );
        TransformState::from_doc(doc).unwrap()
    }

    fn fpe(template: &str, tweak_source: TweakSource) -> Arc<Transformation> {
        state(Kind::Fpe {
            template: template.into(),
            tweak_source,
        })
        .resolve("r", None)
        .unwrap()
    }

    #[test]
    fn fpe_preserves_format_and_round_trips() {
        let ssn = fpe("builtin/socialsecuritynumber", TweakSource::Internal);
        let e = ssn.encode("078-05-1120", None).unwrap();
        assert_ne!(e.value, "078-05-1120");
        assert_eq!(e.value.len(), 11);
        assert_eq!(&e.value[3..4], "-");
        assert!(e.value.chars().all(|c| c.is_ascii_digit() || c == '-'));
        assert_eq!(
            ssn.encode("078-05-1120", None).unwrap().value,
            e.value,
            "deterministic"
        );
        assert_eq!(&*ssn.decode(&e.value, None).unwrap(), "078-05-1120");

        let email = fpe("builtin/emaillocalpart", TweakSource::Internal);
        let e = email.encode("jane.doe@example.com", None).unwrap();
        assert!(e.value.ends_with("@example.com"), "{}", e.value);
        assert_eq!(e.value.len(), "jane.doe@example.com".len());
        assert_eq!(&e.value[4..5], ".");
        assert_eq!(
            &*email.decode(&e.value, None).unwrap(),
            "jane.doe@example.com"
        );

        let cc = fpe("builtin/creditcardnumber", TweakSource::Internal);
        let e = cc.encode("4111 1111 1111 1111", None).unwrap();
        assert_eq!(e.value.len(), 19);
        assert_eq!(&*cc.decode(&e.value, None).unwrap(), "4111 1111 1111 1111");
    }

    #[test]
    fn fpe_domain_errors() {
        let email = fpe("builtin/emaillocalpart", TweakSource::Internal);
        let err = email.encode("ab@x.io", None).err().unwrap();
        assert!(err.to_string().contains("too short"), "{}", err.to_string());
        let ssn = fpe("builtin/socialsecuritynumber", TweakSource::Internal);
        assert_eq!(
            ssn.encode("not-an-ssn", None).err().unwrap().to_string(),
            "value does not match the transformation's template"
        );
        assert!(ssn.encode(&"1".repeat(5000), None).is_err());
    }

    /// A value character outside the template's alphabet is refused without
    /// naming it: error messages never carry plaintext.
    #[test]
    fn an_out_of_alphabet_character_is_not_echoed() {
        let mut doc = TransformDoc::default();
        doc.templates.insert(
            "any".into(),
            TemplateDoc {
                pattern: "(.+)".into(),
                alphabet: "builtin/numeric".into(),
            },
        );
        let t = state_of(
            doc,
            Kind::Fpe {
                template: "any".into(),
                tweak_source: TweakSource::Internal,
            },
        )
        .resolve("r", None)
        .unwrap();
        let err = t.encode("1234567Q890", None).err().unwrap();
        assert_eq!(err, EngineError::NotInAlphabet);
        assert!(!err.to_string().contains('Q'), "{err}");
    }

    #[test]
    fn tweaks() {
        let sup = fpe("builtin/socialsecuritynumber", TweakSource::Supplied);
        assert!(sup.encode("078-05-1120", None).is_err());
        let a = sup.encode("078-05-1120", Some(b"1234567")).unwrap().value;
        let b = sup.encode("078-05-1120", Some(b"7654321")).unwrap().value;
        assert_ne!(a, b);
        assert_eq!(&*sup.decode(&a, Some(b"1234567")).unwrap(), "078-05-1120");
        let gen = fpe("builtin/socialsecuritynumber", TweakSource::Generated);
        let e = gen.encode("078-05-1120", None).unwrap();
        let t = e.tweak.clone().unwrap();
        assert_eq!(&*gen.decode(&e.value, Some(&t)).unwrap(), "078-05-1120");
        assert!(gen.decode(&e.value, None).is_err());
    }

    #[test]
    fn deterministic_tokens() {
        let s = state(Kind::Tokenization {
            prefix: "tok_".into(),
            encoding: TokenEncoding::Base58,
            stored: None,
        });
        let t = s.resolve("r", Some("t")).unwrap();
        let a = t.encode("jane@example.com", None).unwrap().value;
        assert!(a.starts_with("tok_"));
        assert_eq!(
            t.encode("jane@example.com", None).unwrap().value,
            a,
            "same input, same token"
        );
        assert_ne!(t.encode("john@example.com", None).unwrap().value, a);
        assert_eq!(&*t.decode(&a, None).unwrap(), "jane@example.com");
        assert!(t.is_tokenized(&a).unwrap());
        // Forged and malformed tokens.
        let mut forged: Vec<char> = a.chars().collect();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == '2' { '3' } else { '2' };
        let forged: String = forged.into_iter().collect();
        assert_eq!(
            t.decode(&forged, None).err().unwrap().to_string(),
            "invalid token"
        );
        assert!(!t.is_tokenized(&forged).unwrap());
        assert!(t.decode("tok_", None).is_err());
        assert!(t.decode("nope", None).is_err());
        assert!(t.decode("tok_0OIl", None).is_err(), "not base58");
        // Another transformation's key cannot open it.
        let other = state(Kind::Tokenization {
            prefix: "tok_".into(),
            encoding: TokenEncoding::Base58,
            stored: None,
        });
        assert!(other.resolve("r", None).unwrap().decode(&a, None).is_err());
        let h = state(Kind::Tokenization {
            prefix: "".into(),
            encoding: TokenEncoding::Hex,
            stored: None,
        });
        let v = h
            .resolve("r", None)
            .unwrap()
            .encode("x", None)
            .unwrap()
            .value;
        assert!(v.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn masking() {
        let s = state(Kind::Masking {
            template: "builtin/creditcardnumber".into(),
            masking_character: '#',
        });
        let t = s.resolve("r", None).unwrap();
        assert_eq!(
            t.encode("4111-1111-1111-1111", None).unwrap().value,
            "####-####-####-####"
        );
        assert!(t.decode("####", None).is_err());
        assert!(!t.is_reversible());
    }

    #[test]
    fn roles_and_allowed_roles() {
        let s = state(Kind::Tokenization {
            prefix: "".into(),
            encoding: TokenEncoding::Hex,
            stored: None,
        });
        assert!(s.resolve("nope", None).is_err());
        assert!(s.resolve("r", Some("other")).is_err());
        let mut doc = s.doc.clone();
        doc.roles.insert(
            "intruder".into(),
            RoleDoc {
                transformations: vec!["t".into()],
                ..RoleDoc::default()
            },
        );
        let s2 = TransformState::from_doc(doc).unwrap();
        assert!(s2
            .resolve("intruder", None)
            .err()
            .unwrap()
            .to_string()
            .contains("does not allow role"));
    }
}
