//! Build a CMS EnvelopedData the way KMS does for `CiphertextForRecipient`
//! (RFC 5652): ContentInfo → EnvelopedData v2 → one KeyTransRecipientInfo
//! (v2, subjectKeyIdentifier = SHA-256 of the recipient's SPKI, RSAES-OAEP
//! with SHA-256 and MGF1-SHA-256) → EncryptedContentInfo (id-data,
//! AES-256-CBC with the IV as parameter, content in OCTET STRING chunks).
//! The outer layers use indefinite lengths, like the response in AWS's
//! Nitro Enclaves SDK tests.

use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};

// Object identifiers (RFC 5652, RFC 8017, NIST CSOR), as DER contents.
const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

/// `id-data`: the content type of the encrypted content.
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
/// Content chunk size inside the constructed `[0]` encryptedContent.
const CHUNK: usize = 1000;

/// A DER element with a definite length.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

/// A constructed BER element with an indefinite length.
fn indefinite(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![tag, 0x80];
    for p in parts {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

fn sha256_alg() -> Vec<u8> {
    der(0x30, &[der(0x06, OID_SHA256), vec![0x05, 0x00]].concat())
}

/// Why an envelope could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("public key: not a DER SubjectPublicKeyInfo")]
    PublicKey,
    #[error("not an RSA key for OAEP")]
    NotRsa,
    #[error("random number generator failed")]
    Random,
    #[error("RSA-OAEP encryption failed")]
    Oaep,
    #[error("AES-CBC encryption failed")]
    Aes,
}

/// Encrypt `plaintext` to the RSA public key `spki_der` (SubjectPublicKeyInfo).
pub fn envelope(spki_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let public = PublicEncryptingKey::from_der(spki_der).map_err(|_| EnvelopeError::PublicKey)?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| EnvelopeError::NotRsa)?;
    let mut cek = zeroize::Zeroizing::new([0u8; 32]);
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut cek[..]).map_err(|_| EnvelopeError::Random)?;
    aws_lc_rs::rand::fill(&mut iv).map_err(|_| EnvelopeError::Random)?;
    let mut ek = vec![0u8; oaep.ciphertext_size()];
    let ek = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, &cek[..], &mut ek, None)
        .map_err(|_| EnvelopeError::Oaep)?
        .to_vec();
    let aes = PaddedBlockEncryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &cek[..]).map_err(|_| EnvelopeError::Aes)?,
    )
    .map_err(|_| EnvelopeError::Aes)?;
    let mut content = plaintext.to_vec();
    aes.less_safe_encrypt(&mut content, EncryptionContext::Iv128(iv.into()))
        .map_err(|_| EnvelopeError::Aes)?;

    let ski = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
    let oaep_params = der(
        0x30,
        &[
            der(0xa0, &sha256_alg()),
            der(
                0xa1,
                &der(0x30, &[der(0x06, OID_MGF1), sha256_alg()].concat()),
            ),
        ]
        .concat(),
    );
    let ktri = der(
        0x30,
        &[
            der(0x02, &[2]),
            der(0x80, ski.as_ref()),
            der(0x30, &[der(0x06, OID_RSAES_OAEP), oaep_params].concat()),
            der(0x04, &ek),
        ]
        .concat(),
    );
    let chunks: Vec<Vec<u8>> = content.chunks(CHUNK).map(|c| der(0x04, c)).collect();
    let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let eci = indefinite(
        0x30,
        &[
            &der(0x06, OID_DATA),
            &der(0x30, &[der(0x06, OID_AES256_CBC), der(0x04, &iv)].concat()),
            &indefinite(0xa0, &chunk_refs),
        ],
    );
    let ed = indefinite(0x30, &[&der(0x02, &[2]), &der(0x31, &ktri), &eci]);
    Ok(indefinite(
        0x30,
        &[&der(0x06, OID_ENVELOPED_DATA), &indefinite(0xa0, &[&ed])],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};

    /// An independent CMS implementation agrees: OpenSSL decrypts it.
    #[test]
    fn openssl_decrypts_the_emulators_cms() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
        std::fs::write(dir.path().join("k.der"), key.as_der().unwrap().as_ref()).unwrap();
        let pt = b"a 32-byte data key, or anything".to_vec();
        std::fs::write(dir.path().join("m.cms"), envelope(&spki, &pt).unwrap()).unwrap();
        let run = |args: &[&str]| {
            let o = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o.stdout
        };
        run(&["pkey", "-inform", "DER", "-in", "k.der", "-out", "k.pem"]);
        let out = run(&[
            "cms", "-decrypt", "-inform", "DER", "-in", "m.cms", "-inkey", "k.pem", "-binary",
        ]);
        assert_eq!(out, pt);
    }
}
