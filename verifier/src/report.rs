//! Attestation audit reports: a JSON evidence bundle and a self-contained
//! HTML page (no scripts, no external resources) a person can read.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::attestation::{parse_document_unverified, verify, Policy};

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds. Times RFC 3339 cannot
/// write (before 1970, after 9999) come out as `<secs> (Unix time)`.
pub fn utc(secs: i64) -> String {
    use std::fmt::Write as _;
    let out_of_range = || format!("{secs} (Unix time)");
    let Some(t) = u64::try_from(secs)
        .ok()
        .and_then(|s| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
    else {
        return out_of_range();
    };
    // humantime reports a year past 9999 as a formatting error (which
    // `to_string` would turn into a panic).
    let mut rfc3339 = String::new();
    if write!(rfc3339, "{}", humantime::format_rfc3339_seconds(t)).is_err() {
        return out_of_range();
    }
    // `YYYY-MM-DDTHH:MM:SSZ`
    match rfc3339.strip_suffix('Z').and_then(|s| s.split_once('T')) {
        Some((date, time)) => format!("{date} {time} UTC"),
        None => out_of_range(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Build the evidence bundle for `doc` verified with `policy`.
pub fn evidence(doc: &[u8], policy: &Policy, generated_at: i64) -> Value {
    use base64::Engine as _;
    let result = verify(doc, policy);
    let parsed = parse_document_unverified(doc);
    let (pcrs, module_id, timestamp_ms) = match &parsed {
        Ok(d) => (
            d.pcrs
                .iter()
                .map(|(k, v)| (format!("PCR{k}"), json!(hex::encode(v))))
                .collect::<serde_json::Map<_, _>>(),
            json!(d.module_id),
            json!(d.timestamp_ms),
        ),
        Err(_) => (serde_json::Map::new(), Value::Null, Value::Null),
    };
    let expected: BTreeMap<String, String> = policy
        .expected_pcrs
        .iter()
        .map(|(k, v)| (format!("PCR{k}"), hex::encode(v)))
        .collect();
    let (decision, chain) = match &result {
        Ok(v) => (
            json!({"accepted": true, "debug_mode": v.debug_mode}),
            json!(v.chain),
        ),
        Err(e) => (
            json!({"accepted": false, "step": e.step(), "reason": e.to_string()}),
            json!([]),
        ),
    };
    json!({
        "format": "pii-enclave/attestation-evidence/v1",
        "generated_at": generated_at,
        "verified_at": policy.at,
        "document": {
            "sha256": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, doc).as_ref()),
            "sha384": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, doc).as_ref()),
            "size": doc.len(),
            "base64": base64::engine::general_purpose::STANDARD.encode(doc),
            "module_id": module_id,
            "timestamp_ms": timestamp_ms,
        },
        "pcrs": pcrs,
        "expected_pcrs": expected,
        "allow_debug": policy.allow_debug,
        "decision": decision,
        "chain": chain,
    })
}

/// Render the evidence bundle as a self-contained HTML page.
pub fn html(ev: &Value) -> String {
    let accepted = ev["decision"]["accepted"].as_bool().unwrap_or(false);
    let verdict = if accepted { "Accepted" } else { "Rejected" };
    let mut rows = String::new();
    let pcrs = ev["pcrs"].as_object().cloned().unwrap_or_default();
    let expected = ev["expected_pcrs"].as_object().cloned().unwrap_or_default();
    let mut names: Vec<&String> = pcrs.keys().chain(expected.keys()).collect();
    names.sort_by_key(|n| n.trim_start_matches("PCR").parse::<u32>().unwrap_or(99));
    names.dedup();
    for n in names {
        let actual = pcrs.get(n).and_then(Value::as_str).unwrap_or("(absent)");
        let (exp, status, class) = match expected.get(n).and_then(Value::as_str) {
            None => ("not pinned", "—", "np"),
            Some(e) if e.eq_ignore_ascii_case(actual) => (e, "match", "ok"),
            Some(e) => (e, "MISMATCH", "bad"),
        };
        rows.push_str(&format!(
            "<tr class=\"{class}\"><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{status}</td></tr>\n",
            esc(n),
            esc(exp),
            esc(actual)
        ));
    }
    let mut chain_rows = String::new();
    for (i, c) in ev["chain"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        chain_rows.push_str(&format!(
            "<tr><td>{i}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            esc(c["subject"].as_str().unwrap_or("")),
            utc(c["not_before"].as_i64().unwrap_or(0)),
            utc(c["not_after"].as_i64().unwrap_or(0)),
            esc(c["sha256"].as_str().unwrap_or("")),
        ));
    }
    if chain_rows.is_empty() {
        chain_rows = "<tr><td colspan=\"5\">No verified chain (the document was rejected before or at the chain step).</td></tr>".into();
    }
    let reason = match ev["decision"]["reason"].as_str() {
        Some(r) => format!(
            "<p class=\"reason\">Failed step: <b>{}</b> — {}</p>",
            esc(ev["decision"]["step"].as_str().unwrap_or("")),
            esc(r)
        ),
        None => "<p class=\"reason\">Every step passed: CBOR structure, ES384 header, payload, chain to the pinned root, validity, constraints, COSE signature, policy.</p>".into(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Attestation report — {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1d2430; }}
h1 {{ margin-bottom: .2rem; }} .verdict {{ font-size: 1.4rem; padding: .4rem .8rem; display: inline-block; border-radius: 4px; }}
.Accepted {{ background: #d9f2e1; color: #0b5d29; }} .Rejected {{ background: #fde0dc; color: #8a1c0f; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: .85rem; }} td, th {{ border: 1px solid #c9ced6; padding: .3rem .5rem; text-align: left; vertical-align: top; }}
th {{ background: #eef1f5; }} code {{ word-break: break-all; font-size: .75rem; }}
tr.bad td {{ background: #fde0dc; }} tr.ok td:last-child {{ color: #0b5d29; font-weight: bold; }} tr.np td {{ color: #6b7280; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }} dt {{ font-weight: bold; }}
</style></head>
<body>
<h1>Nitro attestation report</h1>
<div class="verdict {verdict}" id="verdict">{verdict}</div>
{reason}
<h2>Document</h2>
<dl>
<dt>Module</dt><dd>{module}</dd>
<dt>Document time</dt><dd>{doc_time}</dd>
<dt>Verified at</dt><dd>{at}</dd>
<dt>SHA-384</dt><dd><code>{sha384}</code></dd>
<dt>Debug documents allowed</dt><dd>{debug}</dd>
</dl>
<h2>Measurements</h2>
<table id="pcrs"><tr><th>PCR</th><th>Expected</th><th>In the document</th><th>Result</th></tr>
{rows}</table>
<h2>Certificate chain (root first)</h2>
<table id="chain"><tr><th>#</th><th>Subject</th><th>Not before</th><th>Not after</th><th>SHA-256</th></tr>
{chain_rows}</table>
<p>Generated {generated} by pii-enclave verifier. The evidence bundle (evidence.json) holds the raw document.</p>
</body></html>
"#,
        module = esc(ev["document"]["module_id"].as_str().unwrap_or("(unparsed)")),
        doc_time = ev["document"]["timestamp_ms"]
            .as_i64()
            .map(|t| utc(t / 1000))
            .unwrap_or_else(|| "(unparsed)".into()),
        at = utc(ev["verified_at"].as_i64().unwrap_or(0)),
        sha384 = esc(ev["document"]["sha384"].as_str().unwrap_or("")),
        debug = ev["allow_debug"].as_bool().unwrap_or(false),
        generated = utc(ev["generated_at"].as_i64().unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_736_179_625), "2025-01-06 16:07:05 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(253_402_300_799), "9999-12-31 23:59:59 UTC");
        assert_eq!(utc(253_402_300_800), "253402300800 (Unix time)");
        assert_eq!(utc(-1), "-1 (Unix time)");
        assert_eq!(utc(i64::MIN), format!("{} (Unix time)", i64::MIN));
        assert_eq!(utc(i64::MAX), format!("{} (Unix time)", i64::MAX));
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
