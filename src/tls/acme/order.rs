//! One RFC 8555 exchange with `instant-acme`: the account (loaded from the cache
//! or created), and an order for a single name answered with TLS-ALPN-01. The
//! challenge certificate is handed to the caller's [`Challenges`] for the
//! duration of the validation, where the TLS listener serves it to the CA's
//! `acme-tls/1` connection.

use super::super::TlsError;
use super::store::Store;
use dashmap::DashMap;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Challenge certificates being validated, by name.
pub type Challenges = DashMap<String, Arc<CertifiedKey>>;

/// A freshly issued chain and its key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Loads the cached account for `directory_url`, or creates one and caches it.
pub async fn account(
    store: &Store,
    directory_url: &str,
    contact: &[String],
    root_ca: Option<&Path>,
) -> Result<Account, TlsError> {
    let builder = || {
        match root_ca {
            Some(p) => Account::builder_with_root(p),
            None => Account::builder(),
        }
        .map_err(|e| TlsError::Acme(format!("ACME HTTP client: {e}")))
    };
    if let Some(creds) = store.account(directory_url) {
        match serde_json::from_value(creds) {
            Ok(creds) => match builder()?.from_credentials(creds).await {
                Ok(account) => return Ok(account),
                Err(e) => {
                    tracing::warn!(error = %e, "cached ACME account rejected; creating a new one")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cached ACME account unreadable; creating a new one")
            }
        }
    }
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url.to_owned(),
            None,
        )
        .await
        .map_err(|e| TlsError::Acme(format!("creating the ACME account: {e}")))?;
    let value = serde_json::to_value(&creds)
        .map_err(|e| TlsError::Acme(format!("cannot serialise the account: {e}")))?;
    store.save_account(directory_url, value)?;
    tracing::info!(directory = directory_url, "ACME account created");
    Ok(account)
}

/// Orders a certificate for `name`, answering TLS-ALPN-01 through `challenges`.
pub async fn order(
    account: &Account,
    name: &str,
    challenges: &Challenges,
) -> Result<Issued, String> {
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let result = answer_and_finalize(&mut order, name, challenges).await;
    challenges.remove(name);
    result
}

async fn answer_and_finalize(
    order: &mut instant_acme::Order,
    name: &str,
    challenges: &Challenges,
) -> Result<Issued, String> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("the CA offers no tls-alpn-01 challenge")?;
        let digest = challenge.key_authorization().digest();
        let cert = challenge_cert(name, digest.as_ref())?;
        challenges.insert(name.to_owned(), cert);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let patience = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&patience)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?} after validation"));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| format!("csr: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("csr: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&patience)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The self-signed TLS-ALPN-01 certificate of RFC 8737: `name` as its only
/// subjectAltName and the critical acmeIdentifier extension holding
/// SHA-256(key authorization).
pub fn challenge_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err("key authorization digest is not SHA-256".into());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}
