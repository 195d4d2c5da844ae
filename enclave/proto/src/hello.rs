use crate::{ProtoError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Handshake magic: the first four bytes in each direction.
pub const MAGIC: [u8; 4] = *b"PIIE";
/// Length of both handshake messages.
pub const HELLO_LEN: usize = 8;

/// The connecting side's opening message: the range of versions it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        }
    }
}

/// The accepting side's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloReply {
    Accepted(u16),
    /// Non-zero status; `version` is the acceptor's newest version, for diagnostics.
    Rejected {
        version: u16,
        status: u16,
    },
}

/// Status sent when no common version exists.
pub const STATUS_NO_COMMON_VERSION: u16 = 1;

fn check_magic(b: &[u8; HELLO_LEN]) -> Result<(), ProtoError> {
    let m = [b[0], b[1], b[2], b[3]];
    if m != MAGIC {
        return Err(ProtoError::BadMagic(m));
    }
    Ok(())
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.min_version.to_be_bytes());
        b[6..8].copy_from_slice(&self.max_version.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, ProtoError> {
        check_magic(b)?;
        Ok(Hello {
            min_version: u16::from_be_bytes([b[4], b[5]]),
            max_version: u16::from_be_bytes([b[6], b[7]]),
        })
    }

    /// The acceptor's decision: the highest version both sides speak.
    pub fn negotiate(&self, ours: Hello) -> Result<u16, ProtoError> {
        let hi = self.max_version.min(ours.max_version);
        let lo = self.min_version.max(ours.min_version);
        if hi < lo || self.min_version > self.max_version {
            return Err(ProtoError::NoCommonVersion {
                ours_min: ours.min_version,
                ours_max: ours.max_version,
                theirs_min: self.min_version,
                theirs_max: self.max_version,
            });
        }
        Ok(hi)
    }
}

impl HelloReply {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let (v, s) = match *self {
            HelloReply::Accepted(v) => (v, 0),
            HelloReply::Rejected { version, status } => (version, status),
        };
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&v.to_be_bytes());
        b[6..8].copy_from_slice(&s.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, ProtoError> {
        check_magic(b)?;
        let version = u16::from_be_bytes([b[4], b[5]]);
        let status = u16::from_be_bytes([b[6], b[7]]);
        Ok(if status == 0 {
            HelloReply::Accepted(version)
        } else {
            HelloReply::Rejected { version, status }
        })
    }

    /// What the connecting side does with the answer.
    pub fn into_version(self, ours: Hello) -> Result<u16, ProtoError> {
        match self {
            HelloReply::Accepted(v) if v >= ours.min_version && v <= ours.max_version => Ok(v),
            HelloReply::Accepted(v) => Err(ProtoError::NoCommonVersion {
                ours_min: ours.min_version,
                ours_max: ours.max_version,
                theirs_min: v,
                theirs_max: v,
            }),
            HelloReply::Rejected { status, .. } => Err(ProtoError::Rejected(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_hello() {
        // "PIIE" min=1 max=1
        assert_eq!(hex::encode(Hello::default().encode()), "5049494500010001");
        // "PIIE" chosen=1 status=0
        assert_eq!(
            hex::encode(HelloReply::Accepted(1).encode()),
            "5049494500010000"
        );
    }

    #[test]
    fn negotiation() {
        let ours = Hello {
            min_version: 1,
            max_version: 3,
        };
        assert_eq!(
            Hello {
                min_version: 2,
                max_version: 5
            }
            .negotiate(ours),
            Ok(3)
        );
        assert!(Hello {
            min_version: 4,
            max_version: 5
        }
        .negotiate(ours)
        .is_err());
        assert!(Hello {
            min_version: 3,
            max_version: 2
        }
        .negotiate(ours)
        .is_err());
        assert_eq!(HelloReply::Accepted(2).into_version(ours), Ok(2));
        assert!(HelloReply::Accepted(9).into_version(ours).is_err());
        assert_eq!(
            HelloReply::decode(
                &HelloReply::Rejected {
                    version: 1,
                    status: 1
                }
                .encode()
            ),
            Ok(HelloReply::Rejected {
                version: 1,
                status: 1
            })
        );
    }

    #[test]
    fn bad_magic() {
        let b = *b"HTTP/1.1";
        assert_eq!(Hello::decode(&b), Err(ProtoError::BadMagic(*b"HTTP")));
    }
}
