//! Tokenization through the sidecar: every transformation type, determinism
//! across enclave restarts, format preservation, bad input, decode
//! authorization, JSON documents, and the signed audit log.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use pii_enclave::auth::{token_hash, AuthConfig};
use pii_engine::clock::{Clock as _, ManualClock, SystemClock};
use pii_tests::{Client, Stack, StackOpts};
use serde_json::{json, Value};

const ENCODER: &str = "s.edge-encoder";
const DECODER: &str = "s.support-decoder";

fn auth() -> AuthConfig {
    toml::from_str(&format!(
        r#"
        [[tokens]]
        token_hmac = "{}"
        policies = ["encode"]
        display_name = "edge-worker"
        [[tokens]]
        token_hmac = "{}"
        policies = ["encode", "decode"]
        display_name = "support-agent"
        [policies.encode]
        rules = [{{ path = "transform/encode/edge", capabilities = ["update"] }},
                 {{ path = "transform/document/encode/edge", capabilities = ["update"] }},
                 {{ path = "transform/validate/edge", capabilities = ["update"] }},
                 {{ path = "transform/tokenized/edge", capabilities = ["update"] }}]
        [policies.decode]
        rules = [{{ path = "transform/decode/edge", capabilities = ["update"] }},
                 {{ path = "transform/document/decode/edge", capabilities = ["update"] }}]
        "#,
        hex::encode(token_hash(ENCODER)),
        hex::encode(token_hash(DECODER)),
    ))
    .unwrap()
}

async fn setup(c: &Client) {
    let ok = |r: pii_tests::Reply| assert!(r.status == 204 || r.status == 200, "{:?}", r.body);
    ok(c.post(
        "transform/transformations/tokenization/emails",
        json!({"allowed_roles": ["edge"]}),
    )
    .await);
    ok(c.post(
        "transform/transformations/tokenization/userid",
        json!({"allowed_roles": ["edge"], "prefix": "u_", "encoding": "hex"}),
    )
    .await);
    for (name, template) in [
        ("ssn", "builtin/socialsecuritynumber"),
        ("phone", "builtin/phonenumber"),
        ("email-fpe", "builtin/emaillocalpart"),
        ("card", "builtin/creditcardnumber"),
    ] {
        ok(c.post(
            &format!("transform/transformations/fpe/{name}"),
            json!({"template": template, "tweak_source": "internal", "allowed_roles": ["edge"]}),
        )
        .await);
    }
    ok(c.post(
        "transform/transformations/masking/card-mask",
        json!({"template": "builtin/creditcardnumber", "allowed_roles": ["edge"]}),
    )
    .await);
    ok(c.post(
        "transform/role/edge",
        json!({"transformations": ["emails", "userid", "ssn", "phone", "email-fpe", "card", "card-mask"]}),
    )
    .await);
}

fn enc(r: &pii_tests::Reply) -> String {
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.data("encoded_value").as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_and_tokens_survive_restart() {
    let mut stack = Stack::start_with(StackOpts {
        auth: auth(),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let root = stack.client();
    setup(&root).await;
    let e = root.with_token(ENCODER);
    let d = root.with_token(DECODER);

    let cases = [
        ("emails", "jane.doe@example.com"),
        ("userid", "user-42"),
        ("ssn", "078-05-1120"),
        ("phone", "+1 (555) 867-5309"),
        ("email-fpe", "jane.doe@example.com"),
        ("card", "4111-1111-1111-1111"),
    ];
    let mut tokens = vec![];
    for (t, v) in cases {
        let tok = enc(&e
            .post(
                "transform/encode/edge",
                json!({"value": v, "transformation": t}),
            )
            .await);
        assert_ne!(tok, v, "{t}");
        let back = d
            .post(
                "transform/decode/edge",
                json!({"value": tok, "transformation": t, "reason": "ticket-1"}),
            )
            .await;
        assert_eq!(back.data("decoded_value"), v, "{t}: {:?}", back.body);
        tokens.push((t, v, tok));
    }
    // Format preservation: same length, separators kept, digits stay digits.
    let ssn = &tokens[2].2;
    assert_eq!(ssn.len(), 11);
    assert_eq!((&ssn[3..4], &ssn[6..7]), ("-", "-"));
    assert!(ssn
        .chars()
        .filter(|c| *c != '-')
        .all(|c| c.is_ascii_digit()));
    let phone = &tokens[3].2;
    assert!(
        phone.starts_with("+") && phone.contains(" (") && phone.contains(") "),
        "{phone}"
    );
    assert!(tokens[4].2.ends_with("@example.com"));
    assert!(tokens[0].2.starts_with("tok_") && tokens[1].2.starts_with("u_"));
    // Masking is irreversible.
    let masked = enc(&e
        .post(
            "transform/encode/edge",
            json!({"value": "4111-1111-1111-1111", "transformation": "card-mask"}),
        )
        .await);
    assert_eq!(masked, "****-****-****-****");
    let r = d
        .post(
            "transform/decode/edge",
            json!({"value": masked, "transformation": "card-mask"}),
        )
        .await;
    assert_eq!(r.status, 400);

    // A fresh enclave (empty memory, same sealed keyring) gives the same tokens.
    stack.restart_enclave().await;
    for (t, v, tok) in &tokens {
        let again = enc(&e
            .post(
                "transform/encode/edge",
                json!({"value": v, "transformation": t}),
            )
            .await);
        assert_eq!(&again, tok, "{t} is deterministic across restarts");
    }

    // Batches keep order and references; bad items fail alone.
    let r = e
        .post(
            "transform/encode/edge",
            json!({"batch_input": [
                {"value": "078-05-1120", "transformation": "ssn", "reference": "a"},
                {"value": "12", "transformation": "ssn", "reference": "b"},
                {"value": "x@y.io", "transformation": "emails", "reference": "c"}
            ], "partial_failure_response_code": 207}),
        )
        .await;
    assert_eq!(r.status, 207, "{:?}", r.body);
    let res = r.data("batch_results").as_array().unwrap();
    assert_eq!(res[0]["encoded_value"], json!(tokens[2].2));
    assert_eq!(res[1]["reference"], "b");
    assert_eq!(
        res[1]["error"],
        "value does not match the transformation's template"
    );
    assert_eq!(res[2]["reference"], "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_decode_authorization_with_audit() {
    let stack = Stack::start_with(StackOpts {
        auth: auth(),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let root = stack.client();
    setup(&root).await;
    let e = root.with_token(ENCODER);
    let d = root.with_token(DECODER);

    // Values outside FPE domains, unknown roles/transformations, malformed and forged tokens.
    let r = e
        .post(
            "transform/encode/edge",
            json!({"value": "ab@x.io", "transformation": "email-fpe"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().unwrap().contains("too short"), "{:?}", r.body);
    let r = e
        .post(
            "transform/encode/edge",
            json!({"value": "12-34", "transformation": "ssn"}),
        )
        .await;
    assert_eq!(
        r.error(),
        Some("value does not match the transformation's template")
    );
    let r = e.post("transform/encode/edge", json!({"value": "x"})).await;
    assert_eq!(
        r.error(),
        Some("transformation must be given: the role has more than one")
    );
    let r = root
        .post(
            "transform/encode/nope",
            json!({"value": "x", "transformation": "emails"}),
        )
        .await;
    assert_eq!(r.error(), Some("role \"nope\" not found"));
    let tok = enc(&e
        .post(
            "transform/encode/edge",
            json!({"value": "jane@example.com", "transformation": "emails"}),
        )
        .await);
    // The last character changed (to one it is not: a token ending in 'x'
    // once made this "tampered" token the original).
    let last = if tok.ends_with('x') { 'y' } else { 'x' };
    let tampered = format!("{}{last}", &tok[..tok.len() - 1]);
    assert_ne!(tampered, tok);
    for bad in ["tok_notbase58!", "tok_", "no-prefix", &tampered] {
        let r = d
            .post(
                "transform/decode/edge",
                json!({"value": bad, "transformation": "emails"}),
            )
            .await;
        assert_eq!((r.status, r.error()), (400, Some("invalid token")), "{bad}");
    }
    let r = e
        .post(
            "transform/tokenized/edge",
            json!({"value": tok, "transformation": "emails"}),
        )
        .await;
    assert_eq!(r.data("is_tokenized"), true);
    let r = e
        .post(
            "transform/validate/edge",
            json!({"value": "12", "transformation": "ssn"}),
        )
        .await;
    assert_eq!(r.data("valid"), false);
    let r = root
        .post(
            "transform/transformations/tokenization/stored",
            json!({"mapping_mode": "exportable"}),
        )
        .await;
    assert_eq!(r.status, 400);

    // The encoder's token cannot decode: 403, and the attempt is audited.
    let r = e
        .post(
            "transform/decode/edge",
            json!({"value": tok, "transformation": "emails"}),
        )
        .await;
    assert_eq!((r.status, r.error()), (403, Some("permission denied")));
    // The decoder can, and its reason is recorded.
    let r = d
        .post(
            "transform/decode/edge",
            json!({"value": tok, "transformation": "emails", "reason": "fraud case 77"}),
        )
        .await;
    assert_eq!(r.data("decoded_value"), "jane@example.com");

    // The audit log verifies against the enclave's published key…
    let key = root.get("sys/audit-key").await;
    let key = key.data("public_key").as_str().unwrap().to_owned();
    let dir = stack.dir.path().join("audit");
    let trust = verifier::audit::KeyTrust::Bare(hex::decode(&key).unwrap());
    let report = verifier::audit::verify_dir(&dir, &trust, &[]).unwrap();
    assert!(report.ok, "{report:?}");
    let lines: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect();
    let denied = lines
        .iter()
        .find(|l| l["body"]["event"]["kind"] == "denied")
        .expect("denied decode audited");
    assert_eq!(denied["body"]["event"]["caller"], "edge-worker");
    let decode = lines
        .iter()
        .find(|l| {
            l["body"]["event"]["kind"] == "decode"
                && l["body"]["event"]["reason"] == "fraud case 77"
        })
        .expect("decode audited with reason");
    assert_eq!(decode["body"]["event"]["caller"], "support-agent");
    assert_eq!(decode["body"]["event"]["target"], "edge");
    assert!(
        !lines
            .iter()
            .any(|l| l.to_string().contains("jane@example.com")),
        "no plaintext in the audit log"
    );

    // …and any edit, deletion or reordering is reported.
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = std::fs::read_to_string(&file).unwrap();
    let edited = original.replace("fraud case 77", "routine check");
    std::fs::write(&file, &edited).unwrap();
    let r = verifier::audit::verify_dir(&dir, &trust, &[]).unwrap();
    assert!(!r.ok);
    assert!(
        r.streams[0]
            .problems
            .iter()
            .any(|p| p.kind == "edited-record"),
        "{r:?}"
    );
    let mut ls: Vec<&str> = original.lines().collect();
    ls.remove(1);
    std::fs::write(&file, ls.join("\n") + "\n").unwrap();
    let r = verifier::audit::verify_dir(&dir, &trust, &[]).unwrap();
    assert!(
        r.streams[0]
            .problems
            .iter()
            .any(|p| p.kind == "deleted-records"),
        "{r:?}"
    );
    std::fs::write(&file, &original).unwrap();
    let other_key = verifier::audit::KeyTrust::Bare(vec![0; 32]);
    let r = verifier::audit::verify_dir(&dir, &other_key, &[]).unwrap();
    assert!(!r.ok, "a different pinned key is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_documents_round_trip() {
    let stack = Stack::start_with(StackOpts {
        auth: auth(),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let root = stack.client();
    setup(&root).await;
    let e = root.with_token(ENCODER);
    let d = root.with_token(DECODER);
    let doc = json!({
        "event": "login",
        "email": "jane@example.com",
        "ssn": "078-05-1120",
        "user": {"id": 42, "contact": {"email": "jane@work.example", "phone": "+1 (555) 867-5309"}},
        "history": [{"email": "old@example.com"}],
        "amount": 12.5
    });
    let fields = json!({"email": "emails", "ssn": "ssn", "$.user.contact.phone": "phone", "$.user.id": "userid"});
    let r = e
        .post(
            "transform/document/encode/edge",
            json!({"document": doc, "fields": fields}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.data("document").clone();
    assert_eq!(r.data("transformed_fields"), 6);
    assert_eq!(t["event"], "login");
    assert_eq!(t["amount"], 12.5);
    assert!(t["email"].as_str().unwrap().starts_with("tok_"));
    assert!(t["history"][0]["email"]
        .as_str()
        .unwrap()
        .starts_with("tok_"));
    assert!(t["user"]["id"].as_str().unwrap().starts_with("u_"));
    assert_eq!(t["ssn"].as_str().unwrap().len(), 11);
    assert!(!t.to_string().contains("jane@example.com"));
    // Same input, same tokens: joins on tokenized fields still work.
    let again = e
        .post(
            "transform/document/encode/edge",
            json!({"document": doc, "fields": fields}),
        )
        .await;
    assert_eq!(again.data("document"), &t);
    // Authorized reverse gives the original back (numbers come back as strings).
    let back = d
        .post(
            "transform/document/decode/edge",
            json!({"document": t, "fields": fields, "reason": "support"}),
        )
        .await;
    assert_eq!(back.status, 200, "{:?}", back.body);
    let mut expected = doc.clone();
    expected["user"]["id"] = json!("42");
    assert_eq!(back.data("document"), &expected);
    // The encoder cannot reverse; a bad field fails the whole request with its path.
    assert_eq!(
        e.post(
            "transform/document/decode/edge",
            json!({"document": t, "fields": fields})
        )
        .await
        .status,
        403
    );
    let r = e
        .post(
            "transform/document/encode/edge",
            json!({"document": {"ssn": "nope"}, "fields": {"ssn": "ssn"}}),
        )
        .await;
    assert_eq!(
        r.error(),
        Some("field $.ssn: value does not match the transformation's template")
    );
    let r = e
        .post(
            "transform/document/encode/edge",
            json!({"document": {}, "fields": {"$..x": "ssn"}}),
        )
        .await;
    assert_eq!(r.error(), Some("invalid field rule \"$..x\""));
}

/// A low-entropy role: an encoder could invert its deterministic tokens by
/// encoding the whole domain, so every encode is audited and each token gets
/// a per-minute allowance (empty at first, so a restart grants no burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_entropy_roles_rate_limit_and_audit_encoders() {
    // The allowance refills on the enclave's clock: move it instead of sleeping.
    let clock = Arc::new(ManualClock::at(SystemClock.unix()));
    let stack = Stack::start_with(StackOpts {
        auth: auth(),
        clock: Some(clock.clone()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let root = stack.client();
    setup(&root).await;
    // Bad settings are refused.
    for (body, want) in [
        (
            json!({"transformations": ["ssn"], "low_entropy": true, "encode_per_minute": 0}),
            "between 1 and",
        ),
        (
            json!({"transformations": ["ssn"], "encode_per_minute": 10}),
            "only to low_entropy",
        ),
        (
            json!({"transformations": ["ssn"], "low_entropy": "maybe"}),
            "bool",
        ),
    ] {
        let r = root.post("transform/role/edge", body).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(r.error().unwrap().contains(want), "{:?}", r.body);
    }
    let r = root
        .post(
            "transform/role/edge",
            json!({"transformations": ["emails", "ssn"], "low_entropy": true, "encode_per_minute": 120}),
        )
        .await;
    assert_eq!(r.status / 100, 2, "{:?}", r.body);
    let role = root.get("transform/role/edge").await;
    assert_eq!(role.data("low_entropy"), true);
    assert_eq!(role.data("encode_per_minute"), 120);

    let e = root.with_token(ENCODER);
    let ssn = |v: &str| json!({"value": v, "transformation": "ssn", "reason": "signup"});
    // The allowance starts empty and refills at 2 a second.
    let r = e.post("transform/encode/edge", ssn("078-05-1120")).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert!(r.error().unwrap().contains("low-entropy"), "{:?}", r.body);
    clock.advance(std::time::Duration::from_millis(1100));
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..6 {
        let r = e
            .post("transform/encode/edge", ssn(&format!("078-05-11{i:02}")))
            .await;
        match r.status {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("{s}: {:?}", r.body),
        }
    }
    assert!(
        (2..=3).contains(&ok) && limited >= 3,
        "{ok} ok, {limited} limited"
    );
    // Per token: the decoder has its own allowance; batches above the rate
    // never fit.
    let big: Vec<_> = (0..121)
        .map(|i| json!({"value": format!("078-05-{i:04}"), "transformation": "ssn"}))
        .collect();
    let r = root
        .with_token(DECODER)
        .post("transform/encode/edge", json!({"batch_input": big}))
        .await;
    assert_eq!(r.status, 429);
    assert!(r.error().unwrap().contains("at most 120"), "{:?}", r.body);

    // A JSON document is charged per value its rules reach, not per rule.
    clock.advance(std::time::Duration::from_millis(600));
    let many: Vec<String> = (0..50).map(|i| format!("078-05-{i:04}")).collect();
    let r = e
        .post(
            "transform/document/encode/edge",
            json!({"document": {"ssn": many}, "fields": {"ssn": "ssn"}}),
        )
        .await;
    assert_eq!(r.status, 429, "50 values on a 2/s allowance: {:?}", r.body);
    // Another role that reaches the same transformation is no way around it.
    let r = root
        .post("transform/role/side", json!({"transformations": ["ssn"]}))
        .await;
    assert_eq!(r.status / 100, 2, "{:?}", r.body);
    let r = root
        .post(
            "transform/transformations/fpe/ssn",
            json!({"template": "builtin/socialsecuritynumber", "tweak_source": "internal", "allowed_roles": ["edge", "side"]}),
        )
        .await;
    assert_eq!(r.status / 100, 2, "{:?}", r.body);
    let r = root.post("transform/encode/side", ssn("078-05-1199")).await;
    assert_eq!(
        r.status, 429,
        "the transformation is low-entropy: {:?}",
        r.body
    );

    // Every successful encode was audited, with the caller.
    let dir = stack.dir.path().join("audit");
    let trust = verifier::audit::KeyTrust::Unpinned;
    assert!(verifier::audit::verify_dir(&dir, &trust, &[]).unwrap().ok);
    let encodes = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|f| {
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .filter(|l| l["body"]["event"]["kind"] == "encode")
        .collect::<Vec<_>>();
    assert_eq!(encodes.len(), ok, "one record per allowed encode");
    assert!(encodes
        .iter()
        .all(|l| l["body"]["event"]["caller"] == "edge-worker"
            && l["body"]["event"]["reason"] == "signup"
            && l["body"]["event"]["target"] == "edge"));
}
