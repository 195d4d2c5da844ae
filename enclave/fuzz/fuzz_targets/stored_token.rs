#![no_main]
//! Stored-token parsing (format, MAC, expiry) of any string a caller or the
//! host hands in, against one fixed stored transformation.
use std::sync::{Arc, OnceLock};

use pii_engine::transform::{
    Kind, RoleDoc, StoredOpts, TokenEncoding, TransformDoc, TransformState, Transformation,
    TransformationDoc,
};

fn transformation() -> &'static Arc<Transformation> {
    static T: OnceLock<Arc<Transformation>> = OnceLock::new();
    T.get_or_init(|| {
        let mut doc = TransformDoc::default();
        doc.transformations.insert(
            "t".into(),
            TransformationDoc {
                kind: Kind::Tokenization {
                    prefix: "tok_".into(),
                    encoding: TokenEncoding::Base58,
                    stored: Some(StoredOpts { max_ttl: 0, convergent: false }),
                },
                allowed_roles: vec!["r".into()],
                key: zeroize::Zeroizing::new(vec![7; 32]),
            },
        );
        doc.roles.insert("r".into(), RoleDoc { transformations: vec!["t".into()], ..RoleDoc::default() });
        TransformState::from_doc(doc).expect("state").resolve("r", None).expect("t")
    })
}

libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = transformation().stored_key(s, 1_700_000_000);
});
