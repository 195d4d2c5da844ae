//! The two digests every PCR is made of: SHA-384, and the NSM's extend
//! operation from a zero register.

use aws_lc_rs::digest::{Context, SHA384};

/// extend(h) = SHA-384(48 zero bytes ‖ h), as the NSM does from a zero PCR.
pub fn extend(h: &[u8]) -> [u8; 48] {
    let mut c = Context::new(&SHA384);
    c.update(&[0u8; 48]);
    c.update(h);
    let mut out = [0u8; 48];
    out.copy_from_slice(c.finish().as_ref());
    out
}

pub fn sha384(data: &[u8]) -> [u8; 48] {
    let mut out = [0u8; 48];
    out.copy_from_slice(aws_lc_rs::digest::digest(&SHA384, data).as_ref());
    out
}
