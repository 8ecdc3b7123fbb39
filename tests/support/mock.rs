//! A mock OpenAI provider over real HTTP (hyper, HTTP/1.1 and h2c) for the
//! integration tests. Answers come from `livery::providers::mock` (OpenAI's exact
//! wire format); faults are injected per request through the body's `"mock"`
//! object (`status`, `retry_after`, `delay_ms`, `gap_ms`, `chunks`, `drop_after`,
//! `stall_after`, `stall_ms`,
//! `omit_done`, `no_usage`, `error_after`), which the gateway forwards untouched. The mock records
//! every request it receives and counts streams abandoned by the client.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use livery::providers::mock::MockReply;
use livery::providers::Endpoint;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw_body: Bytes,
    pub version: http::Version,
}

#[derive(Default)]
pub struct MockState {
    pub requests: Mutex<Vec<Recorded>>,
    /// Streams whose body was dropped before its last piece was sent.
    pub cancelled: AtomicUsize,
    /// Pieces (SSE events) actually handed to hyper for sending.
    pub pieces_sent: AtomicUsize,
    pub completed: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
}

pub struct MockProvider {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type MockBody = UnsyncBoxBody<Bytes, std::io::Error>;

impl MockProvider {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(serve(st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT/v1`, the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> Recorded {
        self.requests().pop().expect("the mock received no request")
    }

    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub fn pieces_sent(&self) -> usize {
        self.state.pieces_sent.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` streams were abandoned, or panics after `within`.
    pub async fn wait_cancelled(&self, n: usize, within: Duration) -> Duration {
        let start = Instant::now();
        while self.cancelled() < n {
            assert!(
                start.elapsed() < within,
                "the mock saw {} cancelled streams, wanted {n} ({} completed, {} pieces sent)",
                self.cancelled(),
                self.state.completed.load(Ordering::SeqCst),
                self.pieces_sent()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }
}

/// Marks the stream cancelled if dropped before its end.
struct CancelWatch {
    state: Arc<MockState>,
    finished: bool,
}

impl CancelWatch {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if self.finished {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
        } else {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn serve(state: Arc<MockState>, req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let raw = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        version: parts.version,
        body: json.clone(),
        raw_body: raw,
    });
    // OpenAI's `/v1/chat/completions`, Azure's
    // `/openai/deployments/{deployment}/chat/completions?api-version=…`, or
    // Azure's v1 API (`/openai/v1/responses`, the deployment in the body).
    let path = parts.uri.path();
    let openai_path = path
        .strip_prefix("/v1")
        .or_else(|| path.strip_prefix("/openai/v1"))
        .or_else(|| {
            path.strip_prefix("/openai/deployments/")
                .and_then(|rest| rest.split_once('/'))
                // Keep the leading slash of what follows the deployment name.
                .map(|(_, p)| &path[path.len() - p.len() - 1..])
        });
    let endpoint = match openai_path.and_then(Endpoint::from_path) {
        Some(e) => e,
        None => {
            let mut r = Response::new(full(Bytes::from_static(b"{\"error\":{\"message\":\"Invalid URL\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let presented = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let reply = MockReply::for_request_keyed(endpoint, &json, presented);
    let d = reply.directives.clone();
    if d.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(d.delay_ms)).await;
    }
    let total = reply.pieces.len();
    let mut watch = CancelWatch {
        state: state.clone(),
        finished: false,
    };
    let gap = Duration::from_millis(d.gap_ms);
    let (drop_after, stall_after) = (d.drop_after, d.stall_after);
    let stall = Duration::from_millis(d.stall_ms);
    let st = state.clone();
    let pieces =
        futures_util::stream::iter(reply.pieces.into_iter().enumerate()).then(move |(i, p)| {
            let st = st.clone();
            async move {
                if i > 0 && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                if stall_after == Some(i) {
                    tokio::time::sleep(stall).await;
                }
                if drop_after.is_some_and(|n| i >= n) {
                    // Let hyper flush what it holds first, so the drop happens mid-body.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // An error body makes hyper abort the connection mid-message.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock drop",
                    ));
                }
                st.pieces_sent.fetch_add(1, Ordering::SeqCst);
                Ok(Frame::data(p))
            }
        });
    let mut sent = 0usize;
    let pieces = pieces.map(move |item| {
        sent += 1;
        if sent == total {
            // A method call captures the whole watch, so it lives as long as the body.
            watch.finish();
        }
        item
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(pieces)));
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    resp
}

fn full(b: Bytes) -> MockBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// An OpenAI-compatible upstream that answers every request with one recorded
/// event stream, byte for byte (a capture of another provider's quirks).
pub struct ReplayProvider {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplayProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplayProvider {
    pub async fn start(sse: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| async move {
                        let mut r = Response::new(full(Bytes::from_static(sse.as_bytes())));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:PORT/v1`, the provider's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// Azure OpenAI's stream for gpt-4o as recorded in June 2025
/// (`wire/azure/recorded_chat_stream_gpt4o_2025-06.sse`): its first chunk,
/// `prompt_filter_results`, has an empty `id` and `model` and no choices.
pub const AZURE_STREAM_GPT4O: &str = concat!(
    r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]}"#,
    "\n",
    "\n",
    r#"data: {"choices":[{"content_filter_results":{},"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1750697159,"id":"chatcmpl-BleatwEUn3D8iXsgXpDqeOPEMuW3j","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0"}"#,
    "\n",
    "\n",
    r#"data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":"Hallo"},"finish_reason":null,"index":0,"logprobs":null}],"created":1750697159,"id":"chatcmpl-BleatwEUn3D8iXsgXpDqeOPEMuW3j","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0"}"#,
    "\n",
    "\n",
    r#"data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":" Welt"},"finish_reason":null,"index":0,"logprobs":null}],"created":1750697159,"id":"chatcmpl-BleatwEUn3D8iXsgXpDqeOPEMuW3j","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0"}"#,
    "\n",
    "\n",
    r#"data: {"choices":[{"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}},"delta":{"content":"!"},"finish_reason":null,"index":0,"logprobs":null}],"created":1750697159,"id":"chatcmpl-BleatwEUn3D8iXsgXpDqeOPEMuW3j","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0"}"#,
    "\n",
    "\n",
    r#"data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":1750697159,"id":"chatcmpl-BleatwEUn3D8iXsgXpDqeOPEMuW3j","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk","system_fingerprint":"fp_ee1d74bde0"}"#,
    "\n",
    "\n",
    r#"data: [DONE]"#,
    "\n",
    "\n",
);
