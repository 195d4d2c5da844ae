//! Micro-benchmark of one tokenization (no HTTP): `cargo bench -p pii-engine --bench tokens`.
//! Prints ns per operation for each transformation type.
use std::time::Instant;

use pii_engine::transform::*;

fn time(label: &str, n: usize, mut f: impl FnMut(usize)) {
    for i in 0..n / 10 {
        f(i);
    }
    let t0 = Instant::now();
    for i in 0..n {
        f(i);
    }
    let ns = t0.elapsed().as_nanos() as f64 / n as f64;
    println!("{label:40} {ns:8.0} ns/op  ({:.0} ops/s/core)", 1e9 / ns);
}

fn main() {
    let mk = |kind: Kind| {
        let mut doc = TransformDoc::default();
        doc.transformations.insert(
            "t".into(),
            TransformationDoc {
                kind,
                allowed_roles: vec!["*".into()],
                key: new_key().expect("key"),
            },
        );
        doc.roles.insert(
            "r".into(),
            RoleDoc {
                transformations: vec!["t".into()],
                ..RoleDoc::default()
            },
        );
        TransformState::from_doc(doc)
            .expect("state")
            .resolve("r", None)
            .expect("resolve")
    };
    let values: Vec<String> = (0..1000)
        .map(|i| format!("user{i:06}@example.com"))
        .collect();
    let b58 = mk(Kind::Tokenization {
        prefix: "tok_".into(),
        encoding: TokenEncoding::Base58,
        stored: None,
    });
    let hex = mk(Kind::Tokenization {
        prefix: "tok_".into(),
        encoding: TokenEncoding::Hex,
        stored: None,
    });
    let ssn = mk(Kind::Fpe {
        template: "builtin/socialsecuritynumber".into(),
        tweak_source: TweakSource::Internal,
    });
    let n = 200_000;
    time("tokenization (base58) encode", n, |i| {
        std::hint::black_box(b58.encode(&values[i % 1000], None).expect("encode"));
    });
    time("tokenization (hex) encode", n, |i| {
        std::hint::black_box(hex.encode(&values[i % 1000], None).expect("encode"));
    });
    let toks: Vec<String> = values
        .iter()
        .map(|v| b58.encode(v, None).expect("encode").value)
        .collect();
    time("tokenization (base58) decode", n, |i| {
        std::hint::black_box(b58.decode(&toks[i % 1000], None).expect("decode"));
    });
    time("fpe ssn encode", n / 4, |i| {
        std::hint::black_box(
            ssn.encode(
                &format!("{:03}-{:02}-{:04}", i % 900 + 100, i % 90 + 10, i % 10000),
                None,
            )
            .expect("encode"),
        );
    });
    time("bs58 encode 49 bytes", n, |i| {
        std::hint::black_box(bs58::encode(&[i as u8; 49]).into_string());
    });
}
