//! Golden vectors and property tests for the message layer.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use bytes::BytesMut;
use pii_proto::*;
use proptest::prelude::*;

fn encode(m: &Message) -> Vec<u8> {
    let mut b = BytesMut::new();
    m.to_frame()
        .unwrap()
        .encode(HARD_MAX_FRAME_LEN, &mut b)
        .unwrap();
    b.to_vec()
}

fn decode(bytes: &[u8]) -> Result<Option<Message>, ProtoError> {
    let mut buf = BytesMut::from(bytes);
    match FrameDecoder::new(HARD_MAX_FRAME_LEN).decode(&mut buf)? {
        None => Ok(None),
        Some(f) => Message::from_frame(&f).map(Some),
    }
}

/// Golden vectors: these bytes are the protocol. Changing them is a protocol
/// version bump (docs/protocol.md lists the same vectors).
#[test]
fn golden_messages() {
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Request { id: 1, deadline_ms: 0, request: Request::Ping },
            // len=18 kind=1 id=1 deadline=0 | "ping"
            "00000012010000000000000001000000006470696e67",
        ),
        (
            Message::Response { id: 1, response: Response::Pong },
            "000000120200000000000000010000000064706f6e67",
        ),
        (Message::Cancel { id: 9 }, "0000000d03000000000000000900000000"),
        (
            Message::Request {
                id: 2,
                deadline_ms: 5000,
                request: Request::Api(ApiRequest {
                    method: Method::Post,
                    path: "transit/encrypt/pii".into(),
                    query: String::new(),
                    token: Some("t".into()),
                    body: b"{}".to_vec(),
                }),
            },
            // {"api": {"method":"post","path":"transit/encrypt/pii","query":"","token":"t","body":h'7b7d'}}
            "0000004f01000000000000000200001388 a1 63617069 a5 666d6574686f64 64706f7374 6470617468 73 7472616e7369742f656e63727970742f706969 657175657279 60 65746f6b656e 6174 64626f6479 42 7b7d",
        ),
        (
            Message::Response { id: 3, response: Response::Error(ErrorCode::Unavailable) },
            // {"error": "unavailable"}
            "0000002002000000000000000300000000a1656572726f726b756e617661696c61626c65",
        ),
    ];
    for (msg, hex_) in cases {
        let got = hex::encode(encode(&msg));
        let want: String = hex_.split_whitespace().collect();
        assert_eq!(got, want, "{msg:?}");
        assert_eq!(decode(&hex::decode(&want).unwrap()).unwrap(), Some(msg));
    }
}

#[test]
fn trailing_bytes_in_payload_rejected() {
    // A Ping frame whose CBOR payload has one extra byte (len 19 instead of 18).
    let bytes = hex::decode("00000013010000000000000001000000006470696e6700").unwrap();
    assert_eq!(decode(&bytes), Err(ProtoError::TrailingBytes(1)));
}

#[test]
fn unknown_variant_rejected() {
    // {"launch_missiles": null} is not a Request.
    let payload = hex::decode("a16f6c61756e63685f6d697373696c6573f6").unwrap();
    let f = Frame {
        kind: FrameKind::Request,
        id: 1,
        deadline_ms: 0,
        payload: payload.into(),
    };
    assert!(matches!(
        Message::from_frame(&f),
        Err(ProtoError::BadMessage(_))
    ));
}

fn arb_method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Get),
        Just(Method::Put),
        Just(Method::Post),
        Just(Method::Delete),
        Just(Method::List)
    ]
}

fn arb_blob() -> impl Strategy<Value = SealedBlob> {
    (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256))
        .prop_map(|(version, bytes)| SealedBlob { version, bytes })
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Status),
        Just(Request::KeyringLoad),
        any::<u64>().prop_map(|version| Request::KeyringChanged { version }),
        (any::<u64>(), arb_blob())
            .prop_map(|(expected, blob)| Request::KeyringStore { expected, blob }),
        (
            arb_method(),
            ".*",
            ".*",
            proptest::option::of(".*"),
            proptest::collection::vec(any::<u8>(), 0..512)
        )
            .prop_map(
                |(method, path, query, token, body)| Request::Api(ApiRequest {
                    method,
                    path,
                    query,
                    token,
                    body
                })
            ),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Pong),
        Just(Response::Ack),
        Just(Response::Error(ErrorCode::Internal)),
        Just(Response::Error(ErrorCode::Conflict)),
        any::<u64>().prop_map(|version| Response::Stored { version }),
        proptest::option::of(arb_blob()).prop_map(Response::Keyring),
        arb_blob().prop_map(Response::Conflict),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(
            |(status, body)| Response::Api(ApiResponse {
                status,
                body,
                headers: vec![("X-Pii-Audit-Receipt".into(), "r".into())],
            })
        ),
        (any::<u64>(), ".*", proptest::option::of(".*")).prop_map(|(v, s, e)| Response::Status(
            EnclaveStatus {
                seal: SealState::Sealed,
                seal_backend: s.clone(),
                rollback_detected: e.clone(),
                anchor_error: e.clone(),
                seal_error: e,
                keyring_version: v,
                enclave_version: s.clone(),
                nonce_usage: vec![pii_proto::NonceUsage {
                    key: s,
                    version: 1,
                    encryptions: v
                }],
            }
        )),
    ]
}

proptest! {
    #[test]
    fn request_roundtrip(id in any::<u64>(), deadline_ms in any::<u32>(), request in arb_request()) {
        let m = Message::Request { id, deadline_ms, request };
        prop_assert_eq!(decode(&encode(&m)).unwrap(), Some(m));
    }

    #[test]
    fn response_roundtrip(id in any::<u64>(), response in arb_response()) {
        let m = Message::Response { id, response };
        prop_assert_eq!(decode(&encode(&m)).unwrap(), Some(m));
    }

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes
    /// to the same bytes it came from.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(f)) = FrameDecoder::new(1 << 16).decode(&mut buf) {
            let mut re = BytesMut::new();
            f.encode(1 << 16, &mut re).unwrap();
            prop_assert_eq!(&re[..], &bytes[..f.encoded_len()]);
            let _ = Message::from_frame(&f);
        }
    }
}
