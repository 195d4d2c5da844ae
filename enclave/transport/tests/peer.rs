//! Both ends of a connection, in memory and over a real Unix socket.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use pii_proto::{ApiRequest, ApiResponse, ErrorCode, Method, Request, Response};
use pii_transport::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Echo;
impl Handler for Echo {
    async fn handle(&self, request: Request, _peer: Peer) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::Api(a) if a.path == "sleep" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Response::Pong
            }
            Request::Api(a) if a.path == "big" => Response::Api(ApiResponse {
                status: 200,
                body: vec![0u8; 2 << 20],
                headers: vec![],
            }),
            Request::Api(a) => Response::Api(ApiResponse {
                status: 200,
                body: a.body,
                headers: vec![],
            }),
            _ => Response::Error(ErrorCode::BadRequest),
        }
    }
}

fn api(path: &str, body: Vec<u8>) -> Request {
    Request::Api(ApiRequest {
        method: Method::Post,
        path: path.into(),
        query: String::new(),
        token: None,
        body,
    })
}

fn cfg(name: &str) -> PeerConfig {
    PeerConfig {
        max_frame: 1 << 20,
        name: name.into(),
        ..PeerConfig::default()
    }
}

async fn pair() -> (Peer, Peer) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut a, mut b): (BoxIo, BoxIo) = (Box::new(a), Box::new(b));
    let (va, vb) = tokio::join!(
        handshake_client(&mut a, Duration::from_secs(1)),
        handshake_server(&mut b, Duration::from_secs(1))
    );
    assert_eq!((va.unwrap(), vb.unwrap()), (1, 1));
    (
        Peer::start(a, Arc::new(Echo), cfg("client")),
        Peer::start(b, Arc::new(Echo), cfg("server")),
    )
}

#[tokio::test]
async fn many_requests_in_flight_both_directions() {
    let (client, server) = pair().await;
    let mut tasks = vec![];
    for i in 0..500u32 {
        let (c, s) = (client.clone(), server.clone());
        tasks.push(tokio::spawn(async move {
            let body = i.to_be_bytes().to_vec();
            let r = c
                .call(api("echo", body.clone()), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                r,
                Response::Api(ApiResponse {
                    status: 200,
                    body,
                    headers: vec![]
                })
            );
            assert_eq!(
                s.call(Request::Ping, Duration::from_secs(5)).await.unwrap(),
                Response::Pong
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(client.pending(), 0);
}

#[tokio::test]
async fn deadline_is_enforced_and_other_calls_continue() {
    let (client, _server) = pair().await;
    let slow = client.call(api("sleep", vec![]), Duration::from_millis(50));
    let fast = client.call(Request::Ping, Duration::from_secs(5));
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(slow, Err(CallError::Timeout(Duration::from_millis(50))));
    assert_eq!(fast, Ok(Response::Pong));
    assert_eq!(client.pending(), 0);
}

#[tokio::test]
async fn oversized_request_refused_locally_and_response_replaced() {
    let (client, _server) = pair().await;
    let r = client
        .call(api("echo", vec![0u8; 2 << 20]), Duration::from_secs(5))
        .await;
    assert!(matches!(
        r,
        Err(CallError::Encode(
            pii_proto::ProtoError::FrameTooLarge { .. }
        ))
    ));
    // The server's answer would exceed the cap: it sends TooLarge instead.
    let r = client
        .call(api("big", vec![]), Duration::from_secs(5))
        .await;
    assert_eq!(r, Ok(Response::Error(ErrorCode::TooLarge)));
    // The connection is still usable.
    assert_eq!(
        client.call(Request::Ping, Duration::from_secs(5)).await,
        Ok(Response::Pong)
    );
}

#[tokio::test]
async fn peer_death_fails_in_flight_calls_fast() {
    let (client, server) = pair().await;
    let c = client.clone();
    let waiting =
        tokio::spawn(async move { c.call(api("sleep", vec![]), Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = std::time::Instant::now();
    server.shutdown();
    drop(server);
    let r = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, Err(CallError::Closed));
    assert!(t0.elapsed() < Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .unwrap();
    assert_eq!(
        client.call(Request::Ping, Duration::from_secs(1)).await,
        Err(CallError::Closed)
    );
}

#[tokio::test]
async fn garbage_on_a_unix_socket_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let addr = Addr::Unix(dir.path().join("e.sock"));
    let listener = Listener::bind(&addr).unwrap();
    let server = tokio::spawn(async move {
        let mut results = vec![];
        for _ in 0..3 {
            let (mut io, _) = listener.accept().await.unwrap();
            match handshake_server(&mut io, Duration::from_secs(1)).await {
                Err(e) => results.push(format!("handshake: {e}")),
                Ok(_) => {
                    let p = Peer::start(io, Arc::new(Echo), cfg("server"));
                    tokio::time::timeout(Duration::from_secs(5), p.closed())
                        .await
                        .unwrap();
                    results.push("closed".to_string());
                }
            }
        }
        results
    });
    // 1: an HTTP request instead of the handshake.
    let mut s = tokio::net::UnixStream::connect(dir.path().join("e.sock"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    // 2: a valid handshake followed by a frame claiming 4 GiB.
    let mut s2: BoxIo = connect(&addr).await.unwrap();
    handshake_client(&mut s2, Duration::from_secs(1))
        .await
        .unwrap();
    s2.write_all(&[0xff, 0xff, 0xff, 0xff, 1]).await.unwrap();
    let mut rest = vec![];
    let n = tokio::time::timeout(Duration::from_secs(5), s2.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "server closes without answering");
    // 3: a valid handshake, then an undecodable request (answered), then an unknown frame kind.
    let mut s3: BoxIo = connect(&addr).await.unwrap();
    handshake_client(&mut s3, Duration::from_secs(1))
        .await
        .unwrap();
    s3.write_all(&[0, 0, 0, 14, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0xff])
        .await
        .unwrap();
    let mut answer = [0u8; 17];
    s3.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        &answer[4..13],
        &[2, 0, 0, 0, 0, 0, 0, 0, 5],
        "response to id 5"
    );
    s3.write_all(&[0, 0, 0, 13, 77, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
        .await
        .unwrap();
    let results = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(results[0].starts_with("handshake:"), "{results:?}");
    assert_eq!(&results[1..], ["closed", "closed"]);
    drop(s);
}
