//! On-demand ACME end to end against Debian's `pebble` on loopback: pebble's
//! HTTPS listener gets a certificate from a throwaway CA, its DNS lookups go to
//! a tiny in-test responder that answers 127.0.0.1 for every name, and its
//! TLS-ALPN-01 validations go to the gateway's HTTPS port. Orders are counted
//! from pebble's log ("Added order") and the gateway's own counter.
//!
//! Needs `pebble` (`LIVERY_PEBBLE`, else `PATH`); without it the test prints why
//! and passes, unless `LIVERY_REQUIRE_PEBBLE=1` (tests/run.sh).

use super::{handshake, https_client, TestCa};
use crate::support::{self, MockProvider, TestGateway, ACME_DENTAL, ACME_HOST};
use livery::tls::status::CertState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn pebble_binary(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("LIVERY_PEBBLE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("pebble"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        if std::env::var("LIVERY_REQUIRE_PEBBLE").as_deref() == Ok("1") {
            panic!("{test}: pebble not found (LIVERY_REQUIRE_PEBBLE=1)");
        }
        eprintln!(
            "SKIPPED {test}: pebble not found (apt-get install pebble, or set LIVERY_PEBBLE)"
        );
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A DNS responder on UDP loopback: `A 127.0.0.1` for every name, no AAAA.
async fn loopback_dns() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(answer) = dns_answer(&buf[..n]) {
                let _ = socket.send_to(&answer, peer).await;
            }
        }
    });
    (addr, task)
}

fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then QTYPE and QCLASS.
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let qend = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = q.get(12..qend)?;
    let is_a = qtype == 1;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
    r.extend_from_slice(&[0x85, 0x80]); // response, authoritative, RD, RA, NOERROR
    r.extend_from_slice(&[0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if is_a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

struct Pebble {
    child: Child,
    log: PathBuf,
    directory: String,
    root_pem: String,
    /// The CA of pebble's own HTTPS listener (trusted for the directory).
    directory_ca: PathBuf,
}

impl Pebble {
    async fn start(bin: &Path, dir: &Path, tls_port: u16, dns: SocketAddr) -> Self {
        let ca = TestCa::new();
        let (cert, key) = ca.leaf(dir, "pebble", &["127.0.0.1", "localhost"]);
        let ca_file = ca.write(dir);
        let port = free_port();
        let mgmt = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("pebble starts");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "pebble did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mgmt_client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
            .no_proxy()
            .build()
            .unwrap();
        let root_pem = mgmt_client
            .get(format!("https://127.0.0.1:{mgmt}/roots/0"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(root_pem.contains("BEGIN CERTIFICATE"), "{root_pem}");
        Self {
            directory_ca: ca_file,
            child,
            log,
            directory: format!("https://127.0.0.1:{port}/dir"),
            root_pem,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders pebble has received.
    fn orders(&self) -> usize {
        self.log_text().matches("Added order").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_models(
    pebble_root: &str,
    https: SocketAddr,
    host: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    https_client(pebble_root, https, &[host], false)
        .get(format!("https://{host}:{}/v1/models", https.port()))
        .bearer_auth(ACME_DENTAL.2)
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_on_demand_issuance_with_pebble() {
    const TEST: &str = "acme_on_demand_issuance_with_pebble";
    let Some(bin) = pebble_binary(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (dns, dns_task) = loopback_dns().await;
    let tls_port = free_port();
    let pebble = Pebble::start(&bin, dir.path(), tls_port, dns).await;
    let pebble_ca = pebble.directory_ca.clone();

    let mock = MockProvider::start().await;
    let standard = support::standard_config(&mock.base_url(), "");
    let acme_domains = format!("domains = [\"{ACME_HOST}\"]");
    assert!(standard.contains(&acme_domains));
    let standard = standard.replace(
        &acme_domains,
        &format!("domains = [\"{ACME_HOST}\", \"api.acme.test\", \"x.acme.test\"]"),
    );
    let config = format!(
        r#"{standard}
[tls]
listen = ["127.0.0.1:{tls_port}"]

[tls.acme]
directory_url = "{directory}"
directory_root_ca = "{root_ca}"
cache_dir = "{cache}"
orders_per_hour_per_reseller = 2
handshake_wait_secs = 60
"#,
        directory = pebble.directory,
        root_ca = pebble_ca.display(),
        cache = dir.path().join("acme").display(),
    );
    let gw = TestGateway::start(&config).await;
    let https = gw.gateway.as_ref().unwrap().tls_addrs()[0];
    let orders_placed = |gw: &TestGateway| {
        gw.gateway
            .as_ref()
            .unwrap()
            .tls()
            .unwrap()
            .acme()
            .unwrap()
            .orders_placed()
    };

    // A registered domain gets a certificate on its first handshake (one retry
    // allowed while the order completes).
    let resp = match get_models(&pebble.root_pem, https, ACME_HOST).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("first attempt: {e}; retrying once");
            tokio::time::sleep(Duration::from_secs(2)).await;
            get_models(&pebble.root_pem, https, ACME_HOST)
                .await
                .unwrap_or_else(|e| panic!("{e}\npebble log:\n{}", pebble.log_text()))
        }
    };
    assert_eq!(resp.status(), 200);
    let tls = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let first_leaf = tls.peer_certificate().unwrap().to_vec();
    assert_eq!(pebble.orders(), 1, "{}", pebble.log_text());
    assert_eq!(orders_placed(&gw), 1);

    // The openai SDK over HTTPS with pebble's root trusted.
    if let Some(python) = crate::sdk::sdk_python().await {
        let root_file = dir.path().join("pebble-root.pem");
        std::fs::write(&root_file, &pebble.root_pem).unwrap();
        let base_url = format!("https://{ACME_HOST}:{tls_port}/v1");
        crate::sdk::run_sdk_tls_script(
            &python,
            &base_url,
            ACME_DENTAL.2,
            "demo",
            &root_file,
            ACME_HOST,
        )
        .await;
    }

    // Unregistered names fail the handshake and place no order.
    for name in ["nobody.acme.test", "random-name.example"] {
        let r = handshake(https, name, &[b"h2"], &pebble.root_pem, false).await;
        assert!(r.is_err(), "{name} got a certificate");
    }
    assert_eq!(pebble.orders(), 1, "an unregistered name placed an order");
    assert_eq!(orders_placed(&gw), 1);

    // The per-reseller limit (2 per hour): the second domain is issued, the
    // third is refused without an order.
    assert_eq!(
        get_models(&pebble.root_pem, https, "api.acme.test")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(pebble.orders(), 2);
    let r = handshake(https, "x.acme.test", &[b"h2"], &pebble.root_pem, false).await;
    assert!(
        r.is_err(),
        "the third acme domain within the hour was issued"
    );
    assert_eq!(pebble.orders(), 2, "the per-reseller limit placed an order");
    assert_eq!(orders_placed(&gw), 2);

    // `livery tls status` sees issued, failed (rate limit) and untouched names.
    let parsed = livery::config::GatewayConfig::parse(&config).unwrap();
    let rows = livery::tls::status::report(&parsed).unwrap();
    let state = |d: &str| rows.iter().find(|r| r.domain == d).unwrap().state.clone();
    assert!(matches!(state(ACME_HOST), CertState::Issued { .. }));
    assert!(matches!(state("api.acme.test"), CertState::Issued { .. }));
    match state("x.acme.test") {
        CertState::Failed {
            last_error,
            next_retry,
        } => {
            assert!(last_error.contains("limit"), "{last_error}");
            assert!(next_retry.is_some());
        }
        other => panic!("x.acme.test: {other:?}"),
    }
    assert_eq!(state(support::GLOBEX_HOST), CertState::OnDemand);

    // A restart serves the cached certificate without a new order.
    gw.shutdown().await;
    let gw = TestGateway::start(&config).await;
    let https = gw.gateway.as_ref().unwrap().tls_addrs()[0];
    let resp = get_models(&pebble.root_pem, https, ACME_HOST)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tls = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    assert_eq!(tls.peer_certificate().unwrap(), &first_leaf[..]);
    assert_eq!(orders_placed(&gw), 0);
    assert_eq!(pebble.orders(), 2);
    gw.shutdown().await;
    dns_task.abort();
}
