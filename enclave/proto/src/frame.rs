use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtoError;

/// Bytes of frame header: `len:u32 ‖ kind:u8 ‖ id:u64 ‖ deadline_ms:u32`.
pub const FRAME_HEADER_LEN: usize = 4 + 1 + 8 + 4;
/// The part of the header that `len` counts (everything after `len` itself).
const COUNTED_HEADER: usize = FRAME_HEADER_LEN - 4;
/// No configuration may raise the frame cap above this (64 MiB + header).
pub const HARD_MAX_FRAME_LEN: usize = 64 * 1024 * 1024 + FRAME_HEADER_LEN;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A [`crate::Request`] from the frame's sender; `id` is chosen by the sender.
    Request = 1,
    /// A [`crate::Response`] to the receiver's request `id`.
    Response = 2,
    /// The sender no longer waits for its request `id`; no payload.
    Cancel = 3,
}

impl TryFrom<u8> for FrameKind {
    type Error = ProtoError;
    fn try_from(v: u8) -> Result<Self, ProtoError> {
        match v {
            1 => Ok(FrameKind::Request),
            2 => Ok(FrameKind::Response),
            3 => Ok(FrameKind::Cancel),
            k => Err(ProtoError::UnknownKind(k)),
        }
    }
}

/// One frame. The payload is an undecoded CBOR message (see [`crate::Message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub id: u64,
    /// Relative deadline for requests, in milliseconds from receipt; 0 = none.
    /// Relative because host and enclave clocks are not comparable.
    pub deadline_ms: u32,
    pub payload: Bytes,
}

impl Frame {
    /// Total encoded size of this frame.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }

    /// Append the encoded frame to `dst`, refusing frames larger than `max`.
    pub fn encode(&self, max: usize, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let max = max.min(HARD_MAX_FRAME_LEN);
        let total = self.encoded_len();
        if total > max {
            return Err(ProtoError::FrameTooLarge { len: total, max });
        }
        if self.kind == FrameKind::Cancel && !self.payload.is_empty() {
            return Err(ProtoError::KindMismatch { kind: self.kind });
        }
        dst.reserve(total);
        // total <= HARD_MAX_FRAME_LEN < u32::MAX, so the cast is lossless.
        dst.put_u32((total - 4) as u32);
        dst.put_u8(self.kind as u8);
        dst.put_u64(self.id);
        dst.put_u32(self.deadline_ms);
        dst.put_slice(&self.payload);
        Ok(())
    }
}

/// Incremental frame decoder: feed it bytes, take frames out.
///
/// It never buffers more than one frame's worth beyond `max`: the length is
/// checked as soon as the 4-byte prefix has arrived.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames above `max` bytes in total (header included),
    /// clamped to [`HARD_MAX_FRAME_LEN`].
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max: max.min(HARD_MAX_FRAME_LEN),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// `Ok(None)`: need more bytes. `Ok(Some(frame))`: one frame consumed from
    /// `buf`. `Err`: the stream is corrupt; close the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let counted = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let total = counted.saturating_add(4);
        if total > self.max {
            return Err(ProtoError::FrameTooLarge {
                len: total,
                max: self.max,
            });
        }
        if counted < COUNTED_HEADER {
            return Err(ProtoError::FrameTooShort(counted));
        }
        // The kind byte is checked early so garbage fails before a full frame arrives.
        if buf.len() > 4 {
            FrameKind::try_from(buf[4])?;
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        frame.advance(4);
        let kind = FrameKind::try_from(frame.get_u8())?;
        let id = frame.get_u64();
        let deadline_ms = frame.get_u32();
        let payload = frame.freeze();
        if kind == FrameKind::Cancel && !payload.is_empty() {
            return Err(ProtoError::KindMismatch { kind });
        }
        Ok(Some(Frame {
            kind,
            id,
            deadline_ms,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, id: u64, payload: &[u8]) -> Frame {
        Frame {
            kind,
            id,
            deadline_ms: 1500,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn golden_frame() {
        let mut b = BytesMut::new();
        frame(FrameKind::Request, 7, b"\xf6")
            .encode(1 << 20, &mut b)
            .unwrap();
        // len=14 | kind=1 | id=7 | deadline=1500 | payload=f6 (CBOR null)
        assert_eq!(hex::encode(&b), "0000000e010000000000000007000005dcf6");
    }

    #[test]
    fn split_reads_every_boundary() {
        let mut enc = BytesMut::new();
        let a = frame(FrameKind::Request, 1, b"hello");
        let c = frame(FrameKind::Cancel, 1, b"");
        let r = frame(FrameKind::Response, u64::MAX, &[0u8; 300]);
        for f in [&a, &c, &r] {
            f.encode(1 << 20, &mut enc).unwrap();
        }
        for chunk in 1..enc.len() {
            let mut dec = FrameDecoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut out = vec![];
            for piece in enc.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(
                out,
                vec![a.clone(), c.clone(), r.clone()],
                "chunk size {chunk}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn cap_checked_on_encode_and_decode() {
        let big = frame(FrameKind::Request, 1, &[0u8; 100]);
        let mut b = BytesMut::new();
        assert_eq!(
            big.encode(100, &mut b),
            Err(ProtoError::FrameTooLarge { len: 117, max: 100 })
        );
        assert!(b.is_empty());
        big.encode(1000, &mut b).unwrap();
        // Only the 4-byte prefix is needed to refuse it.
        let mut prefix = BytesMut::from(&b[..4]);
        assert_eq!(
            FrameDecoder::new(100).decode(&mut prefix),
            Err(ProtoError::FrameTooLarge { len: 117, max: 100 })
        );
        // A hostile 4 GiB length is refused without allocating.
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::new(usize::MAX).decode(&mut huge),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected() {
        let mut short = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(
            FrameDecoder::new(1024).decode(&mut short),
            Err(ProtoError::FrameTooShort(3))
        );
        let mut kind = BytesMut::from(&[0, 0, 0, 13, 9][..]);
        assert_eq!(
            FrameDecoder::new(1024).decode(&mut kind),
            Err(ProtoError::UnknownKind(9))
        );
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(FrameDecoder::new(1 << 20).decode(&mut http).is_err());
        let mut cancel_with_payload = BytesMut::new();
        cancel_with_payload.put_u32(14);
        cancel_with_payload.put_u8(3);
        cancel_with_payload.put_u64(1);
        cancel_with_payload.put_u32(0);
        cancel_with_payload.put_u8(0);
        assert_eq!(
            FrameDecoder::new(1024).decode(&mut cancel_with_payload),
            Err(ProtoError::KindMismatch {
                kind: FrameKind::Cancel
            })
        );
    }
}
