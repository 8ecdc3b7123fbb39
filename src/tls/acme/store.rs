//! The ACME cache on disk (default `certs/acme/`):
//!
//! - `account.json`: the account's credentials and the directory they belong to;
//! - `certs/NAME.pem` and `certs/NAME.key.pem`: each issued chain and its key
//!   (keys written owner-readable only);
//! - `state.json`: pending and failed orders (last error, next retry), which
//!   `livery tls status` reads while the gateway runs.
//!
//! Every file is written beside its final path and renamed over it, so a crash
//! never leaves half a certificate.

use super::super::certs::{parse_pem, LoadedCert};
use super::super::TlsError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where an on-demand certificate stands, as persisted in `state.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderPhase {
    Pending,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameState {
    pub phase: OrderPhase,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Consecutive failed orders (rate-limit refusals do not count).
    #[serde(default)]
    pub failures: u32,
    /// Unix seconds before which no new order is placed.
    #[serde(default)]
    pub next_retry: Option<i64>,
    /// Unix seconds of the last change.
    pub updated: i64,
}

#[derive(Serialize, Deserialize)]
struct AccountFile {
    directory_url: String,
    credentials: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Creates the cache folders if needed.
    pub fn create(&self) -> Result<(), TlsError> {
        let certs = self.dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(|source| TlsError::Io {
            path: certs,
            source,
        })
    }

    fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{name}.pem"))
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{name}.key.pem"))
    }

    /// The stored account credentials for `directory_url`, if any.
    pub fn account(&self, directory_url: &str) -> Option<serde_json::Value> {
        let text = std::fs::read(self.dir.join("account.json")).ok()?;
        let file: AccountFile = serde_json::from_slice(&text).ok()?;
        (file.directory_url == directory_url).then_some(file.credentials)
    }

    pub fn save_account(
        &self,
        directory_url: &str,
        credentials: serde_json::Value,
    ) -> Result<(), TlsError> {
        let file = AccountFile {
            directory_url: directory_url.to_owned(),
            credentials,
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| TlsError::Acme(format!("cannot serialise the account: {e}")))?;
        write_atomic(&self.dir.join("account.json"), &bytes, true)
    }

    /// Every readable cached certificate, by the name it was ordered for.
    /// Unreadable files are logged and skipped.
    pub fn load_certs(&self) -> Vec<(String, LoadedCert)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("certs")) else {
            return out;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let Some(name) = file.strip_suffix(".pem") else {
                continue;
            };
            if name.ends_with(".key") {
                continue;
            }
            match self.load_cert(name) {
                Ok(c) => out.push((name.to_owned(), c)),
                Err(e) => {
                    tracing::warn!(name, error = %e, "skipping an unreadable cached certificate")
                }
            }
        }
        out
    }

    pub fn load_cert(&self, name: &str) -> Result<LoadedCert, TlsError> {
        let read =
            |p: PathBuf| std::fs::read(&p).map_err(|source| TlsError::Io { path: p, source });
        let chain = read(self.cert_path(name))?;
        let key = read(self.key_path(name))?;
        parse_pem(&chain, &key, name)
    }

    /// Writes a new chain and key for `name` (key first, so a chain on disk
    /// always has its key).
    pub fn save_cert(&self, name: &str, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        write_atomic(&self.key_path(name), key_pem.as_bytes(), true)?;
        write_atomic(&self.cert_path(name), chain_pem.as_bytes(), false)
    }

    pub fn load_state(&self) -> BTreeMap<String, NameState> {
        std::fs::read(self.dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_state(&self, state: &BTreeMap<String, NameState>) -> Result<(), TlsError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| TlsError::Acme(format!("cannot serialise the order state: {e}")))?;
        write_atomic(&self.dir.join("state.json"), &bytes, false)
    }
}

fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
