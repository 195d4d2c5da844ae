//! Pod boot check: ask the running enclave (through the sidecar) for an
//! attestation document bound to a fresh random nonce, and verify it against
//! the expected measurements. Meant for an init container or readiness gate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::attestation::{pem_to_der, verify, Policy, Verified};

/// Why the boot check failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("sidecar unreachable: {0}")]
    Unreachable(String),
    #[error("sidecar answered {0}")]
    Http(String),
    /// The development root the sidecar offers is not PEM.
    #[error("sidecar answered {0}")]
    DevRoot(#[source] crate::attestation::PemError),
    #[error("attestation rejected at {step:?}: {reason}")]
    Rejected {
        step: crate::attestation::Step,
        reason: String,
    },
}

/// Minimal HTTP/1.1 GET against the local sidecar (plain HTTP on loopback).
fn get(
    base: &str,
    path_query: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<u8>, BootError> {
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| {
            BootError::Unreachable(format!("{base}: only http:// sidecar URLs are supported"))
        })?
        .trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map_err(|e| BootError::Unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| BootError::Unreachable(format!("{hostport}: no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| BootError::Unreachable(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let auth = match token {
        Some(t) if !t.bytes().any(|b| b == b'\r' || b == b'\n') => {
            format!("X-Vault-Token: {t}\r\n")
        }
        Some(_) => return Err(BootError::Unreachable("the token has a line break".into())),
        None => String::new(),
    };
    write!(
        s,
        "GET {path_query} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| BootError::Unreachable(e.to_string()))?;
    let mut buf = vec![];
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| BootError::Unreachable(e.to_string()))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| BootError::Http("malformed response".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.lines().next().unwrap_or_default().to_owned();
    if !status.contains(" 200 ") {
        return Err(BootError::Http(status));
    }
    let body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(BootError::Http(
            "chunked responses are not expected from the sidecar".into(),
        ));
    }
    Ok(body)
}

/// Options of one boot check.
pub struct BootCheck {
    pub sidecar: String,
    pub policy_template: Policy,
    /// DANGEROUS: take the root from the sidecar (development NSM only).
    pub dangerous_trust_sidecar_root: bool,
    pub timeout: Duration,
    /// A token whose policy grants `read` on `sys/attestation`.
    pub token: Option<String>,
}

/// Run the check at time `now` (Unix seconds).
pub fn run(check: &BootCheck, now: i64) -> Result<Verified, BootError> {
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| BootError::Unreachable("no randomness".into()))?;
    let q = format!("/v1/attestation?nonce={}", hex::encode(nonce));
    let token = check.token.as_deref();
    let doc = get(&check.sidecar, &q, token, check.timeout)?;
    let mut policy = check.policy_template.clone();
    policy.at = now;
    policy.nonce = Some(nonce.to_vec());
    if check.dangerous_trust_sidecar_root {
        let view = get(
            &check.sidecar,
            &format!("{q}&format=json"),
            token,
            check.timeout,
        )?;
        let v: serde_json::Value =
            serde_json::from_slice(&view).map_err(|e| BootError::Http(e.to_string()))?;
        let pem = v["dangerous_dev_root_pem"]
            .as_str()
            .ok_or_else(|| BootError::Http("the sidecar offers no development root".into()))?;
        let der = pem_to_der(pem).map_err(BootError::DevRoot)?;
        let mut p = Policy::dangerous_with_root(now, der);
        p.expected_pcrs = policy.expected_pcrs.clone();
        p.allow_debug = policy.allow_debug;
        p.nonce = policy.nonce.clone();
        policy = p;
    }
    let v = verify(&doc, &policy).map_err(|e| BootError::Rejected {
        step: e.step(),
        reason: e.to_string(),
    })?;
    // A document made on request carries the enclave's own user_data and no
    // public key; anything else was not made for us.
    let ud = v
        .doc
        .user_data
        .as_deref()
        .map(pii_proto::attest::UserData::decode);
    match ud {
        Some(Ok(u)) if u.purpose == pii_proto::attest::Purpose::Report => {}
        other => {
            return Err(BootError::Rejected {
                step: crate::attestation::Step::Policy,
                reason: format!("user_data is not the enclave's report structure: {other:?}"),
            })
        }
    }
    if v.doc.public_key.is_some() {
        return Err(BootError::Rejected {
            step: crate::attestation::Step::Policy,
            reason: "a report document must not carry a public key".into(),
        });
    }
    Ok(v)
}
