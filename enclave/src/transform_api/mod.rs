//! `/v1/transform/…`: the Transform-shaped API over [`pii_engine::transform`].
//!
//! Configuration endpoints (alphabets, templates, transformations, roles)
//! change the sealed keyring through the same compare-and-swap path as
//! Transit keys. Encode/decode/validate/tokenized work per role; decode is
//! authorized by the caller's policy on `transform/decode/<role>` (or
//! `transform/document/decode/<role>`) and recorded in the audit log with the
//! caller and the given `reason`.

use pii_proto::Method;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::request::valid_name;
use crate::request::{unsupported_operation, unsupported_path, Ctx, Reply};
use crate::service::Change;
use pii_engine::transform::{
    self, AlphabetDoc, Kind, RoleDoc, TemplateDoc, TokenEncoding, TransformDoc, TransformationDoc,
    TweakSource, BUILTIN_ALPHABETS, BUILTIN_TEMPLATES,
};

mod codec;
mod document;

use codec::{decode, encode, metadata, tidy, tokenized, validate};
pub use document::check_rule;
use document::document;

pub async fn route(ctx: &mut Ctx<'_>, rest: &[&str]) -> Result<Reply> {
    let m = ctx.method;
    let post = matches!(m, Method::Post | Method::Put);
    match rest {
        ["alphabet"] | ["template"] | ["transformation"] | ["role"] if m == Method::List => {
            list(ctx, rest[0])
        }
        ["alphabet", "builtin", n] if m == Method::Get => builtin_alphabet(n),
        ["template", "builtin", n] if m == Method::Get => builtin_template(n),
        ["alphabet", name] if valid_name(name) => match m {
            _ if post => write_alphabet(ctx, name).await,
            Method::Get => read(ctx, "alphabet", name),
            Method::Delete => delete(ctx, "alphabet", name).await,
            _ => Err(unsupported_operation()),
        },
        ["template", name] if valid_name(name) => match m {
            _ if post => write_template(ctx, name).await,
            Method::Get => read(ctx, "template", name),
            Method::Delete => delete(ctx, "template", name).await,
            _ => Err(unsupported_operation()),
        },
        ["transformations", kind, name] if valid_name(name) && post => {
            write_transformation(ctx, kind, name).await
        }
        ["transformation", name] if valid_name(name) => match m {
            Method::Get => read(ctx, "transformation", name),
            Method::Delete => delete(ctx, "transformation", name).await,
            _ => Err(unsupported_operation()),
        },
        ["role", name] if valid_name(name) => match m {
            _ if post => write_role(ctx, name).await,
            Method::Get => read(ctx, "role", name),
            Method::Delete => delete(ctx, "role", name).await,
            _ => Err(unsupported_operation()),
        },
        ["encode", role] if post => encode(ctx, role).await,
        ["decode", role] if post => decode(ctx, role).await,
        ["validate", role] if post => validate(ctx, role),
        ["tokenized", role] if post => tokenized(ctx, role).await,
        ["metadata", role] if post => metadata(ctx, role).await,
        ["tidy"] if post => tidy(ctx).await,
        ["document", "encode", role] if post => document(ctx, role, false).await,
        ["document", "decode", role] if post => document(ctx, role, true).await,
        _ => Err(unsupported_path()),
    }
}

// ---------------------------------------------------------------------------
// Configuration

fn list(ctx: &mut Ctx<'_>, what: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let d = &kr.transform.doc;
    let mut keys: Vec<String> = match what {
        "alphabet" => d.alphabets.keys().cloned().collect(),
        "template" => d.templates.keys().cloned().collect(),
        "transformation" => d.transformations.keys().cloned().collect(),
        _ => d.roles.keys().cloned().collect(),
    };
    keys.sort();
    if keys.is_empty() {
        return Ok(Reply::NotFound);
    }
    Ok(Reply::Data(json!({ "keys": keys })))
}

fn builtin_alphabet(n: &str) -> Result<Reply> {
    let name = format!("builtin/{n}");
    BUILTIN_ALPHABETS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, a)| Reply::Data(json!({ "name": name, "alphabet": a })))
        .ok_or_else(unsupported_path)
}

fn builtin_template(n: &str) -> Result<Reply> {
    let name = format!("builtin/{n}");
    BUILTIN_TEMPLATES
        .iter()
        .find(|(k, _, _)| *k == name)
        .map(|(_, p, a)| {
            Reply::Data(json!({ "name": name, "type": "regex", "pattern": p, "alphabet": a }))
        })
        .ok_or_else(unsupported_path)
}

fn read(ctx: &mut Ctx<'_>, what: &str, name: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let d = &kr.transform.doc;
    let v = match what {
        "alphabet" => d.alphabets.get(name).map(|a| json!({"name": name, "alphabet": a.alphabet})),
        "template" => d
            .templates
            .get(name)
            .map(|t| json!({"name": name, "type": "regex", "pattern": t.pattern, "alphabet": t.alphabet})),
        "transformation" => d.transformations.get(name).map(|t| transform::transformation_info(name, t)),
        _ => d.roles.get(name).map(|r| {
            let mut v = json!({"name": name, "transformations": r.transformations});
            if r.low_entropy {
                v["low_entropy"] = json!(true);
                v["encode_per_minute"] = json!(r
                    .encode_per_minute
                    .unwrap_or(transform::LOW_ENTROPY_ENCODES_PER_MINUTE));
            }
            v
        }),
    };
    Ok(v.map(Reply::Data).unwrap_or(Reply::NotFound))
}

/// Apply `edit` to the Transform configuration and persist it.
async fn edit(ctx: &mut Ctx<'_>, edit: impl Fn(&mut TransformDoc) -> Result<()>) -> Result<()> {
    ctx.engine
        .mutate(ctx.store, |kr| {
            let mut doc = kr.transform.doc.clone();
            edit(&mut doc)?;
            Ok(Change::Changed(kr.with_transform(doc)?, ()))
        })
        .await
}

async fn delete(ctx: &mut Ctx<'_>, what: &str, name: &str) -> Result<Reply> {
    let (what, name) = (what.to_owned(), name.to_owned());
    edit(ctx, move |d| {
        let in_use = |used: bool, by: &str| -> Result<()> {
            if used {
                return Err(Error::bad(format!("{what} {name:?} is in use by {by}")));
            }
            Ok(())
        };
        match what.as_str() {
            "alphabet" => {
                in_use(
                    d.templates.values().any(|t| t.alphabet == name),
                    "a template",
                )?;
                d.alphabets.remove(&name);
            }
            "template" => {
                in_use(
                    d.transformations.values().any(|t| match &t.kind {
                        Kind::Fpe { template, .. } | Kind::Masking { template, .. } => {
                            *template == name
                        }
                        Kind::Tokenization { .. } => false,
                    }),
                    "a transformation",
                )?;
                d.templates.remove(&name);
            }
            "transformation" => {
                in_use(
                    d.roles.values().any(|r| r.transformations.contains(&name)),
                    "a role",
                )?;
                d.transformations.remove(&name);
            }
            _ => {
                d.roles.remove(&name);
            }
        }
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().map(crate::request::value_to_string).collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => vec![],
    }
}

async fn write_alphabet(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let a = ctx
        .str("alphabet")
        .ok_or_else(|| Error::bad("missing alphabet"))?;
    transform::validate_alphabet(&a.chars().collect::<Vec<_>>())?;
    let n = name.to_owned();
    edit(ctx, move |d| {
        d.alphabets.insert(
            n.clone(),
            AlphabetDoc {
                alphabet: a.clone(),
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

async fn write_template(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let ty = ctx.str("type").unwrap_or_else(|| "regex".into());
    if ty != "regex" {
        return Err(Error::bad(format!(
            "unsupported template type {ty:?}: only \"regex\""
        )));
    }
    let pattern = ctx
        .str("pattern")
        .ok_or_else(|| Error::bad("missing pattern"))?;
    let alphabet = ctx
        .str("alphabet")
        .ok_or_else(|| Error::bad("missing alphabet"))?;
    ctx.seen.extend(["encode_format", "decode_formats"]);
    let n = name.to_owned();
    edit(ctx, move |d| {
        d.templates.insert(
            n.clone(),
            TemplateDoc {
                pattern: pattern.clone(),
                alphabet: alphabet.clone(),
            },
        );
        // Compiling every transformation validates the pattern and alphabet.
        transform::TransformState::from_doc(d.clone()).map(|_| ())?;
        check_template(d, &n)
    })
    .await?;
    Ok(Reply::NoContent)
}

fn check_template(d: &TransformDoc, name: &str) -> Result<()> {
    // Build a throwaway masking transformation to compile the template.
    let mut probe = d.clone();
    probe.transformations.insert(
        "\u{0}probe".into(),
        TransformationDoc {
            kind: Kind::Masking {
                template: name.to_owned(),
                masking_character: '*',
            },
            allowed_roles: vec![],
            key: zeroize::Zeroizing::new(vec![0u8; 32]),
        },
    );
    transform::TransformState::from_doc(probe)?;
    Ok(())
}

async fn write_transformation(ctx: &mut Ctx<'_>, kind: &str, name: &str) -> Result<Reply> {
    let allowed_roles = str_list(ctx.params.get("allowed_roles"));
    ctx.seen.insert("allowed_roles");
    ctx.seen.insert("deletion_allowed");
    let tpl = match (
        ctx.str("template"),
        str_list(ctx.params.get("templates")).first(),
    ) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => Some(t.clone()),
        _ => None,
    };
    ctx.seen.insert("templates");
    let kind = match kind {
        "fpe" => {
            let tweak_source = match ctx.str("tweak_source").as_deref().unwrap_or("supplied") {
                "supplied" => TweakSource::Supplied,
                "generated" => TweakSource::Generated,
                "internal" => TweakSource::Internal,
                other => return Err(Error::bad(format!("invalid tweak_source {other:?}"))),
            };
            Kind::Fpe {
                template: tpl.ok_or_else(|| Error::bad("missing template"))?,
                tweak_source,
            }
        }
        "masking" => {
            let ch = ctx.str("masking_character").unwrap_or_else(|| "*".into());
            let mut chars = ch.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(Error::bad("masking_character must be a single character"));
            };
            Kind::Masking {
                template: tpl.ok_or_else(|| Error::bad("missing template"))?,
                masking_character: c,
            }
        }
        "tokenization" => {
            let convergent = ctx.field_bool("convergent")?.unwrap_or(false);
            let max_ttl = ctx.field_duration("max_ttl")?.unwrap_or(0);
            let stored = match ctx.str("mapping_mode").as_deref() {
                None | Some("deterministic") => None,
                // "default" is Vault's name for stored mappings.
                Some("stored") | Some("default") => Some(transform::StoredOpts { max_ttl, convergent }),
                Some(other) => {
                    return Err(Error::bad(format!(
                        "invalid mapping_mode {other:?}: \"deterministic\" or \"stored\" (exportable mappings are not offered: values never leave the enclave)"
                    )))
                }
            };
            ctx.seen.insert("stores");
            let encoding = match ctx.str("encoding").as_deref().unwrap_or("base58") {
                "base58" => TokenEncoding::Base58,
                "hex" => TokenEncoding::Hex,
                other => {
                    return Err(Error::bad(format!(
                        "invalid encoding {other:?}: base58 or hex"
                    )))
                }
            };
            let prefix = ctx.str("prefix").unwrap_or_else(|| "tok_".into());
            if prefix.len() > 32
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::bad(
                    "prefix must be at most 32 characters of [A-Za-z0-9_-]",
                ));
            }
            Kind::Tokenization {
                prefix,
                encoding,
                stored,
            }
        }
        other => {
            return Err(Error::bad(format!(
                "unknown transformation type {other:?}: fpe, masking or tokenization"
            )))
        }
    };
    let n = name.to_owned();
    let key = transform::new_key()?;
    edit(ctx, move |d| {
        // Updating keeps the existing key: re-keying would orphan every token.
        let key = d
            .transformations
            .get(&n)
            .map(|t| t.key.clone())
            .unwrap_or_else(|| key.clone());
        d.transformations.insert(
            n.clone(),
            TransformationDoc {
                kind: kind.clone(),
                allowed_roles: allowed_roles.clone(),
                key,
            },
        );
        transform::TransformState::from_doc(d.clone())?;
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

async fn write_role(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let ts = str_list(ctx.params.get("transformations"));
    ctx.seen.insert("transformations");
    let low_entropy = ctx.field_bool("low_entropy")?.unwrap_or(false);
    let per_minute = match ctx.field_int("encode_per_minute")? {
        None => None,
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(Error::bad(format!(
                "encode_per_minute must be between 1 and 1000000, not {n}"
            )))
        }
    };
    if per_minute.is_some() && !low_entropy {
        return Err(Error::bad(
            "encode_per_minute applies only to low_entropy roles",
        ));
    }
    let n = name.to_owned();
    edit(ctx, move |d| {
        for t in &ts {
            if !d.transformations.contains_key(t) {
                return Err(Error::bad(format!("transformation {t:?} not found")));
            }
        }
        d.roles.insert(
            n.clone(),
            RoleDoc {
                transformations: ts.clone(),
                low_entropy,
                encode_per_minute: per_minute,
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}
