#![no_main]
//! SigV4 on arbitrary requests (method, path, query, headers, body): the
//! enclave's signer never panics, and what it signs the emulator's
//! independent verifier accepts (a differential check of two
//! implementations of AWS's specification).
libfuzzer_sys::fuzz_target!(|r: (String, String, String, Vec<(String, String)>, Vec<u8>)| {
    let mut req = pii_custody::sigv4::Request { method: &r.0, path: &r.1, query: &r.2, headers: r.3, body: &r.4 };
    // What any client sends: a host, and headers without the ones the signer sets.
    req.headers.retain(|(k, _)| {
        let k = k.to_ascii_lowercase();
        !matches!(k.as_str(), "authorization" | "x-amz-date" | "host" | "x-amz-security-token")
            && !k.is_empty()
            // HTTP token characters (RFC 9110), as a header name has.
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    });
    req.headers.push(("host".into(), "kms.eu-west-1.amazonaws.com".into()));
    let creds = pii_custody::sigv4::Credentials {
        access_key_id: "AKID".into(),
        secret_access_key: zeroize::Zeroizing::new("secret".into()),
        session_token: None,
    };
    let now = 1_700_000_000;
    let auth = pii_custody::sigv4::sign(&mut req, &creds, "eu-west-1", "kms", &pii_custody::sigv4::amz_date(now));
    req.headers.push(("Authorization".into(), auth));
    let got = pii_kms_emulator::sigv4::Received { method: req.method, path: req.path, query: req.query, headers: &req.headers, body: req.body };
    let v = pii_kms_emulator::sigv4::verify(&got, "eu-west-1", "kms", now, |_| Some("secret".into()));
    // Header values with characters HTTP does not allow are outside the spec;
    // for everything else the two must agree.
    let plain = req.headers.iter().all(|(_, v)| v.bytes().all(|b| (0x20..0x7f).contains(&b)));
    if plain && !req.method.is_empty() {
        assert_eq!(v, Ok("AKID".to_owned()), "{req:?}");
    }
});
