#![no_main]
//! Arbitrary API calls from the (untrusted) host: any method, path and body
//! reach the enclave's router, JSON parser, base64 decoder and the Transit and
//! Transform engines. Each input is a sequence of up to eight calls against
//! fresh state (a new engine and store), so a crash reproduces from its input
//! alone. Every answer must be a well-formed status with a JSON (or empty)
//! body.
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pii_enclave::auth::Auth;
use pii_custody::seal::DangerousDevSeal;
use pii_enclave::service::Engine;
use pii_enclave::store::MemoryStore;
use pii_proto::{ApiRequest, Method};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
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
    "sys/capabilities-self", "sys/attestation",
];

fuzz_target!(|data: &[u8]| {
    // Fresh state for this input only.
    let engine = Engine::new(Arc::new(DangerousDevSeal::from_passphrase("fuzz")));
    let store = MemoryStore::default();
    let rt = runtime();
    rt.block_on(engine.load(&store)).expect("empty keyring");
    let mut auth = Auth::default();
    auth.add_root_token("root");
    let attestor = pii_custody::attest::Attestor::new(None);
    // Calls: [selector][body length][body…], up to eight.
    let mut rest = data;
    for _ in 0..8 {
        let Some((&sel, tail)) = rest.split_first() else { return };
        let Some((&len, tail)) = tail.split_first() else { return };
        let (body, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let method = [Method::Post, Method::Get, Method::Put, Method::Delete, Method::List]
            [usize::from(sel >> 5) % 5];
        let req = ApiRequest {
            method,
            path: PATHS[usize::from(sel & 0x1f) % PATHS.len()].to_owned(),
            query: String::new(),
            token: Some("root".into()),
            body: body.to_vec(),
        };
        let resp = rt.block_on(pii_enclave::api::handle(&engine, &auth, &attestor, &store, req)).response;
        assert!((200..600).contains(&resp.status));
        if !resp.body.is_empty() {
            // Responses are JSON objects: {"errors": …} or Vault's envelope.
            assert_eq!(resp.body.first(), Some(&b'{'));
            assert_eq!(resp.body.last(), Some(&b'}'));
        }
    }
});
