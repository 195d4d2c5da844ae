#![no_main]
//! Arbitrary bytes from the peer: the decoder must return frames, "need more"
//! or an error — never panic, never allocate past the cap — and every frame
//! it returns must re-encode to the bytes it came from.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pii_proto::{FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    // First byte picks a read size so split reads are explored too.
    let (chunk, data) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c).max(1), rest),
        None => return,
    };
    let mut dec = FrameDecoder::new(1 << 16);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut re = BytesMut::new();
                    frame.encode(1 << 16, &mut re).expect("decoded frames re-encode");
                    assert_eq!(&re[..], &data[consumed..consumed + re.len()]);
                    consumed += re.len();
                    if let Ok(msg) = Message::from_frame(&frame) {
                        let f2 = msg.to_frame().expect("decoded messages re-encode");
                        assert_eq!(Message::from_frame(&f2).ok(), Some(msg));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
