//! Transform operations on values: encode, decode, metadata, tidy, validate
//! and tokenized; stored-token lookups and the low-entropy gate.

use serde_json::{json, Value};

use crate::audit::Event;
use crate::error::{Error, Result};
use crate::request::{items, obj, opt_b64, run_items, Item, OnItemError};
use crate::request::{Ctx, Reply};
use pii_engine::b64;
use pii_engine::transform;

fn ttl_of(it: &Item) -> Result<u64> {
    match it.str("ttl") {
        None => Ok(0),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .or_else(|| humantime::parse_duration(&s).ok().map(|d| d.as_secs()))
            .ok_or_else(|| Error::bad(format!("invalid ttl {s:?}"))),
    }
}

pub(super) async fn encode(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(
        ctx,
        &["value", "transformation", "tweak", "ttl", "metadata"],
    )?;
    if !batch && its[0].str("value").is_none() {
        return Err(Error::bad("missing value to encode"));
    }
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let mut uses = std::collections::BTreeMap::new();
    for it in &its {
        if let Ok(t) = st.resolve(role, it.str("transformation").as_deref()) {
            *uses.entry(t.name().to_owned()).or_insert(0) += 1;
        }
    }
    low_entropy_gate(ctx, role, "transform/encode", &uses).await?;
    let now = unix(ctx);
    let entries = std::cell::RefCell::new(Vec::new());
    let reply = run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        if t.is_stored() {
            let (token, entry) =
                t.issue_stored(&value, ttl_of(it)?, it.params.get("metadata"), now)?;
            entries.borrow_mut().push(entry);
            return Ok(obj(json!({ "encoded_value": token })));
        }
        let tweak = opt_b64(it.str("tweak"))?;
        let e = t.encode(&value, tweak.as_deref())?;
        let mut m = obj(json!({ "encoded_value": e.value }));
        if let Some(tw) = e.tweak {
            m.insert("tweak".into(), json!(b64::encode(&tw)));
        }
        Ok(m)
    })?;
    // No token leaves the enclave before its mapping is durably stored.
    let entries = entries.into_inner();
    if !entries.is_empty() {
        ctx.store.token_put(entries).await.map_err(|e| {
            tracing::warn!(error = %e, "token store write failed; no tokens returned");
            Error::new(503, "token store unavailable")
        })?;
    }
    Ok(reply)
}

/// Stored mappings the items refer to, fetched in one round trip. Items whose
/// token fails its own checks (format, MAC, expiry) are not looked up.
async fn fetch_stored(
    ctx: &Ctx<'_>,
    st: &transform::TransformState,
    role: &str,
    its: &[Item],
) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let now = unix(ctx);
    let mut keys = vec![];
    for it in its {
        if let Ok(t) = st.resolve(role, it.str("transformation").as_deref()) {
            if t.is_stored() {
                if let Ok(k) = t.stored_key(&it.str("value").unwrap_or_default(), now) {
                    keys.push(k);
                }
            }
        }
    }
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let found = ctx.store.token_get(keys.clone()).await.map_err(|e| {
        tracing::warn!(error = %e, "token store read failed");
        Error::new(503, "token store unavailable")
    })?;
    Ok(keys
        .into_iter()
        .zip(found)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Resolve one stored token to `(value, metadata)`.
pub(super) fn open_stored(
    t: &transform::Transformation,
    token: &str,
    found: &std::collections::HashMap<String, Vec<u8>>,
    now: u64,
) -> Result<(zeroize::Zeroizing<String>, Value)> {
    let key = t.stored_key(token, now)?;
    let sealed = found
        .get(&key)
        .ok_or_else(|| Error::bad("token not found"))?;
    Ok(t.open_stored(&key, sealed)?)
}

/// The engine's time in Unix seconds, as the token formats count it.
pub(super) fn unix(ctx: &Ctx<'_>) -> u64 {
    u64::try_from(ctx.engine.now()).unwrap_or(0)
}

/// Encodes of low-entropy transformations (any listed by a low-entropy
/// role): take each transformation's count from the caller's per-minute
/// allowance for it (429 when spent) and audit the request before any token
/// is returned. `uses` counts the values each transformation will encode.
pub(super) async fn low_entropy_gate(
    ctx: &mut Ctx<'_>,
    role: &str,
    op: &str,
    uses: &std::collections::BTreeMap<String, usize>,
) -> Result<()> {
    let kr = ctx.engine.current()?;
    let caller = ctx.identity.token_id.clone();
    let mut total = 0;
    for (t, n) in uses {
        let Some(per_minute) = kr.transform.low_entropy_rate(t) else {
            continue;
        };
        if *n > per_minute as usize {
            return Err(Error::new(
                429,
                format!(
                    "transformation {t} is low-entropy: a request may encode at most {per_minute} values"
                ),
            ));
        }
        if !ctx.engine.take_encodes(t, &caller, per_minute, *n as u32) {
            return Err(Error::new(
                429,
                format!(
                    "transformation {t} is low-entropy: this token may encode {per_minute} values \
                     a minute, and has used them"
                ),
            ));
        }
        total += n;
    }
    if total == 0 {
        return Ok(());
    }
    let reason = reason(ctx);
    ctx.audit(Event::encode(op, role, &reason, total)).await
}

pub(super) fn reason(ctx: &mut Ctx<'_>) -> String {
    let r = ctx.str("reason").unwrap_or_default();
    r.chars().take(256).collect()
}

pub(super) async fn decode(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let reason = reason(ctx);
    let (its, batch) = items(ctx, &["value", "transformation", "tweak"])?;
    if !batch && its[0].str("value").is_none() {
        return Err(Error::bad("missing value to decode"));
    }
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    // The audit record is written before any plaintext is returned.
    ctx.audit(Event::decode("transform/decode", role, &reason, its.len()))
        .await?;
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        if t.is_stored() {
            let (v, _) = open_stored(&t, &value, &found, now)?;
            return Ok(obj(json!({ "decoded_value": v.as_str() })));
        }
        let tweak = opt_b64(it.str("tweak"))?;
        let v = t.decode(&value, tweak.as_deref())?;
        Ok(obj(json!({ "decoded_value": v.as_str() })))
    })
}

pub(super) async fn metadata(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        if !t.is_stored() {
            return Err(Error::bad("metadata is kept only for stored tokens"));
        }
        let (_, m) = open_stored(&t, &it.str("value").unwrap_or_default(), &found, now)?;
        Ok(obj(json!({ "metadata": m })))
    })
}

pub(super) async fn tidy(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let deleted = ctx.store.token_tidy(unix(ctx)).await.map_err(|e| {
        tracing::warn!(error = %e, "token store tidy failed");
        Error::new(503, "token store unavailable")
    })?;
    Ok(Reply::Data(json!({ "deleted": deleted })))
}

pub(super) fn validate(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        Ok(obj(
            json!({ "valid": t.validate(&it.str("value").unwrap_or_default()) }),
        ))
    })
}

pub(super) async fn tokenized(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        let yes = if t.is_stored() {
            open_stored(&t, &value, &found, now).is_ok()
        } else {
            t.is_tokenized(&value)?
        };
        Ok(obj(json!({ "is_tokenized": yes })))
    })
}
