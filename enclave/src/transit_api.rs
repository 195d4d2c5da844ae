//! The Transit API: Vault's `transit/*` paths, parameters and replies over
//! the engine's operations.

use std::future::Future;
use std::sync::Arc;

use pii_engine::b64;
use pii_engine::error::Versioned;
use pii_engine::keyring::{HmacAlg, Key, KeyDoc, KeyType};
use pii_engine::transit;
use pii_proto::Method;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::auth::Capability;
use crate::error::{vault, Error, Result};
use crate::request::{
    items, obj, opt_b64, run_items, unsupported_operation, unsupported_path, valid_name, Ctx, Item,
    OnItemError, Reply,
};
use crate::service::{key_or_not_found, Change};

// Routing

pub async fn route(ctx: &mut Ctx<'_>, rest: &[&str]) -> Result<Reply> {
    let m = ctx.method;
    let post = matches!(m, Method::Post | Method::Put);
    match rest {
        ["keys"] | ["keys", ""] if m == Method::List => list_keys(ctx),
        ["keys", name] if valid_name(name) => match m {
            Method::Get => read_key(ctx, name),
            Method::Delete => delete_key(ctx, name).await,
            _ if post => create_key(ctx, name).await,
            _ => Err(unsupported_operation()),
        },
        ["keys", name, op] if valid_name(name) && post => match *op {
            "config" => config_key(ctx, name).await,
            "rotate" => rotate_key(ctx, name).await,
            "trim" => trim_key(ctx, name).await,
            _ => Err(unsupported_path()),
        },
        ["encrypt", name] if valid_name(name) => post_only(m, encrypt(ctx, name)).await,
        ["decrypt", name] if valid_name(name) => post_only(m, decrypt(ctx, name)).await,
        ["rewrap", name] if valid_name(name) => post_only(m, rewrap(ctx, name)).await,
        ["datakey", kind, name] if valid_name(name) => post_only(m, datakey(ctx, kind, name)).await,
        ["hmac", name] if valid_name(name) => post_only(m, hmac(ctx, name, None)).await,
        ["hmac", name, alg] if valid_name(name) => post_only(m, hmac(ctx, name, Some(alg))).await,
        ["verify", name] if valid_name(name) => post_only(m, verify(ctx, name, None)).await,
        ["verify", name, alg] if valid_name(name) => {
            post_only(m, verify(ctx, name, Some(alg))).await
        }
        ["random"] => post_only(m, async { random(ctx, None) }).await,
        ["random", a] => post_only(m, async { random(ctx, Some(a)) }).await,
        ["random", _source, a] => post_only(m, async { random(ctx, Some(a)) }).await,
        ["hash"] => post_only(m, async { hash(ctx, None) }).await,
        ["hash", alg] => post_only(m, async { hash(ctx, Some(alg)) }).await,
        _ => Err(unsupported_path()),
    }
}

async fn post_only(m: Method, f: impl Future<Output = Result<Reply>>) -> Result<Reply> {
    if matches!(m, Method::Post | Method::Put) {
        f.await
    } else {
        Err(unsupported_operation())
    }
}

// ---------------------------------------------------------------------------
// Key management

fn key_info(k: &KeyDoc) -> Value {
    let keys: Map<String, Value> = k
        .versions
        .iter()
        .filter(|(v, _)| **v >= k.min_decryption_version)
        .map(|(v, d)| (v.to_string(), json!(d.created)))
        .collect();
    let mut info = json!({
        "allow_plaintext_backup": false,
        "auto_rotate_period": k.auto_rotate_period,
        "deletion_allowed": k.deletion_allowed,
        "derived": k.derived,
        "exportable": false,
        "imported_key": false,
        "keys": keys,
        "latest_version": k.latest_version,
        "min_available_version": k.min_available_version,
        "min_decryption_version": k.min_decryption_version,
        "min_encryption_version": k.min_encryption_version,
        "name": k.name,
        "soft_deleted": false,
        "supports_decryption": true,
        "supports_derivation": true,
        "supports_encryption": true,
        "supports_signing": false,
        "type": k.key_type.name(),
    });
    if k.derived {
        info["convergent_encryption"] = json!(k.convergent);
        info["kdf"] = json!("hkdf_sha256");
        if k.convergent {
            info["convergent_encryption_version"] = json!(-1);
        }
    }
    info
}

fn list_keys(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let keys: Vec<&String> = kr.keys.keys().collect();
    if keys.is_empty() {
        return Ok(Reply::NotFound);
    }
    Ok(Reply::Data(json!({ "keys": keys })))
}

fn read_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    match kr.keys.get(name) {
        Some(k) => Ok(Reply::Data(key_info(&k.doc))),
        None => Ok(Reply::NotFound),
    }
}

/// Options that may create a key (on `keys/:name` and on encrypt's upsert).
struct CreateOpts {
    kt: KeyType,
    derived: bool,
    convergent: bool,
}

fn create_opts(ctx: &mut Ctx<'_>, derived_default: bool) -> Result<CreateOpts> {
    let kt_name = ctx.str("type").unwrap_or_else(|| "aes256-gcm96".into());
    let derived = ctx.field_bool("derived")?.unwrap_or(derived_default);
    let convergent = ctx.field_bool("convergent_encryption")?.unwrap_or(false);
    if ctx.field_bool("exportable")? == Some(true)
        || ctx.field_bool("allow_plaintext_backup")? == Some(true)
    {
        return Err(Error::bad(
            "exportable keys and plaintext backups are not supported: key material never leaves the enclave",
        ));
    }
    let kt = KeyType::parse(&kt_name)
        .ok_or_else(|| Error::bad(format!("unknown key type {kt_name}")))?;
    if convergent && !derived {
        return Err(Error::bad(
            "convergent encryption requires derivation to be enabled",
        ));
    }
    Ok(CreateOpts {
        kt,
        derived,
        convergent,
    })
}

fn new_key(
    name: &str,
    o: &CreateOpts,
    auto_rotate: u64,
    nonces: u64,
    now: i64,
) -> Result<Arc<Key>> {
    let mut doc = KeyDoc::new(name, o.kt, o.derived, o.convergent, now)?;
    doc.auto_rotate_period = auto_rotate;
    doc.reserve_latest(nonces);
    Ok(Arc::new(Key::created(doc)?))
}

fn check_auto_rotate(p: u64) -> Result<()> {
    if p != 0 && p < 3600 {
        return Err(Error::bad(
            "auto rotate period must be 0 to disable or at least an hour",
        ));
    }
    Ok(())
}

async fn create_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let o = create_opts(ctx, false)?;
    let auto = ctx.field_duration("auto_rotate_period")?.unwrap_or(0);
    check_auto_rotate(auto)?;
    ctx.seen.insert("context");
    let info = ctx
        .engine
        .mutate(ctx.store, |kr| match kr.keys.get(name) {
            Some(k) => Ok(Change::Unchanged(key_info(&k.doc))),
            None => {
                let k = new_key(
                    name,
                    &o,
                    auto,
                    ctx.engine.first_nonces(o.convergent),
                    ctx.engine.now(),
                )?;
                let info = key_info(&k.doc);
                Ok(Change::Changed(kr.with_key(name, Some(k)), info))
            }
        })
        .await?;
    Ok(Reply::Data(info))
}

async fn delete_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    ctx.engine
        .mutate(ctx.store, |kr| match kr.keys.get(name) {
            None => Err(Error::bad(format!(
                "error deleting policy {name}: could not delete key; not found"
            ))),
            Some(k) if !k.doc.deletion_allowed => Err(Error::bad(format!(
                "error deleting policy {name}: deletion is not allowed for this key"
            ))),
            Some(_) => Ok(Change::Changed(kr.with_key(name, None), ())),
        })
        .await?;
    Ok(Reply::NoContent)
}

/// Apply an edit to one existing key, persisting it.
async fn edit_key(
    ctx: &mut Ctx<'_>,
    name: &str,
    edit: impl Fn(&mut KeyDoc) -> Result<bool>,
) -> Result<Reply> {
    let info = ctx
        .engine
        .mutate(ctx.store, |kr| {
            let k = kr
                .keys
                .get(name)
                .ok_or_else(|| Error::key_not_found(vault::KEY_NOT_FOUND))?;
            let mut doc = k.doc.clone();
            if !edit(&mut doc)? {
                return Ok(Change::Unchanged(key_info(&k.doc)));
            }
            let info = key_info(&doc);
            Ok(Change::Changed(
                kr.with_key(name, Some(Arc::new(k.successor(doc)?))),
                info,
            ))
        })
        .await?;
    Ok(Reply::Data(info))
}

async fn rotate_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    ctx.seen.insert("managed_key_name");
    ctx.seen.insert("managed_key_id");
    let t = ctx.engine.now();
    let block = ctx.engine.nonce_limits().block;
    edit_key(ctx, name, |d| {
        d.rotate(t)?;
        if !d.convergent {
            d.reserve_latest(block);
        }
        Ok(true)
    })
    .await
}

async fn config_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let min_dec = ctx.field_int("min_decryption_version")?;
    let min_enc = ctx.field_int("min_encryption_version")?;
    let deletion = ctx.field_bool("deletion_allowed")?;
    let auto = ctx.field_duration("auto_rotate_period")?;
    if ctx.field_bool("exportable")? == Some(true)
        || ctx.field_bool("allow_plaintext_backup")? == Some(true)
    {
        return Err(Error::bad(
            "exportable keys and plaintext backups are not supported: key material never leaves the enclave",
        ));
    }
    if let Some(a) = auto {
        check_auto_rotate(a)?;
    }
    edit_key(ctx, name, move |d| {
        let latest = i64::from(d.latest_version);
        let mut dec = i64::from(d.min_decryption_version);
        let mut enc = i64::from(d.min_encryption_version);
        if let Some(v) = min_dec {
            if v > latest {
                return Err(Error::bad(format!(
                    "cannot set min decryption version of {v}, latest key version is {latest}"
                )));
            }
            dec = v.max(1);
            if d.min_available_version > 0 && dec < i64::from(d.min_available_version) {
                return Err(Error::bad("min decryption version should not be less then min available version"));
            }
        }
        if let Some(v) = min_enc {
            if v > latest {
                return Err(Error::bad(format!(
                    "cannot set min encryption version of {v}, latest key version is {latest}"
                )));
            }
            enc = v.max(0);
        }
        if enc != 0 && enc < dec {
            return Err(Error::bad(format!(
                "cannot set min encryption/decryption values; min encryption version of {enc} must be greater than or equal to min decryption version of {dec}"
            )));
        }
        d.min_decryption_version = dec as u32;
        d.min_encryption_version = enc as u32;
        if let Some(b) = deletion {
            d.deletion_allowed = b;
        }
        if let Some(a) = auto {
            d.auto_rotate_period = a;
        }
        Ok(true)
    })
    .await
}

async fn trim_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let Some(min_avail) = ctx.field_int("min_available_version")? else {
        return Err(Error::bad("missing min_available_version"));
    };
    edit_key(ctx, name, move |d| {
        if d.min_encryption_version == 0 {
            return Err(Error::bad(
                "minimum available version cannot be set when minimum encryption version is not set",
            ));
        }
        if min_avail > i64::from(d.min_encryption_version) {
            // (sic) OpenBao's spelling.
            return Err(Error::bad("minimum available version cannot be greater than minmum encryption version"));
        }
        if min_avail > i64::from(d.min_decryption_version) {
            return Err(Error::bad("minimum available version cannot be greater than minmum decryption version"));
        }
        if min_avail < i64::from(d.min_available_version) {
            return Err(Error::bad("minimum available version cannot be decremented"));
        }
        if min_avail < 1 {
            return Err(Error::bad("minimum available version should be positive"));
        }
        let m = min_avail as u32;
        d.versions.retain(|v, _| *v >= m);
        d.min_available_version = m;
        Ok(true)
    })
    .await
}

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

async fn encrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
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

async fn decrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
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

async fn rewrap(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
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

async fn datakey(ctx: &mut Ctx<'_>, kind: &str, name: &str) -> Result<Reply> {
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

async fn hmac(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
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

async fn verify(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
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

fn random(ctx: &mut Ctx<'_>, path_bytes: Option<&str>) -> Result<Reply> {
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

fn hash(ctx: &mut Ctx<'_>, path_alg: Option<&str>) -> Result<Reply> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["pii", "a", "my-key.v2", "x@y", "k_1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "bad name", "a/b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
