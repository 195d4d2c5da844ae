//! Transit operations with a key: encrypt, decrypt, rewrap and data keys
//! (with their random-nonce budget), HMAC and verify, and the keyless random
//! bytes and hash endpoints.

use std::sync::Arc;

use pii_engine::b64;
use pii_engine::error::Versioned;
use pii_engine::keyring::{HmacAlg, Key};
use pii_engine::transit;
use serde_json::json;
use zeroize::Zeroizing;

use super::{create_opts, new_key};
use crate::auth::Capability;
use crate::error::{Error, Result};
use crate::request::{
    items, obj, opt_b64, run_items, unsupported_path, Ctx, Item, OnItemError, Reply,
};
use crate::service::{key_or_not_found, Change};

// ---------------------------------------------------------------------------
// Encrypt / decrypt / rewrap

/// Take the random nonces `items` will draw from `key`'s budget, per
/// requested version (items whose version is invalid fail on their own).
async fn take_item_nonces(
    ctx: &Ctx<'_>,
    name: &str,
    mut key: Arc<Key>,
    items: &[Item],
) -> Result<Arc<Key>> {
    // Until the key stays the same: a take may return a newer key (another
    // request rotated it), and items must be charged to the versions they
    // will really use. Extra rounds only over-count.
    if key.doc.convergent {
        return Ok(key);
    }
    for _ in 0..crate::service::MAX_CAS_ATTEMPTS {
        let mut demand: std::collections::BTreeMap<Option<u32>, u64> = Default::default();
        for it in items {
            let Ok(requested) = it.int("key_version") else {
                continue;
            };
            if transit::encryption_version(&key.doc, requested).is_err() {
                continue;
            }
            let v = requested.filter(|v| *v != 0).map(|v| v as u32);
            *demand.entry(v).or_default() += 1;
        }
        let before = (key.doc.latest_version, key.doc.min_encryption_version);
        for (v, n) in demand {
            key = ctx.engine.take_nonces(ctx.store, name, key, v, n).await?;
        }
        // The same versions resolve as when the demand was counted.
        if before == (key.doc.latest_version, key.doc.min_encryption_version) {
            return Ok(key);
        }
    }
    Err(Error::new(503, "the key kept changing; retry"))
}

pub(super) async fn encrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(
        ctx,
        &["plaintext", "context", "key_version", "associated_data"],
    )?;
    if !batch && items[0].str("plaintext").is_none() {
        return Err(Error::bad("missing plaintext to encrypt"));
    }
    // Vault requires context in every item or in none.
    let with_ctx = items
        .iter()
        .filter(|i| i.str("context").is_some_and(|c| !c.is_empty()))
        .count();
    if with_ctx != 0 && with_ctx != items.len() {
        return Err(Error::bad(
            "context should be set either in all the request blocks or in none",
        ));
    }
    let kr = ctx.engine.current()?;
    let key = match kr.keys.get(name) {
        Some(k) => {
            ctx.seen
                .extend(["type", "convergent_encryption", "derived"]);
            k.clone()
        }
        None => {
            // Upsert, as Vault does: needs the `create` capability.
            if !ctx.allowed(Capability::Create) {
                return Err(Error::denied());
            }
            let o = create_opts(ctx, with_ctx > 0)?;
            let n = name.to_owned();
            ctx.engine
                .mutate(ctx.store, |kr| match kr.keys.get(&n) {
                    Some(k) => Ok(Change::Unchanged(k.clone())),
                    None => {
                        let k = new_key(
                            &n,
                            &o,
                            0,
                            ctx.engine.first_nonces(o.convergent),
                            ctx.engine.now(),
                        )?;
                        Ok(Change::Changed(kr.with_key(&n, Some(k.clone())), k))
                    }
                })
                .await?
        }
    };
    let key = take_item_nonces(ctx, name, key, &items).await?;
    run_items(ctx, &items, batch, OnItemError::Status400, &[], |it| {
        let pt = Zeroizing::new(crate::request::decode_b64(
            &it.str("plaintext").unwrap_or_default(),
        )?);
        let context = opt_b64(it.str("context"))?;
        let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
        let ver = transit::encryption_version(&key.doc, it.int("key_version")?)?;
        let ct = transit::encrypt(&key, ver, &pt, context.as_deref(), &ad)?;
        Ok(obj(json!({"ciphertext": ct, "key_version": ver})))
    })
}

pub(super) async fn decrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(ctx, &["ciphertext", "context", "associated_data"])?;
    if !batch && items[0].str("ciphertext").is_none() {
        return Err(Error::bad("missing ciphertext to decrypt"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    ctx.seen.insert("reason");
    let reason = ctx.str("reason").unwrap_or_default();
    // The audit record is stored before any plaintext is returned.
    ctx.audit(crate::audit::Event::decrypt(
        "transit/decrypt",
        name,
        &reason,
        items.len(),
    ))
    .await?;
    // Failed decrypt items carry an empty plaintext, as OpenBao's do.
    let on_error = [("plaintext", json!(""))];
    run_items(
        ctx,
        &items,
        batch,
        OnItemError::Status400,
        &on_error,
        |it| {
            let ct = it.str("ciphertext").unwrap_or_default();
            let context = opt_b64(it.str("context"))?;
            let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
            let pt = transit::decrypt(&key, &ct, context.as_deref(), &ad)?;
            Ok(obj(json!({"plaintext": b64::encode(&pt)})))
        },
    )
}

pub(super) async fn rewrap(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(
        ctx,
        &["ciphertext", "context", "key_version", "associated_data"],
    )?;
    if !batch && items[0].str("ciphertext").is_none() {
        return Err(Error::bad("missing ciphertext to decrypt"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    let key = take_item_nonces(ctx, name, key, &items).await?;
    // OpenBao answers 200 for rewrap batches with failed items.
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        let ct = it.str("ciphertext").unwrap_or_default();
        let context = opt_b64(it.str("context"))?;
        let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
        let pt = transit::decrypt(&key, &ct, context.as_deref(), &ad)?;
        let ver = transit::encryption_version(&key.doc, it.int("key_version")?)?;
        let ct = transit::encrypt(&key, ver, &pt, context.as_deref(), &ad)?;
        Ok(obj(json!({"ciphertext": ct, "key_version": ver})))
    })
}

pub(super) async fn datakey(ctx: &mut Ctx<'_>, kind: &str, name: &str) -> Result<Reply> {
    let with_plaintext = match kind {
        "plaintext" => true,
        "wrapped" => false,
        _ => return Err(Error::bad("Invalid path, must be 'plaintext' or 'wrapped'")),
    };
    let context = opt_b64(ctx.str("context"))?;
    let ad = opt_b64(ctx.str("associated_data"))?.unwrap_or_default();
    ctx.seen.insert("nonce");
    let bits = ctx.int("bits")?.unwrap_or(256);
    let requested = ctx.int("key_version")?;
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    let n = match bits {
        128 => 16,
        256 => 32,
        512 => 64,
        _ => return Err(Error::bad("invalid bit length")),
    };
    transit::encryption_version(&key.doc, requested)?;
    let explicit = requested.filter(|v| *v != 0).map(|v| v as u32);
    let key = ctx
        .engine
        .take_nonces(ctx.store, name, key, explicit, 1)
        .await?;
    let ver = transit::encryption_version(&key.doc, requested)?;
    let mut dk = Zeroizing::new(vec![0u8; n]);
    pii_engine::keyring::random(&mut dk)?;
    let ct = transit::encrypt(&key, ver, &dk, context.as_deref(), &ad)?;
    let mut data = json!({"ciphertext": ct, "key_version": ver});
    if with_plaintext {
        data["plaintext"] = json!(b64::encode(&dk));
    }
    Ok(Reply::Data(data))
}

// ---------------------------------------------------------------------------
// HMAC / verify / random / hash

fn hmac_alg(ctx: &mut Ctx<'_>, path_alg: Option<&str>) -> Result<HmacAlg> {
    let param = ctx.str("algorithm");
    let name = path_alg
        .map(str::to_owned)
        .or(param)
        .unwrap_or_else(|| "sha2-256".into());
    // (sic) OpenBao prints the unsupported name this way.
    HmacAlg::parse(&name).ok_or_else(|| Error::bad("unsupported algorithm '\\x00'"))
}

pub(super) async fn hmac(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
    let alg = hmac_alg(ctx, path_alg)?;
    let (items, batch) = items(ctx, &["input", "key_version"])?;
    if !batch && items[0].str("input").is_none() {
        return Err(Error::bad("missing input for HMAC"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        let ver = match it.int("key_version")? {
            None | Some(0) => key.doc.latest_version,
            Some(v) if v > i64::from(key.doc.latest_version) || v < 0 => {
                return Err(Error::bad(format!(
                    "key version does not exist; latest key version is {}",
                    key.doc.latest_version
                )))
            }
            Some(v) => v as u32,
        };
        let input = b64::decode(&it.str("input").unwrap_or_default())
            .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
        let vk = key.version(ver).ok_or_else(|| {
            Error::bad("ciphertext or signature version is disallowed by policy (too old)")
        })?;
        let mut out = format!("vault:v{ver}:");
        b64::encode_to(&vk.hmac(alg, &input), &mut out);
        Ok(obj(json!({ "hmac": out })))
    })
}

pub(super) async fn verify(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
    let alg = hmac_alg(ctx, path_alg)?;
    let (items, batch) = items(ctx, &["input", "hmac", "signature"])?;
    if !batch {
        if items[0].str("input").is_none() {
            return Err(Error::bad("missing input to verify"));
        }
        if items[0].str("hmac").is_none() && items[0].str("signature").is_none() {
            return Err(Error::bad(
                "neither a 'signature' nor an 'hmac' were given to verify",
            ));
        }
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        if it.str("signature").is_some() {
            return Err(Error::bad(format!(
                "key type {} does not support signing",
                key.doc.key_type.name()
            )));
        }
        let h = it.str("hmac").ok_or_else(|| {
            Error::bad("neither a 'signature' nor an 'hmac' were given to verify")
        })?;
        let input = b64::decode(&it.str("input").unwrap_or_default())
            .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
        let (ver, payload) = transit::parse_versioned(&key.doc, &h, Versioned::Hmac)?;
        let valid = match (b64::decode(payload), key.version(ver)) {
            (Ok(given), Some(vk)) => {
                let expected = vk.hmac(alg, &input);
                aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &given).is_ok()
            }
            _ => false,
        };
        Ok(obj(json!({ "valid": valid })))
    })
}

fn format_param(ctx: &mut Ctx<'_>, quoted: bool) -> Result<bool> {
    let f = ctx
        .str("format")
        .unwrap_or_else(|| if quoted { "base64" } else { "hex" }.into());
    match f.as_str() {
        "hex" => Ok(true),
        "base64" => Ok(false),
        other if quoted => Err(Error::bad(format!(
            "unsupported encoding format \"{other}\"; must be \"hex\" or \"base64\""
        ))),
        other => Err(Error::bad(format!(
            "unsupported encoding format {other}; must be \"hex\" or \"base64\""
        ))),
    }
}

pub(super) fn random(ctx: &mut Ctx<'_>, path_bytes: Option<&str>) -> Result<Reply> {
    ctx.seen.insert("source");
    let bytes = match path_bytes {
        Some(b) if b.parse::<i64>().is_ok() => b.parse::<i64>().unwrap_or(32),
        // `random/:source` (platform, seal, all): all are the enclave's RNG.
        Some("platform" | "seal" | "all") => ctx.int("bytes")?.unwrap_or(32),
        Some(_) => return Err(unsupported_path()),
        None => ctx.int("bytes")?.unwrap_or(32),
    };
    ctx.seen.insert("bytes");
    let hex_out = format_param(ctx, true)?;
    if bytes < 1 {
        return Err(Error::bad("'bytes' cannot be less than 1"));
    }
    if bytes > 128 * 1024 {
        return Err(Error::bad("'bytes' should be less than 131072"));
    }
    let mut buf = vec![0u8; bytes as usize];
    pii_engine::keyring::random(&mut buf)?;
    let s = if hex_out {
        hex::encode(&buf)
    } else {
        b64::encode(&buf)
    };
    Ok(Reply::Data(json!({ "random_bytes": s })))
}

pub(super) fn hash(ctx: &mut Ctx<'_>, path_alg: Option<&str>) -> Result<Reply> {
    use aws_lc_rs::digest;
    let input = ctx.str("input");
    let param_alg = ctx.str("algorithm");
    let alg_name = path_alg
        .map(str::to_owned)
        .or(param_alg)
        .unwrap_or_else(|| "sha2-256".into());
    let hex_out = format_param(ctx, false)?;
    let Some(input) = input else {
        return Err(Error::bad("input missing"));
    };
    let alg = match alg_name.as_str() {
        "sha2-224" => &digest::SHA224,
        "sha2-256" => &digest::SHA256,
        "sha2-384" => &digest::SHA384,
        "sha2-512" => &digest::SHA512,
        "sha2-512/256" => &digest::SHA512_256,
        "sha3-256" => &digest::SHA3_256,
        "sha3-384" => &digest::SHA3_384,
        "sha3-512" => &digest::SHA3_512,
        other => return Err(Error::bad(format!("unsupported algorithm {other}"))),
    };
    let data = b64::decode(&input)
        .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
    let d = digest::digest(alg, &data);
    let s = if hex_out {
        hex::encode(d.as_ref())
    } else {
        b64::encode(d.as_ref())
    };
    Ok(Reply::Data(json!({ "sum": s })))
}
