//! CMS EnvelopedData as AWS KMS returns it in `CiphertextForRecipient`:
//! one KeyTransRecipientInfo (RSAES-OAEP with SHA-256/MGF1-SHA-256) wrapping
//! an AES-256-CBC content key, BER-encoded with indefinite lengths and the
//! encrypted content split into chunks (RFC 5652, RFC 8017).
//!
//! [`open`] parses strictly (bounded depth, no trailing bytes, only the
//! algorithms above) and decrypts inside the enclave with the ephemeral RSA
//! key whose public half went into the attestation document. Tested against
//! OpenSSL's `cms -encrypt` output, DER and streamed BER.

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256};
use zeroize::Zeroizing;

/// DER contents of the object identifiers of a KMS `CiphertextForRecipient`.
pub const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
pub const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
pub const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
pub const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmsError {
    #[error("malformed CMS: {0}")]
    Malformed(&'static str),
    #[error("unsupported CMS: {0}")]
    Unsupported(&'static str),
    #[error("CMS decryption failed (wrong key or tampered content)")]
    Decrypt,
}

use CmsError::{Malformed, Unsupported};

/// One BER element: identifier octet, content, and whether it is constructed.
#[derive(Debug, Clone, Copy)]
struct El<'a> {
    tag: u8,
    body: &'a [u8],
    /// Indefinite-length content still holds its children and ends before
    /// the end-of-contents octets (already stripped).
    constructed: bool,
}

/// Read one element from the front of `input`; returns it and the rest.
fn element(input: &[u8], depth: usize) -> Result<(El<'_>, &[u8]), CmsError> {
    if depth > MAX_DEPTH {
        return Err(Malformed("nesting too deep"));
    }
    let (&tag, rest) = input.split_first().ok_or(Malformed("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed(
            "high tag numbers are not used in CMS EnvelopedData",
        ));
    }
    let constructed = tag & 0x20 != 0;
    let (&len0, rest) = rest.split_first().ok_or(Malformed("truncated length"))?;
    if len0 == 0x80 {
        if !constructed {
            return Err(Malformed("indefinite length on a primitive element"));
        }
        // Walk children until the end-of-contents octets.
        let mut cur = rest;
        loop {
            if cur.len() >= 2 && cur[0] == 0 && cur[1] == 0 {
                let body_len = rest.len() - cur.len();
                return Ok((
                    El {
                        tag,
                        body: &rest[..body_len],
                        constructed,
                    },
                    &cur[2..],
                ));
            }
            let (_, next) = element(cur, depth + 1)?;
            cur = next;
        }
    }
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(Malformed("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(Malformed("truncated element"));
    }
    Ok((
        El {
            tag,
            body: &rest[..len],
            constructed,
        },
        &rest[len..],
    ))
}

/// The children of a constructed element.
fn children(el: El<'_>, depth: usize) -> Result<Vec<El<'_>>, CmsError> {
    if !el.constructed {
        return Err(Malformed("expected a constructed element"));
    }
    let mut out = Vec::new();
    let mut cur = el.body;
    while !cur.is_empty() {
        let (c, rest) = element(cur, depth + 1)?;
        out.push(c);
        cur = rest;
    }
    Ok(out)
}

fn expect<'a>(els: &[El<'a>], i: usize, tag: u8, what: &'static str) -> Result<El<'a>, CmsError> {
    match els.get(i) {
        Some(e) if e.tag == tag => Ok(*e),
        _ => Err(Malformed(what)),
    }
}

/// OCTET STRING content, primitive or (BER) constructed from chunks.
fn octets(el: El<'_>, depth: usize, out: &mut Vec<u8>) -> Result<(), CmsError> {
    if !el.constructed {
        out.extend_from_slice(el.body);
        return Ok(());
    }
    for c in children(el, depth)? {
        if c.tag & 0x1f != 0x04 {
            return Err(Malformed("chunk of an OCTET STRING is not an OCTET STRING"));
        }
        octets(c, depth + 1, out)?;
    }
    Ok(())
}

/// `AlgorithmIdentifier { sha256 }` (parameters absent or NULL).
fn is_sha256(alg: El<'_>, depth: usize) -> Result<bool, CmsError> {
    let parts = children(alg, depth)?;
    Ok(parts
        .first()
        .is_some_and(|o| o.tag == 0x06 && o.body == OID_SHA256))
}

/// RSAES-OAEP parameters must name SHA-256 for the hash and for MGF1
/// (the defaults, when absent, are SHA-1: refused).
fn check_oaep_params(params: El<'_>, depth: usize) -> Result<(), CmsError> {
    let mut hash_ok = false;
    let mut mgf_ok = false;
    for p in children(params, depth)? {
        match p.tag {
            0xa0 => {
                let alg = expect(&children(p, depth + 1)?, 0, 0x30, "OAEP hash")?;
                hash_ok = is_sha256(alg, depth + 2)?;
            }
            0xa1 => {
                let mgf = expect(&children(p, depth + 1)?, 0, 0x30, "OAEP MGF")?;
                let m = children(mgf, depth + 2)?;
                let oid = expect(&m, 0, 0x06, "MGF OID")?;
                let h = expect(&m, 1, 0x30, "MGF hash")?;
                mgf_ok = oid.body == OID_MGF1 && is_sha256(h, depth + 3)?;
            }
            0xa2 => {} // pSourceFunc: the empty label is the only one used
            _ => return Err(Malformed("unknown OAEP parameter")),
        }
    }
    if hash_ok && mgf_ok {
        Ok(())
    } else {
        Err(Unsupported("RSAES-OAEP must use SHA-256 and MGF1-SHA-256"))
    }
}

/// The parts of an EnvelopedData that decryption needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The content-encryption key, RSAES-OAEP-encrypted to the recipient.
    pub encrypted_key: Vec<u8>,
    /// AES-256-CBC initialisation vector.
    pub iv: [u8; 16],
    /// The encrypted content (chunks joined).
    pub ciphertext: Vec<u8>,
}

/// Parse (strictly) without decrypting.
pub fn parse(cms: &[u8]) -> Result<Parts, CmsError> {
    let (ci, rest) = element(cms, 0)?;
    if !rest.is_empty() {
        return Err(Malformed("trailing bytes after ContentInfo"));
    }
    if ci.tag != 0x30 {
        return Err(Malformed("ContentInfo is not a SEQUENCE"));
    }
    let ci = children(ci, 0)?;
    if expect(&ci, 0, 0x06, "contentType")?.body != OID_ENVELOPED_DATA {
        return Err(Unsupported("content type is not envelopedData"));
    }
    let wrapper = children(expect(&ci, 1, 0xa0, "[0] content")?, 1)?;
    let ed = children(expect(&wrapper, 0, 0x30, "EnvelopedData")?, 2)?;
    expect(&ed, 0, 0x02, "version")?;
    let mut i = 1;
    if ed.get(i).is_some_and(|e| e.tag == 0xa0) {
        i += 1; // originatorInfo
    }
    let recipients = children(expect(&ed, i, 0x31, "recipientInfos")?, 3)?;
    let eci = children(expect(&ed, i + 1, 0x30, "encryptedContentInfo")?, 3)?;

    // The (only) KeyTransRecipientInfo.
    let ktri = recipients
        .iter()
        .find(|r| r.tag == 0x30)
        .ok_or(Unsupported("no KeyTransRecipientInfo"))?;
    let k = children(*ktri, 4)?;
    expect(&k, 0, 0x02, "ktri version")?;
    let kea = children(expect(&k, 2, 0x30, "keyEncryptionAlgorithm")?, 5)?;
    if expect(&kea, 0, 0x06, "key encryption OID")?.body != OID_RSAES_OAEP {
        return Err(Unsupported("key encryption is not RSAES-OAEP"));
    }
    check_oaep_params(expect(&kea, 1, 0x30, "OAEP parameters")?, 6)?;
    let ek_el = k
        .get(3)
        .filter(|e| e.tag & 0x1f == 0x04)
        .ok_or(Malformed("encryptedKey"))?;
    let mut encrypted_key = Vec::new();
    octets(*ek_el, 5, &mut encrypted_key)?;

    // Content: AES-256-CBC with the IV as parameter.
    let cea = children(expect(&eci, 1, 0x30, "contentEncryptionAlgorithm")?, 4)?;
    if expect(&cea, 0, 0x06, "content encryption OID")?.body != OID_AES256_CBC {
        return Err(Unsupported("content encryption is not AES-256-CBC"));
    }
    let mut iv = Vec::new();
    octets(
        *cea.get(1)
            .filter(|e| e.tag & 0x1f == 0x04)
            .ok_or(Malformed("IV"))?,
        5,
        &mut iv,
    )?;
    let iv: [u8; 16] = iv.try_into().map_err(|_| Malformed("IV is not 16 bytes"))?;
    let content = eci
        .get(2)
        .filter(|e| e.tag & 0xdf == 0x80)
        .ok_or(Malformed("encryptedContent"))?;
    let mut ciphertext = Vec::new();
    octets(*content, 4, &mut ciphertext)?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(Malformed("encrypted content is not whole AES blocks"));
    }

    Ok(Parts {
        encrypted_key,
        iv,
        ciphertext,
    })
}

/// Decrypt a CMS EnvelopedData addressed to `key`.
pub fn open(cms: &[u8], key: &PrivateDecryptingKey) -> Result<Zeroizing<Vec<u8>>, CmsError> {
    let Parts {
        encrypted_key,
        iv,
        ciphertext,
    } = parse(cms)?;
    let oaep = OaepPrivateDecryptingKey::new(key.clone()).map_err(|_| CmsError::Decrypt)?;
    let mut cek = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
    let n = oaep
        .decrypt(&OAEP_SHA256_MGF1SHA256, &encrypted_key, &mut cek, None)
        .map_err(|_| CmsError::Decrypt)?
        .len();
    if n != 32 {
        return Err(Unsupported("content key is not 256 bits"));
    }
    let aes = PaddedBlockDecryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &cek[..32]).map_err(|_| CmsError::Decrypt)?,
    )
    .map_err(|_| CmsError::Decrypt)?;
    let mut buf = Zeroizing::new(ciphertext);
    let n = aes
        .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
        .map_err(|_| CmsError::Decrypt)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) {
        let st = Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    }

    /// OpenSSL encrypts (DER and streamed, indefinite-length BER) to a
    /// certificate over our RSA key; we decrypt.
    #[test]
    fn opens_openssl_enveloped_data_der_and_ber() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let key = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        use aws_lc_rs::encoding::AsDer as _;
        let pk8 = key.as_der().unwrap();
        std::fs::write(p("key.der"), pk8.as_ref()).unwrap();
        openssl(&[
            "pkey",
            "-inform",
            "DER",
            "-in",
            &p("key.der"),
            "-out",
            &p("key.pem"),
        ]);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &p("key.pem"),
            "-subj",
            "/CN=enclave",
            "-days",
            "1",
            "-out",
            &p("cert.pem"),
        ]);
        let secret: Vec<u8> = (0..32u8).collect();
        std::fs::write(p("dk.bin"), &secret).unwrap();
        let oaep = [
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
            "-keyopt",
            "rsa_mgf1_md:sha256",
        ];
        let dk = p("dk.bin");
        for (name, stream) in [("der.cms", false), ("ber.cms", true)] {
            let mut args = vec!["cms", "-encrypt", "-binary", "-in", dk.as_str()];
            let out = p(name);
            let cert = p("cert.pem");
            if stream {
                args.extend(["-stream", "-indef"]);
            }
            args.extend(["-recip", &cert]);
            args.extend(oaep);
            args.extend(["-aes-256-cbc", "-outform", "DER", "-out", &out]);
            openssl(&args);
            let cms = std::fs::read(&out).unwrap();
            if stream {
                assert_eq!(
                    &cms[..2],
                    &[0x30, 0x80],
                    "OpenSSL wrote indefinite-length BER"
                );
            }
            assert_eq!(&open(&cms, &key).unwrap()[..], &secret[..], "{name}");

            // Tampering, truncation, trailing bytes, another key.
            let mut t = cms.clone();
            let n = t.len();
            t[n - 20] ^= 1;
            assert!(open(&t, &key).is_err(), "{name}: tampered");
            for cut in [1, 10, cms.len() / 2, cms.len() - 1] {
                assert!(open(&cms[..cut], &key).is_err(), "{name}: cut {cut}");
            }
            let mut t = cms.clone();
            t.push(0);
            assert_eq!(
                open(&t, &key).unwrap_err(),
                Malformed("trailing bytes after ContentInfo")
            );
            let other = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            assert_eq!(open(&cms, &other).unwrap_err(), CmsError::Decrypt);
        }

        // SHA-1 OAEP (OpenSSL's default) is refused, not silently accepted.
        let out = p("sha1.cms");
        let cert = p("cert.pem");
        openssl(&[
            "cms",
            "-encrypt",
            "-binary",
            "-in",
            &p("dk.bin"),
            "-recip",
            &cert,
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-aes-256-cbc",
            "-outform",
            "DER",
            "-out",
            &out,
        ]);
        let err = open(&std::fs::read(&out).unwrap(), &key).unwrap_err();
        assert!(matches!(err, Unsupported(_)), "{err:?}");
    }

    /// AWS's own vector: a `CiphertextForRecipient` KMS returned, from the
    /// Nitro Enclaves SDK's CMS test (its parts listed separately there).
    #[test]
    fn parses_the_kms_response_from_the_aws_nitro_enclaves_sdk() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let ber = std::fs::read(dir.join("kms_ciphertext_for_recipient.ber")).unwrap();
        let want: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("kms_ciphertext_for_recipient.json")).unwrap(),
        )
        .unwrap();
        let hex_of = |k: &str| hex::decode(want[k].as_str().unwrap()).unwrap();
        let parts = parse(&ber).unwrap();
        assert_eq!(parts.encrypted_key, hex_of("encrypted_key"));
        assert_eq!(parts.encrypted_key.len(), 256, "RSA-2048");
        assert_eq!(parts.iv.to_vec(), hex_of("iv"));
        assert_eq!(parts.ciphertext, hex_of("ciphertext"));
        // Indefinite lengths throughout, as KMS sends it.
        assert_eq!(&ber[..2], &[0x30, 0x80]);
        // Without the enclave's private key it cannot be opened: a clean error.
        let key = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        assert_eq!(open(&ber, &key).unwrap_err(), CmsError::Decrypt);
        // Every truncation is refused without a panic.
        for cut in 0..ber.len() {
            assert!(parse(&ber[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn hostile_ber_is_refused_without_panics() {
        let key = PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
        assert_eq!(
            open(&deep, &key).unwrap_err(),
            Malformed("nesting too deep")
        );
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x04, 0x80, 0, 0],
            &[0x3f, 0x01, 0x00],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(open(bad, &key).is_err(), "{bad:?}");
        }
    }
}
