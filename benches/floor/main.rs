//! `livery-floor`: the least a proxy on Livery's stack does, for the load
//! benchmarks to measure next to Livery (`FLOOR=1 benches/load/interleave.sh`).
//! hyper's HTTP/1.1 server in, `h2`'s client out over one HTTP/2 connection
//! (prior knowledge), tokio's single-threaded runtime, mimalloc: the request
//! body is sent as it came, with a fixed authorization header, and the answer
//! comes back whole with its status and a JSON content type. No Host or key
//! check, no limits, no unseal, no routing, no usage record, no logging. What
//! Livery adds over this hop is its pipeline and features; what this hop adds
//! over nginx's is the stack.
//!
//!     livery-floor UPSTREAM_HOST:PORT      (prints "livery listening on ADDR")

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Parts, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let upstream = std::env::args()
        .nth(1)
        .ok_or("usage: livery-floor UPSTREAM_HOST:PORT")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(upstream))
}

async fn serve(upstream: String) -> Result<(), Error> {
    // Parsed once: a request's URI is this and its own path, without a copy.
    let authority: Authority = upstream.parse()?;
    let tcp = TcpStream::connect(&upstream).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("upstream connection ended: {e}");
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("livery listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let send = send.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let send = send.clone();
                let authority = authority.clone();
                async move {
                    Ok::<_, Infallible>(match forward(send, authority, req).await {
                        Ok(resp) => resp,
                        Err(e) => {
                            let mut resp = Response::new(Full::new(Bytes::from(e.to_string())));
                            *resp.status_mut() = StatusCode::BAD_GATEWAY;
                            resp
                        }
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    send: h2::client::SendRequest<Bytes>,
    authority: Authority,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Error> {
    let mut uri = Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = req.uri().path_and_query().cloned();
    let body = req.into_body().collect().await?.to_bytes();
    let upstream = Request::builder()
        .method(Method::POST)
        .uri(Uri::from_parts(uri)?)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, "Bearer livery-floor")
        .body(())?;
    let mut send = send.ready().await?;
    let (response, mut stream) = send.send_request(upstream, false)?;
    stream.send_data(body, true)?;
    let (parts, mut body) = response.await?.into_parts();
    // One DATA frame (most answers) is passed on as it is, as Livery does
    // (`proxy::forward::collect`); only a longer answer is copied together.
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        if let Some(f) = first.take() {
            more.extend_from_slice(&f);
            more.extend_from_slice(&chunk);
        } else if more.is_empty() {
            first = Some(chunk);
        } else {
            more.extend_from_slice(&chunk);
        }
    }
    let answer = first.unwrap_or_else(|| more.freeze());
    let mut resp = Response::new(Full::new(answer));
    *resp.status_mut() = parts.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
