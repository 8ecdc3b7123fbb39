//! HTTPS (issue 8) with static certificates made at test time: a throwaway CA
//! signs a leaf for `ai.acme.test` and a wildcard for `*.livery.test`. SNI
//! selection, wildcard matching, refusal of names without a certificate (no
//! default certificate), ALPN `h2` and `http/1.1`, TLS 1.2, 421 when the Host
//! names another reseller than the SNI, the plain listener's redirect policy,
//! and `livery tls status`. The on-demand ACME tests against pebble are in
//! [`pebble`].

mod pebble;

use crate::support::{self, MockProvider, TestGateway, ACME_DENTAL, ACME_HOST, GLOBEX_CLINIC};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A throwaway CA; its leaves are written as PEM files into `dir`.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "Livery test CA (throwaway)");
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf for `names` (IP literals become IP SANs) and writes
    /// `STEM.pem` / `STEM.key.pem` into `dir`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

/// An HTTPS client trusting `ca_pem` that resolves `names` to `addr`.
pub fn https_client(
    ca_pem: &str,
    addr: SocketAddr,
    names: &[&str],
    http1: bool,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_info(true)
        .no_proxy();
    for n in names {
        b = b.resolve(n, addr);
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A raw rustls handshake: the negotiated ALPN and the server's leaf.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    ca_pem: &str,
    tls12_only: bool,
) -> std::io::Result<(Option<Vec<u8>>, CertificateDer<'static>)> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    let conn = stream.get_ref().1;
    let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
    Ok((conn.alpn_protocol().map(<[u8]>::to_vec), leaf))
}

/// The DNS names of a DER certificate.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    livery::tls::certs::leaf_info(der).unwrap().0
}

/// The standard gateway with an HTTPS listener (static certificates for
/// `ai.acme.test` and `*.livery.test`) and `extra_tls` in its `[tls]` table.
pub(crate) struct StaticSetup {
    pub(crate) gw: TestGateway,
    pub(crate) https: SocketAddr,
    pub(crate) ca: TestCa,
    pub(crate) mock: MockProvider,
    _dir: tempfile::TempDir,
}

pub(crate) async fn static_gateway(extra_tls: &str) -> StaticSetup {
    let mock = MockProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (acme_cert, acme_key) = ca.leaf(dir.path(), "acme", &[ACME_HOST]);
    let (wild_cert, wild_key) = ca.leaf(dir.path(), "wildcard", &["*.livery.test"]);
    let config = format!(
        r#"{standard}
[tls]
listen = ["127.0.0.1:0"]
{extra_tls}

[[tls.certs]]
cert = "{acme_cert}"
key = "{acme_key}"

[[tls.certs]]
cert = "{wild_cert}"
key = "{wild_key}"
names = ["*.{{platform_domain}}"]
"#,
        standard = support::standard_config(&mock.base_url(), ""),
        acme_cert = acme_cert.display(),
        acme_key = acme_key.display(),
        wild_cert = wild_cert.display(),
        wild_key = wild_key.display(),
    );
    let gw = TestGateway::start(&config).await;
    let https = gw.gateway.as_ref().unwrap().tls_addrs()[0];
    StaticSetup {
        gw,
        https,
        ca,
        mock,
        _dir: dir,
    }
}

#[tokio::test]
async fn sni_selects_static_and_wildcard_certificates() {
    let s = static_gateway("").await;
    let (_, leaf) = handshake(s.https, ACME_HOST, &[b"h2"], &s.ca.pem, false)
        .await
        .unwrap();
    assert_eq!(cert_names(&leaf), vec![ACME_HOST]);
    let (_, leaf) = handshake(s.https, "globex.livery.test", &[b"h2"], &s.ca.pem, false)
        .await
        .unwrap();
    assert_eq!(cert_names(&leaf), vec!["*.livery.test"]);

    // A request over HTTPS reaches the reseller of the SNI.
    let port = s.https.port();
    let client = https_client(&s.ca.pem, s.https, &[ACME_HOST, "acme.livery.test"], false);
    for host in [ACME_HOST, "acme.livery.test"] {
        let resp = client
            .get(format!("https://{host}:{port}/v1/models"))
            .bearer_auth(ACME_DENTAL.2)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
        let tls = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
        let der = CertificateDer::from(tls.peer_certificate().unwrap().to_vec());
        let expected = if host == ACME_HOST {
            ACME_HOST
        } else {
            "*.livery.test"
        };
        assert_eq!(cert_names(&der), vec![expected]);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["data"][0]["owned_by"], "acme");
    }
    s.gw.shutdown().await;
}

#[tokio::test]
async fn names_without_a_certificate_fail_the_handshake() {
    let s = static_gateway("").await;
    // Registered but without a certificate (no ACME), unregistered, and
    // deeper than the wildcard covers: no default certificate is ever sent.
    for name in [
        "ai.globex.test",
        "unknown.example",
        "a.b.livery.test",
        "livery.test",
    ] {
        let r = handshake(s.https, name, &[b"h2"], &s.ca.pem, false).await;
        assert!(r.is_err(), "{name} must not get a certificate");
    }
    s.gw.shutdown().await;
}

#[tokio::test]
async fn alpn_h2_and_http11_and_tls12() {
    let s = static_gateway("").await;
    let (alpn, _) = handshake(s.https, ACME_HOST, &[b"h2", b"http/1.1"], &s.ca.pem, false)
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (alpn, _) = handshake(s.https, ACME_HOST, &[b"http/1.1"], &s.ca.pem, false)
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (alpn, _) = handshake(s.https, ACME_HOST, &[b"h2"], &s.ca.pem, true)
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "TLS 1.2 works too");

    let port = s.https.port();
    for (http1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let client = https_client(&s.ca.pem, s.https, &[ACME_HOST], http1);
        let resp = client
            .post(format!("https://{ACME_HOST}:{port}/v1/chat/completions"))
            .bearer_auth(ACME_DENTAL.2)
            .json(&support::chat_body("demo"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
    }
    s.gw.shutdown().await;
}

#[tokio::test]
async fn host_naming_another_reseller_than_the_sni_gets_421() {
    let s = static_gateway("").await;
    let port = s.https.port();
    let client = https_client(&s.ca.pem, s.https, &[ACME_HOST], true);
    let resp = client
        .get(format!("https://{ACME_HOST}:{port}/v1/models"))
        .header("host", support::GLOBEX_HOST)
        .bearer_auth(GLOBEX_CLINIC.2)
        .send()
        .await
        .unwrap();
    assert_eq!(support::error_code(resp, 421).await, "misdirected_request");

    // Requests that would be forwarded: refused before the provider, in the
    // endpoint's dialect, and never recorded.
    let records_before = s.gw.usage().len();
    let upstream_before = s.mock.requests().len();
    for globex_host in [
        support::GLOBEX_HOST,
        "globex.livery.test",
        "AI.GLOBEX.TEST.:443",
    ] {
        let resp = client
            .post(format!("https://{ACME_HOST}:{port}/v1/chat/completions"))
            .header("host", globex_host)
            .bearer_auth(GLOBEX_CLINIC.2)
            .json(&support::chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            support::error_code(resp, 421).await,
            "misdirected_request",
            "{globex_host}"
        );
        let resp = client
            .post(format!("https://{ACME_HOST}:{port}/v1/messages"))
            .header("host", globex_host)
            .header("x-api-key", GLOBEX_CLINIC.2)
            .header("anthropic-version", "2023-06-01")
            .json(
                &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 16,
                "messages": [{"role": "user", "content": "Say hello"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 421, "{globex_host}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("another host")),
            "{v}"
        );
    }
    assert_eq!(
        s.mock.requests().len(),
        upstream_before,
        "a 421 was forwarded"
    );
    support::assert_only_sentinel_recorded(&s.gw, records_before, "HTTP/1.1 421").await;

    // Another name of the same reseller is fine, and so is the SNI's own
    // name in another spelling (case, trailing dot, port).
    for (host, path) in [
        ("acme.livery.test", "/v1/models"),
        ("AI.ACME.TEST.:443", "/v1/models"),
        ("AI.ACME.TEST.:443", "/v1/chat/completions"),
    ] {
        let rb = if path == "/v1/models" {
            client.get(format!("https://{ACME_HOST}:{port}{path}"))
        } else {
            client
                .post(format!("https://{ACME_HOST}:{port}{path}"))
                .json(&support::chat_body("gpt-4o-mini"))
        };
        let resp = rb
            .header("host", host)
            .bearer_auth(ACME_DENTAL.2)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host} {path}");
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let v: serde_json::Value = resp.json().await.unwrap();
        if path == "/v1/models" {
            assert_eq!(v["data"][0]["owned_by"], "acme", "{v}");
        } else {
            let record = s.gw.usage_for(&rid).await;
            assert_eq!(record["reseller"], "acme", "{record}");
            assert_eq!(record["tenant"], "dental", "{record}");
        }
    }
    s.gw.shutdown().await;
}

/// A TLS connection to `addr` with server name `sni`, trusting `ca_pem`, that
/// negotiated ALPN `h2`; the HTTP/2 handshake done on it.
async fn h2_over_tls(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
) -> h2::client::SendRequest<bytes::Bytes> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    support::h2_handshake(stream).await
}

/// HTTP/2 connection coalescing, as a browser or an HTTP/2 client does it: the
/// wildcard certificate of `acme.livery.test` also covers `globex.livery.test`,
/// so a client may send globex's requests on acme's connection, with globex
/// in `:authority` and no Host header at all. The SNI check must refuse them
/// (421), and only them: acme's own requests on the same connection are served.
#[tokio::test]
async fn http2_coalesced_connection_cannot_reach_another_reseller() {
    let s = static_gateway("").await;
    let send = h2_over_tls(s.https, "acme.livery.test", &s.ca.pem).await;
    let globex_auth = format!("Bearer {}", GLOBEX_CLINIC.2);
    let dental_auth = format!("Bearer {}", ACME_DENTAL.2);
    let records_before = s.gw.usage().len();
    let upstream_before = s.mock.requests().len();

    let json = |text: &str| -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    let resp = support::h2_request(
        &send,
        "GET",
        "https://globex.livery.test/v1/models",
        &[("authorization", &globex_auth)],
        None,
    )
    .await;
    assert_eq!(resp.status(), 421, "{}", resp.body());
    assert!(resp.headers().get("host").is_none());
    let v = json(resp.body());
    assert_eq!(v["error"]["code"], "misdirected_request", "{v}");
    assert!(!resp.body().contains("gpt-4o-mini"), "{v}");

    // The same connection serves acme, by `:authority` too.
    let resp = support::h2_request(
        &send,
        "GET",
        "https://acme.livery.test/v1/models",
        &[("authorization", &dental_auth)],
        None,
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.body());
    let v = json(resp.body());
    assert_eq!(v["data"][0]["owned_by"], "acme", "{v}");

    // A misdirected request that would be forwarded: refused before the
    // provider, in the endpoint's dialect, and never recorded.
    let resp = support::h2_request(
        &send,
        "POST",
        "https://globex.livery.test/v1/chat/completions",
        &[("authorization", &globex_auth)],
        Some(&support::chat_body("gpt-4o-mini")),
    )
    .await;
    assert_eq!(resp.status(), 421, "{}", resp.body());
    let v = json(resp.body());
    assert_eq!(v["error"]["code"], "misdirected_request", "{v}");
    let resp = support::h2_request(
        &send,
        "POST",
        "https://globex.livery.test/v1/messages",
        &[
            ("x-api-key", GLOBEX_CLINIC.2),
            ("anthropic-version", "2023-06-01"),
        ],
        Some(
            &serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello"}]}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 421, "{}", resp.body());
    let v = json(resp.body());
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(
        s.mock.requests().len(),
        upstream_before,
        "a 421 was forwarded"
    );
    support::assert_only_sentinel_recorded(&s.gw, records_before, "HTTP/2 421").await;

    // And a forwarded acme request on that connection is served and recorded as acme.
    let resp = support::h2_request(
        &send,
        "POST",
        "https://acme.livery.test/v1/chat/completions",
        &[("authorization", &dental_auth)],
        Some(&support::chat_body("gpt-4o-mini")),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.body());
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let record = s.gw.usage_for(&rid).await;
    assert_eq!(record["reseller"], "acme", "{record}");
    assert_eq!(record["tenant"], "dental", "{record}");
    assert_eq!(s.mock.requests().len(), upstream_before + 1);
    s.gw.shutdown().await;
}

/// Accepts any server certificate (its handshake signatures are still
/// checked): a handshake made with it fails only if the server refuses it.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A handshake that accepts whatever certificate the server sends, with or
/// without SNI (`send_sni`); `name` may be an IP address, for which rustls
/// never sends SNI.
async fn handshake_any_certificate(
    addr: SocketAddr,
    name: rustls_pki_types::ServerName<'static>,
    send_sni: bool,
) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_sni = send_sni;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(drop)
}

/// The SNI check (421) is skipped for a connection without a server name, so
/// such a connection must not exist: a ClientHello without SNI (or for an IP
/// address, which carries none) gets no certificate, static or wildcard.
#[tokio::test]
async fn handshakes_without_a_server_name_fail() {
    use rustls_pki_types::ServerName;
    let s = static_gateway("").await;
    // Control: the same permissive client with SNI completes its handshake.
    for name in [ACME_HOST, "acme.livery.test"] {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        handshake_any_certificate(s.https, name, true)
            .await
            .expect("a handshake with SNI completes");
    }
    for (name, send_sni) in [
        (ServerName::try_from(ACME_HOST.to_owned()).unwrap(), false),
        (
            ServerName::try_from("acme.livery.test".to_owned()).unwrap(),
            false,
        ),
        (
            ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
            true,
        ),
        (
            ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into()),
            false,
        ),
    ] {
        let r = handshake_any_certificate(s.https, name.clone(), send_sni).await;
        assert!(
            r.is_err(),
            "a handshake without SNI ({name:?}, sni {send_sni}) got a certificate"
        );
    }
    s.gw.shutdown().await;
}

#[tokio::test]
async fn plain_listener_redirects_unless_a_trusted_proxy_says_https() {
    let s = static_gateway("plain = \"redirect\"\ntrusted_proxies = [\"127.0.0.0/8\"]").await;
    let port = s.https.port();
    let resp = support::get(
        &s.gw,
        "/v1/models?x=1",
        Some(ACME_HOST),
        Some(ACME_DENTAL.2),
    )
    .await;
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://{ACME_HOST}:{port}/v1/models?x=1").as_str()
    );
    // Health checks are served in plain HTTP.
    let resp = support::get(&s.gw, "/healthz", None, None).await;
    assert_eq!(resp.status(), 200);
    // A trusted proxy that terminated TLS is served.
    let resp = support::client()
        .get(s.gw.url("/v1/models"))
        .header("host", ACME_HOST)
        .header("x-forwarded-proto", "https")
        .bearer_auth(ACME_DENTAL.2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.gw.shutdown().await;
}

/// Behind a port mapping (the container's 8443 published as 443), redirects
/// point at the port clients reach, `redirect_port`, not the bound one; 443
/// is left out of the URL.
#[tokio::test]
async fn plain_listener_redirects_to_the_configured_public_port() {
    for (public, authority) in [
        (443, ACME_HOST.to_owned()),
        (9443, format!("{ACME_HOST}:9443")),
    ] {
        let s = static_gateway(&format!("plain = \"redirect\"\nredirect_port = {public}")).await;
        let resp = support::get(&s.gw, "/v1/models", Some(ACME_HOST), Some(ACME_DENTAL.2)).await;
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()["location"],
            format!("https://{authority}/v1/models").as_str()
        );
        s.gw.shutdown().await;
    }
}

#[tokio::test]
async fn plain_listener_untrusted_forwarded_proto_is_redirected() {
    let s = static_gateway("plain = \"redirect\"\ntrusted_proxies = [\"10.0.0.0/8\"]").await;
    let resp = support::client()
        .get(s.gw.url("/v1/models"))
        .header("host", ACME_HOST)
        .header("x-forwarded-proto", "https")
        .bearer_auth(ACME_DENTAL.2)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    s.gw.shutdown().await;
}

#[test]
fn tls_status_lists_static_domains() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(dir.path(), "acme", &[ACME_HOST]);
    let config = format!(
        r#"{standard}
[tls]
listen = ["127.0.0.1:0"]

[[tls.certs]]
cert = "{cert}"
key = "{key}"
"#,
        standard = support::standard_config("http://127.0.0.1:9", ""),
        cert = cert.display(),
        key = key.display(),
    );
    let config = livery::config::GatewayConfig::parse(&config).unwrap();
    let rows = livery::tls::status::report(&config).unwrap();
    let state = |d: &str| rows.iter().find(|r| r.domain == d).unwrap().state.clone();
    assert!(matches!(
        state(ACME_HOST),
        livery::tls::status::CertState::Static { .. }
    ));
    assert_eq!(
        state(support::GLOBEX_HOST),
        livery::tls::status::CertState::None
    );
    let text = livery::tls::status::render(&rows);
    assert!(text.contains("acme.livery.test"), "{text}");
    assert!(text.contains("static"), "{text}");
}

#[test]
fn tls_config_is_strict() {
    let base = support::standard_config("http://127.0.0.1:9", "");
    let bad = format!("{base}\n[tls]\nlisten = []\nplian = \"serve\"\n");
    assert!(livery::config::GatewayConfig::parse(&bad).is_err());
    let bad = format!("{base}\n[tls]\nplain = \"maybe\"\n");
    assert!(livery::config::GatewayConfig::parse(&bad).is_err());
}

/// The real `openai` SDK over HTTPS to a static certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_over_https() {
    let Some(python) = crate::sdk::sdk_python().await else {
        return;
    };
    let s = static_gateway("").await;
    let ca_file = s.ca.write(s._dir.path());
    let base_url = format!("https://{ACME_HOST}:{}/v1", s.https.port());
    crate::sdk::run_sdk_tls_script(
        &python,
        &base_url,
        ACME_DENTAL.2,
        "demo",
        &ca_file,
        ACME_HOST,
    )
    .await;
    s.gw.shutdown().await;
}

/// `livery tls status` as operators run it: the binary on a configuration file.
#[test]
fn tls_status_cli() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(dir.path(), "wild", &["*.livery.test"]);
    let cache = dir.path().join("acme");
    std::fs::create_dir_all(cache.join("certs")).unwrap();
    std::fs::write(
        cache.join("state.json"),
        r#"{"ai.globex.test":{"phase":"failed","last_error":"connection refused","failures":1,"next_retry":4102444800,"updated":0}}"#,
    )
    .unwrap();
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(
        &config_path,
        format!(
            "{standard}\n[tls]\nlisten = [\"127.0.0.1:0\"]\n\n[[tls.certs]]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[tls.acme]\ncache_dir = \"{cache}\"\n",
            standard = support::standard_config("http://127.0.0.1:9", ""),
            cert = cert.display(),
            key = key.display(),
            cache = cache.display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::cli::BIN)
        .args(["tls", "status", "--config"])
        .arg(&config_path)
        .env_remove("LIVERY_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |d: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{d} ")))
            .unwrap_or_else(|| panic!("no line for {d}:\n{stdout}"))
            .to_owned()
    };
    assert!(line("acme.livery.test").contains("static"), "{stdout}");
    assert!(
        line(ACME_HOST).contains("ordered on first handshake"),
        "{stdout}"
    );
    let globex = line(support::GLOBEX_HOST);
    assert!(globex.contains("failed"), "{stdout}");
    assert!(globex.contains("connection refused"), "{stdout}");
    assert!(globex.contains("2100-01-01"), "{stdout}");
}
