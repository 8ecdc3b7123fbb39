//! Webhook sink: batches of events POSTed as `{"events":[...]}` (each event
//! exactly as spooled), signed with HMAC-SHA256.
//!
//! Headers: `x-livery-timestamp` (Unix seconds) and `x-livery-signature:
//! sha256=<hex of HMAC(secret, "<timestamp>.<body>")>`. A 2xx acknowledges
//! the batch; anything else (or no answer within `timeout_ms`) is retried by the
//! spool reader with exponential backoff, the same batch again. Receivers must
//! deduplicate by `event_id` (delivery is at least once).

use super::{Ack, Sink};
use crate::usage::event::LedgerEvent;
use crate::usage::spool::Position;
use std::time::Duration;

pub struct WebhookSink {
    url: String,
    key: ring::hmac::Key,
    client: reqwest::Client,
    /// Built on first delivery, on the sink's own thread (a runtime must not be
    /// created or dropped inside the gateway's async runtime).
    runtime: Option<tokio::runtime::Runtime>,
    batch_max: usize,
}

impl WebhookSink {
    pub fn new(
        url: &str,
        secret: &[u8],
        timeout: Duration,
        batch_max: usize,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            client,
            runtime: None,
            batch_max: batch_max.max(1),
        })
    }

    fn post(&mut self, events: &[LedgerEvent]) -> Result<(), String> {
        let mut body = String::from("{\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e.raw);
        }
        body.push_str("]}");
        let ts = crate::unix_seconds(std::time::SystemTime::now()).to_string();
        let signature = signature(&self.key, &ts, body.as_bytes());
        let req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-livery-timestamp", &ts)
            .header("x-livery-signature", format!("sha256={signature}"))
            .body(body);
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some(runtime) = self.runtime.as_ref() else {
            return Err("no runtime".into());
        };
        runtime.block_on(async move {
            let resp = req.send().await.map_err(send_error)?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("webhook answered {}", resp.status()))
            }
        })
    }
}

/// reqwest's `Display` appends the whole URL, and a webhook URL often carries
/// its credential (an Azure Functions `?code=`, userinfo): this text is logged
/// and kept as the sink's `last_error`, so only the host is named.
fn send_error(e: reqwest::Error) -> String {
    use std::fmt::Write as _;
    let host = e.url().and_then(|u| u.host_str()).unwrap_or("?").to_owned();
    let e = e.without_url();
    let mut text = format!("webhook to {host}: {e}");
    // The causes (connection refused, timed out, TLS) are what an operator
    // needs, and hyper's and the OS's texts carry no URL.
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(key: &ring::hmac::Key, timestamp: &str, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    hex::encode(ctx.sign().as_ref())
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    fn deliver(&mut self, events: &[LedgerEvent], _through: Position) -> Result<Ack, String> {
        for chunk in events.chunks(self.batch_max) {
            self.post(chunk)?;
        }
        Ok(Ack {
            durable: true,
            cursor_stored: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed delivery's error (logged, and shown as the sink's last error)
    /// names the host but none of the URL's credentials.
    #[test]
    fn a_failed_delivery_does_not_reveal_the_urls_credentials() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        for url in [
            format!("http://127.0.0.1:{port}/api/hook?code=fake-test-secret"),
            format!("http://user:fake-test-secret@127.0.0.1:{port}/hook"),
        ] {
            let mut sink =
                WebhookSink::new(&url, b"0123456789abcdef", Duration::from_secs(2), 10).unwrap();
            let err = sink.post(&[]).unwrap_err();
            assert!(!err.contains("fake-test-secret"), "{err}");
            assert!(err.contains("127.0.0.1"), "{err}");
        }
    }
}
