//! The mock's HTTP/2 server (prior knowledge, h2c): the `h2` crate driven
//! directly, so that the mock costs a gateway's HTTP/2 upstream no more than it
//! costs nginx's HTTP/1.1 one.
//!
//! hyper's HTTP/2 server spawns a task per stream and pipes each body through a
//! capacity reservation, waking the connection task at each step: the mock spent
//! 10.1 µs of CPU per request serving Livery over HTTP/2 against 8.9 µs serving
//! nginx over HTTP/1.1 (eighteenth session), and that CPU shares the servers'
//! core with the proxy under test. Here a stream whose body has arrived whole
//! (a small request's DATA frame comes in the same read as its HEADERS) and
//! whose reply goes out in one piece is answered inline, in the connection's
//! own loop, and the answers leave together at the connection's next write.
//! Anything else (a body still arriving, a delayed or paced reply, a fault)
//! gets a task of its own, as before.
//!
//! The answers are what hyper sent: the same status, the cached headers, a
//! `date` and, for a reply in one piece, a `content-length`.

use super::{
    answer, now_us, rendered_for, reply, response, route, unreadable_body, Mock, MockBody,
};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// hyper's defaults for its HTTP/2 server, so that flow control behaves as it did.
const WINDOW: u32 = 1024 * 1024;
const MAX_SEND_BUF: usize = 400 * 1024;

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one HTTP/2 connection until the client ends it.
pub async fn serve_connection(stream: TcpStream, mock: Arc<Mock>) {
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(MAX_SEND_BUF)
        // A gateway multiplexing every stream over one connection must not
        // be held to a small limit (hyper's default is 200).
        .max_concurrent_streams(100_000)
        .handshake::<_, Bytes>(stream)
        .await
    {
        Ok(c) => c,
        Err(_) => return,
    };
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { break };
        serve_stream(&mock, req, respond);
    }
}

/// Answers one stream: inline when it can be, else from a task of its own.
fn serve_stream(mock: &Arc<Mock>, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
    let received = now_us();
    let (head, mut body) = req.into_parts();
    let endpoint = match route(mock, &head.method, head.uri.path()) {
        Ok(e) => e,
        Err(resp) => {
            tokio::spawn(send(respond, *resp));
            return;
        }
    };
    let mut got = BytesMut::new();
    let whole = match body_so_far(&mut body, &mut got, mock.args.max_body_bytes) {
        Some(Ok(())) => got.freeze(),
        Some(Err(why)) => {
            tokio::spawn(send(respond, unreadable_body(mock, &why)));
            return;
        }
        None => {
            let mock = mock.clone();
            tokio::spawn(async move {
                let resp = match rest_of_body(body, got, mock.args.max_body_bytes).await {
                    Ok(bytes) => answer(&mock, endpoint, bytes, received).await,
                    Err(why) => unreadable_body(&mock, &why),
                };
                send(respond, resp).await;
            });
            return;
        }
    };
    match rendered_for(mock, endpoint, whole) {
        Ok(r) if r.delay.is_zero() && r.in_one_piece() => {
            // A body in one buffer gives `send` nothing to wait for: it runs
            // to the end here, in the connection's loop.
            let sent = send(respond, response(mock, r, received)).now_or_never();
            debug_assert!(sent.is_some(), "a reply in one piece is sent at once");
        }
        Ok(r) => {
            let mock = mock.clone();
            tokio::spawn(async move {
                let resp = reply(&mock, r, received).await;
                send(respond, resp).await;
            });
        }
        Err(resp) => {
            tokio::spawn(send(respond, *resp));
        }
    }
}

/// Takes what has arrived of a request body into `got`: `Some(Ok)` when it is
/// whole, `None` while more is to come, `Some(Err)` if it failed or is too large.
fn body_so_far(
    body: &mut RecvStream,
    got: &mut BytesMut,
    max: usize,
) -> Option<Result<(), String>> {
    loop {
        if body.is_end_stream() {
            return Some(Ok(()));
        }
        match body.data().now_or_never()? {
            None => return Some(Ok(())),
            Some(Ok(chunk)) => {
                if let Err(why) = take_chunk(body, got, &chunk, max) {
                    return Some(Err(why));
                }
            }
            Some(Err(e)) => return Some(Err(e.to_string())),
        }
    }
}

async fn rest_of_body(
    mut body: RecvStream,
    mut got: BytesMut,
    max: usize,
) -> Result<Bytes, String> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        take_chunk(&mut body, &mut got, &chunk, max)?;
    }
    Ok(got.freeze())
}

fn take_chunk(
    body: &mut RecvStream,
    got: &mut BytesMut,
    chunk: &Bytes,
    max: usize,
) -> Result<(), String> {
    let _ = body.flow_control().release_capacity(chunk.len());
    if got.len() + chunk.len() > max {
        return Err("length limit exceeded".into());
    }
    got.extend_from_slice(chunk);
    Ok(())
}

/// Sends a response built as for hyper: its head, then its body frame by
/// frame; a failing body resets the stream, as hyper does.
async fn send(mut respond: SendResponse<Bytes>, resp: Response<MockBody>) {
    let (parts, mut body) = resp.into_parts();
    let mut head = Response::from_parts(parts, ());
    // Known exactly for a reply in one piece only (a paced stream's is not).
    let length = http_body::Body::size_hint(&body)
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    stamp_head(head.headers_mut(), length);
    // END_STREAM rides on the last frame that carries something, as hyper
    // sends it: an empty DATA frame of its own after a whole reply cost the
    // mock 3.5 us more per request serving Livery (10.0 -> 13.5, features.sh).
    let empty = http_body::Body::is_end_stream(&body);
    let Ok(mut out) = respond.send_response(head, empty) else {
        return;
    };
    if empty {
        return;
    }
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    let last = http_body::Body::is_end_stream(&body);
                    if out.send_data(data, last).is_err() || last {
                        return;
                    }
                }
            }
            Err(_) => {
                out.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        }
    }
    let _ = out.send_data(Bytes::new(), true);
}

/// The headers hyper adds to a response that lacks them: `date`, and
/// `content-length` when the body's size is known.
fn stamp_head(headers: &mut HeaderMap, length: Option<usize>) {
    if !headers.contains_key(http::header::DATE) {
        headers.insert(http::header::DATE, date());
    }
    if let Some(n) = length {
        if !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

thread_local! {
    /// The current second's `date` value, formatted once a second as hyper does.
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&text) {
                *cached = (secs, v);
            }
        }
        cached.1.clone()
    })
}

/// Whether the first bytes of a connection so far are (a prefix of) the
/// HTTP/2 preface.
pub fn may_be_preface(first: &[u8]) -> bool {
    let n = first.len().min(PREFACE.len());
    first[..n] == PREFACE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{accept_loop, Args};
    use clap::Parser;

    /// A mock on a free port with the command line's defaults; its URL.
    async fn mock() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut args = Args::parse_from(["livery-mock", "--max-body-bytes", "4096"]);
        args.delay_ms = 0;
        tokio::spawn(accept_loop(listener, Arc::new(Mock::new(args))));
        format!("http://{addr}")
    }

    /// Status, headers (but `date`, which may change second) and body.
    async fn answer(
        resp: reqwest::Response,
    ) -> (u16, Vec<(String, String)>, Result<Bytes, String>) {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| *k != http::header::DATE)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert!(resp.headers().contains_key(http::header::DATE));
        let body = resp.bytes().await.map_err(|e| format!("{e:?}"));
        (status, headers, body)
    }

    /// Every kind of reply is the same over HTTP/2 (the `h2` path here) as over
    /// HTTP/1.1 (hyper's): inline answers, paced and delayed ones, errors,
    /// faults, health and 404s.
    #[tokio::test]
    async fn http2_answers_as_http1_does() {
        let url = mock().await;
        let h1 = reqwest::Client::builder().http1_only().build().unwrap();
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let chat = format!("{url}/v1/chat/completions");
        let cases: Vec<(&str, String, Option<&str>)> = vec![
            (
                "plain",
                chat.clone(),
                Some(r#"{"model":"demo","messages":[{"role":"user","content":"Hi"}]}"#),
            ),
            (
                "stream in one piece",
                chat.clone(),
                Some(r#"{"model":"demo","stream":true,"mock":{"chunks":3}}"#),
            ),
            (
                "paced stream",
                chat.clone(),
                Some(r#"{"model":"demo","stream":true,"mock":{"chunks":3,"gap_ms":5}}"#),
            ),
            (
                "delayed 429",
                chat.clone(),
                Some(r#"{"model":"demo","mock":{"status":429,"delay_ms":20}}"#),
            ),
            ("not JSON", chat.clone(), Some("{oops")),
            (
                "too large",
                chat.clone(),
                Some(&*Box::leak("x".repeat(5000).into_boxed_str())),
            ),
            (
                "embeddings",
                format!("{url}/v1/embeddings"),
                Some(r#"{"model":"e","input":"hi"}"#),
            ),
            ("unknown path", format!("{url}/v1/nope"), Some("{}")),
            ("wrong method", chat.clone(), None),
            ("health", format!("{url}/healthz"), None),
        ];
        for (name, url, body) in cases {
            let mut got = Vec::new();
            for client in [&h1, &h2] {
                let req = match body {
                    Some(b) => client.post(&url).body(b.to_owned()),
                    None => client.get(&url),
                };
                let resp = req.send().await.unwrap();
                let version = resp.version();
                got.push((version, answer(resp).await));
            }
            assert_eq!(got[0].0, http::Version::HTTP_11, "{name}");
            assert_eq!(got[1].0, http::Version::HTTP_2, "{name}");
            let (a, b) = (&got[0].1, &got[1].1);
            assert_eq!(a.0, b.0, "{name}: status");
            assert_eq!(
                a.1.iter()
                    .filter(|(k, _)| k != "content-length" && k != "transfer-encoding")
                    .collect::<Vec<_>>(),
                b.1.iter()
                    .filter(|(k, _)| k != "content-length")
                    .collect::<Vec<_>>(),
                "{name}: headers"
            );
            let (ba, bb) = (a.2.as_ref().unwrap(), b.2.as_ref().unwrap());
            // Ids and `created` carry no randomness: the same request, the same bytes.
            assert_eq!(ba, bb, "{name}: body");
            assert!(!ba.is_empty(), "{name}");
            let length =
                b.1.iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.clone());
            let paced = name == "paced stream";
            assert_eq!(
                length,
                (!paced).then(|| bb.len().to_string()),
                "{name}: content-length"
            );
        }
        // A cut stream is cut on both: a reset stream on HTTP/2.
        let cut = r#"{"model":"demo","stream":true,"mock":{"chunks":5,"drop_after":2}}"#;
        for client in [&h1, &h2] {
            let resp = client.post(&chat).body(cut).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.bytes().await.is_err());
        }
    }

    /// A body whose DATA frames come apart is read whole before the answer,
    /// and its stream's window is handed back.
    #[tokio::test]
    async fn a_body_in_pieces_is_waited_for() {
        let url = mock().await;
        let tcp = TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let body = br#"{"model":"demo","messages":[{"role":"user","content":"in pieces"}]}"#;
        let mut answers = Vec::new();
        for split in [None, Some(10)] {
            let req = Request::post(format!("{url}/v1/chat/completions"))
                .body(())
                .unwrap();
            let (resp, mut stream) = send.send_request(req, false).unwrap();
            match split {
                None => stream.send_data(Bytes::from_static(body), true).unwrap(),
                Some(at) => {
                    stream
                        .send_data(Bytes::from_static(&body[..at]), false)
                        .unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                    stream
                        .send_data(Bytes::from_static(&body[at..]), true)
                        .unwrap();
                }
            }
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut recv = resp.into_body();
            let mut got = BytesMut::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.unwrap();
                let _ = recv.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            answers.push(got.freeze());
        }
        assert_eq!(answers[0], answers[1]);
        assert!(std::str::from_utf8(&answers[0])
            .unwrap()
            .contains("\"usage\""));
    }

    /// What the server sent on a connection: its bytes, recorded as read.
    struct Recorded {
        tcp: TcpStream,
        seen: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl tokio::io::AsyncRead for Recorded {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let polled = std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf);
            let new = buf.filled()[before..].to_vec();
            self.seen.lock().unwrap().extend_from_slice(&new);
            polled
        }
    }

    impl tokio::io::AsyncWrite for Recorded {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// `(length, flags)` of each DATA frame on `stream` in `bytes` (a
    /// server's side of a connection, from its first frame): frame heads are
    /// 9 bytes, length (24 bits), type, flags, stream id (RFC 9113, 4.1).
    fn data_frames(mut bytes: &[u8], stream: u32) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        while bytes.len() >= 9 {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
            if bytes[3] == 0 && id == stream {
                out.push((len, bytes[4]));
            }
            bytes = &bytes[(9 + len).min(bytes.len())..];
        }
        out
    }

    /// A reply in one piece goes out as one DATA frame carrying END_STREAM,
    /// as hyper's server sends it, not followed by an empty frame to end the
    /// stream (which cost the mock a third more CPU per request: 13.5 us
    /// against 10.0 serving Livery);
    /// a paced stream ends with an empty one, its end not known before.
    #[tokio::test]
    async fn a_whole_reply_is_one_data_frame_that_ends_the_stream() {
        const END_STREAM: u8 = 0x1;
        let url = mock().await;
        let cases = [
            (
                r#"{"model":"demo","messages":[{"role":"user","content":"Hi"}]}"#,
                false,
            ),
            (
                r#"{"model":"demo","stream":true,"mock":{"chunks":3}}"#,
                false,
            ),
            (
                r#"{"model":"demo","stream":true,"mock":{"chunks":3,"gap_ms":2}}"#,
                true,
            ),
        ];
        for (body, paced) in cases {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let tcp = TcpStream::connect(url.trim_start_matches("http://"))
                .await
                .unwrap();
            let recorded = Recorded {
                tcp,
                seen: seen.clone(),
            };
            let (send, conn) = h2::client::handshake(recorded).await.unwrap();
            tokio::spawn(conn);
            let mut send = send.ready().await.unwrap();
            let req = Request::post(format!("{url}/v1/chat/completions"))
                .body(())
                .unwrap();
            let (resp, mut stream) = send.send_request(req, false).unwrap();
            stream.send_data(Bytes::from(body), true).unwrap();
            let mut recv = resp.await.unwrap().into_body();
            let mut got = 0;
            while let Some(chunk) = recv.data().await {
                got += chunk.unwrap().len();
            }
            let frames = data_frames(&seen.lock().unwrap(), 1);
            assert_eq!(frames.iter().map(|f| f.0).sum::<usize>(), got, "{body}");
            let (last_len, last_flags) = *frames.last().unwrap();
            assert_eq!(last_flags & END_STREAM, END_STREAM, "{body}: {frames:?}");
            if paced {
                assert_eq!(last_len, 0, "{body}: {frames:?}");
            } else {
                assert_eq!(frames, vec![(got, END_STREAM)], "{body}");
            }
        }
    }
}
