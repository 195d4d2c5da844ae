//! Base64 with Go's error reporting.
//!
//! Vault clients see Go's `encoding/base64` errors (`illegal base64 data at
//! input byte N`) and some match on them, so decoding reproduces the offsets Go
//! reports for standard, padded base64: the first illegal character, a padding
//! problem, or a truncated final quantum. CR and LF are skipped as Go does.
//! Encoding uses the `base64` crate.

use base64::Engine as _;

/// Go's `CorruptInputError`: the offset of the first problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptInput(pub usize);

impl std::fmt::Display for CorruptInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "illegal base64 data at input byte {}", self.0)
    }
}

fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Encode with the standard alphabet and padding.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Encode into an existing string.
pub fn encode_to(bytes: &[u8], out: &mut String) {
    base64::engine::general_purpose::STANDARD.encode_string(bytes, out)
}

/// Decode standard padded base64, reporting errors at the offsets Go does.
pub fn decode(s: &str) -> Result<Vec<u8>, CorruptInput> {
    let s = s.as_bytes();
    // Fast path: no line breaks, well-formed. Checked by the strict decoder; on
    // any failure fall through to the slow path that locates the error.
    if let Ok(v) = base64::engine::general_purpose::STANDARD.decode(s) {
        if !s.contains(&b'\n') && !s.contains(&b'\r') {
            return Ok(v);
        }
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut si = 0usize;
    loop {
        let mut quantum = [0u8; 4];
        let mut j = 0usize;
        let mut padded = false;
        while j < 4 {
            if si == s.len() {
                if j == 0 {
                    return Ok(out);
                }
                // A partial final quantum without padding.
                return Err(CorruptInput(si - j));
            }
            let c = s[si];
            si += 1;
            if let Some(v) = value(c) {
                quantum[j] = v;
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(CorruptInput(si - 1));
            }
            // Padding: legal only as the 3rd or 4th character of a quantum.
            match j {
                0 | 1 => return Err(CorruptInput(si - 1)),
                2 => {
                    // Expect a second '=' (after optional line breaks).
                    while si < s.len() && (s[si] == b'\n' || s[si] == b'\r') {
                        si += 1;
                    }
                    if si == s.len() {
                        return Err(CorruptInput(s.len()));
                    }
                    if s[si] != b'=' {
                        return Err(CorruptInput(si - 1));
                    }
                    si += 1;
                }
                _ => {}
            }
            while si < s.len() && (s[si] == b'\n' || s[si] == b'\r') {
                si += 1;
            }
            if si < s.len() {
                // Data after padding.
                return Err(CorruptInput(si));
            }
            padded = true;
            break;
        }
        let n = j;
        let v = (u32::from(quantum[0]) << 18)
            | (u32::from(quantum[1]) << 12)
            | (u32::from(quantum[2]) << 6)
            | u32::from(quantum[3]);
        let b = v.to_be_bytes();
        match n {
            4 => out.extend_from_slice(&b[1..4]),
            3 => out.extend_from_slice(&b[1..3]),
            2 => out.push(b[1]),
            _ => return Err(CorruptInput(si.saturating_sub(1))),
        }
        if padded {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets observed from OpenBao (Go's encoding/base64) for the same inputs.
    #[test]
    fn go_compatible_offsets() {
        assert_eq!(decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode("").unwrap(), b"");
        assert_eq!(decode("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode("not base64!!"), Err(CorruptInput(3)));
        assert_eq!(decode("!!"), Err(CorruptInput(0)));
        assert_eq!(decode("aGVsbG8"), Err(CorruptInput(4)));
        assert_eq!(decode("a"), Err(CorruptInput(0)));
        assert_eq!(decode("aG=="), Ok(b"h".to_vec()));
        assert_eq!(decode("aG="), Err(CorruptInput(3)));
        assert_eq!(decode("a==="), Err(CorruptInput(1)));
        assert_eq!(decode("aGVsbG8=x"), Err(CorruptInput(8)));
        assert_eq!(decode("=abc"), Err(CorruptInput(0)));
        assert_eq!(decode("aG=x"), Err(CorruptInput(2)));
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            proptest::prop_assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = decode(&s);
        }
    }
}
