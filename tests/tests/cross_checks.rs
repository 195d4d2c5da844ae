//! The enclave's custody code against the KMS emulator's independent
//! implementations of the same specifications (the emulator links no crate
//! of the enclave image): SigV4 signing against verification, and CMS
//! EnvelopedData building against parsing.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use pii_custody::sigv4::{amz_date, parse_amz_date, sign, Credentials, Request};
use pii_kms_emulator::cms::envelope;
use pii_kms_emulator::sigv4::{verify, Received, VerifyError};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: zeroize::Zeroizing::new(SECRET.into()),
        session_token: None,
    }
}

fn check(r: &Request<'_>, region: &str, now: i64, known: bool) -> Result<String, VerifyError> {
    let got = Received {
        method: r.method,
        path: r.path,
        query: r.query,
        headers: &r.headers,
        body: r.body,
    };
    verify(&got, region, "kms", now, |k| {
        (known && k == "AKIDEXAMPLE").then(|| SECRET.to_owned())
    })
}

#[test]
fn what_the_enclave_signs_the_emulator_verifies_and_tampering_fails() {
    let now = parse_amz_date("20150830T123600Z").unwrap();
    let mut r = Request {
        method: "POST",
        path: "/",
        query: "b=2&a=1&c=%7E x",
        headers: vec![
            ("Host".into(), "kms.us-east-1.amazonaws.com".into()),
            ("X-Amz-Target".into(), "TrentService.Decrypt".into()),
            ("Content-Type".into(), "application/x-amz-json-1.1".into()),
        ],
        body: br#"{"KeyId":"k"}"#,
    };
    let auth = sign(&mut r, &creds(), "us-east-1", "kms", &amz_date(now));
    r.headers.push(("Authorization".into(), auth));
    assert_eq!(check(&r, "us-east-1", now, true), Ok("AKIDEXAMPLE".into()));
    // Body, a signed header, time, region, key, the header itself.
    let mut t = r.clone();
    t.body = br#"{"KeyId":"x"}"#;
    assert_eq!(
        check(&t, "us-east-1", now, true),
        Err(VerifyError::BadSignature)
    );
    let mut t = r.clone();
    t.headers[1].1 = "TrentService.GenerateDataKey".into();
    assert_eq!(
        check(&t, "us-east-1", now, true),
        Err(VerifyError::BadSignature)
    );
    let mut t = r.clone();
    t.query = "a=1&b=3";
    assert_eq!(
        check(&t, "us-east-1", now, true),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        check(&r, "us-east-1", now + 3600, true),
        Err(VerifyError::Expired)
    );
    assert!(matches!(
        check(&r, "eu-west-1", now, true),
        Err(VerifyError::WrongScope(_))
    ));
    assert_eq!(
        check(&r, "us-east-1", now, false),
        Err(VerifyError::UnknownKey)
    );
    let mut t = r.clone();
    t.headers.retain(|(k, _)| k != "Authorization");
    t.headers
        .push(("Authorization".into(), "AWS4-HMAC-SHA256 garbage".into()));
    assert_eq!(
        check(&t, "us-east-1", now, true),
        Err(VerifyError::Malformed)
    );
}

#[test]
fn a_session_token_is_signed_too() {
    let now = parse_amz_date("20261201T120000Z").unwrap();
    let mut c = creds();
    c.session_token = Some("FQoGZXIvYXdzEXAMPLE".into());
    let mut r = Request {
        method: "POST",
        path: "/",
        query: "",
        headers: vec![("host".into(), "kms.eu-west-1.amazonaws.com".into())],
        body: b"{}",
    };
    let auth = sign(&mut r, &c, "eu-west-1", "kms", &amz_date(now));
    r.headers.push(("authorization".into(), auth));
    assert_eq!(check(&r, "eu-west-1", now, true), Ok("AKIDEXAMPLE".into()));
    let mut t = r.clone();
    for h in t.headers.iter_mut() {
        if h.0 == "x-amz-security-token" {
            h.1 = "other".into();
        }
    }
    assert_eq!(
        check(&t, "eu-west-1", now, true),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn the_enclave_opens_what_the_emulator_builds() {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let spki = key.public_key().as_der().unwrap().as_ref().to_vec();
    for len in [0usize, 1, 32, 999, 1000, 1001, 5000] {
        let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let cms = envelope(&spki, &pt).unwrap();
        assert_eq!(&cms[..2], &[0x30, 0x80], "indefinite length like KMS");
        let parts = pii_custody::cms::parse(&cms).unwrap();
        assert_eq!(parts.encrypted_key.len(), 256);
        assert_eq!(&pii_custody::cms::open(&cms, &key).unwrap()[..], &pt[..]);
    }
}
