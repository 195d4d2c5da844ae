//! The Transit API: Vault's `transit/*` paths, parameters and replies over
//! the engine's operations.

use std::future::Future;
use std::sync::Arc;

use pii_engine::keyring::{Key, KeyDoc, KeyType};
use pii_proto::Method;
use serde_json::{json, Map, Value};

use crate::error::{vault, Error, Result};
use crate::request::{unsupported_operation, unsupported_path, valid_name, Ctx, Reply};
use crate::service::Change;

mod crypto;

use crypto::{datakey, decrypt, encrypt, hash, hmac, random, rewrap, verify};

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
