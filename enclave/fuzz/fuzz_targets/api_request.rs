#![no_main]
//! Arbitrary API calls from the (untrusted) host: any method, path and body
//! reach the enclave's router, JSON parser, base64 decoder and Transit engine.
//! The answer must always be a well-formed status with a JSON (or empty) body.
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pii_enclave::auth::Auth;
use pii_enclave::seal::DangerousDevSeal;
use pii_enclave::transit::{Engine, MemoryStore};
use pii_proto::{ApiRequest, Method};

struct World {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    auth: Auth,
    store: MemoryStore,
    attestor: pii_enclave::attest::Attestor,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let engine = Engine::new(Arc::new(DangerousDevSeal::from_passphrase("fuzz")));
        let store = MemoryStore::default();
        rt.block_on(engine.load(&store)).expect("empty keyring");
        let mut auth = Auth::default();
        auth.add_root_token("root");
        World { rt, engine, auth, store, attestor: pii_enclave::attest::Attestor::new(None) }
    })
}

const PATHS: &[&str] = &[
    "transit/keys/k", "transit/keys/d", "transit/keys/k/config", "transit/keys/k/rotate",
    "transit/keys/k/trim", "transit/encrypt/k", "transit/encrypt/d", "transit/decrypt/k",
    "transit/decrypt/d", "transit/rewrap/k", "transit/datakey/plaintext/k", "transit/hmac/k",
    "transit/verify/k", "transit/random", "transit/hash", "transit/keys", "auth/token/lookup-self",
    "transform/transformations/fpe/f", "transform/transformations/tokenization/t",
    "transform/transformations/masking/m", "transform/role/r", "transform/encode/r", "transform/decode/r",
    "transform/document/encode/r", "transform/document/decode/r", "transform/template/tp",
    "transform/alphabet/a", "transform/tokenized/r", "transform/metadata/r", "sys/audit-key",
    "sys/attestation",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let method = [Method::Post, Method::Get, Method::Put, Method::Delete, Method::List][usize::from(sel >> 5) % 5];
    let path = PATHS[usize::from(sel & 0x1f) % PATHS.len()];
    let w = world();
    let req = ApiRequest {
        method,
        path: path.to_owned(),
        query: String::new(),
        token: Some("root".into()),
        body: body.to_vec(),
    };
    let resp = w.rt.block_on(pii_enclave::api::handle(&w.engine, &w.auth, &w.attestor, &w.store, req));
    assert!((200..600).contains(&resp.status));
    if !resp.body.is_empty() {
        assert_json_object(&resp.body);
    }
});

fn assert_json_object(b: &[u8]) {
    // Responses are JSON objects: either {"errors": …} or the Vault envelope.
    assert_eq!(b.first(), Some(&b'{'));
    assert_eq!(b.last(), Some(&b'}'));
}
