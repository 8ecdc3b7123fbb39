//! [`Store`]: what the admin API made (resellers, tenants, keys, sealed
//! credentials), kept in one JSON file beside the configuration and merged
//! over it at start, at every reload and after every change.
//!
//! Merging is by reseller id. A reseller the file declares keeps everything
//! the file says; the store adds tenants and admin keys to it. A reseller the
//! file does not declare comes whole from the store. The file is rewritten
//! whole (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old store or the new one.

use crate::config::{GatewayConfig, ResellerConfig};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The store file's format version.
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    #[serde(default)]
    pub version: u32,
    /// Whole resellers (made through the API), or, under the id of one the
    /// configuration declares, only the tenants and admin keys added to it.
    #[serde(default)]
    pub resellers: Vec<ResellerConfig>,
}

impl Store {
    /// Parses a store read from `what` (a path, a Redis key).
    pub fn parse(text: &str, what: &str) -> Result<Self, String> {
        let store: Store = serde_json::from_str(text)
            .map_err(|e| format!("the admin store {what} is not valid: {e}"))?;
        if store.version > VERSION {
            return Err(format!(
                "the admin store {what} has version {}, newer than this gateway's {VERSION}",
                store.version
            ));
        }
        Ok(store)
    }

    /// Writes the store whole, readable by its owner only.
    /// Returns the bytes written.
    pub fn save(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let mut text = self.to_json().map_err(std::io::Error::other)?;
        text.push(b'\n');
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("admin-store")
        ));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(text)
    }

    /// The store's JSON at this gateway's format version, as the file and
    /// Redis keep it (serialised in place, not copied first).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Out<'a> {
            version: u32,
            resellers: &'a [ResellerConfig],
        }
        serde_json::to_vec_pretty(&Out {
            version: VERSION,
            resellers: &self.resellers,
        })
    }

    /// `base` with the store merged in (see the module's comment).
    pub fn merge(&self, base: &GatewayConfig) -> GatewayConfig {
        let mut config = base.clone();
        for r in &self.resellers {
            match config.resellers.iter_mut().find(|d| d.id == r.id) {
                Some(declared) => {
                    declared.tenants.extend(r.tenants.iter().cloned());
                    declared
                        .admin_key_hashes
                        .extend(r.admin_key_hashes.iter().cloned());
                }
                None => config.resellers.push(r.clone()),
            }
        }
        config
    }

    /// The store's entry for reseller `id`, made (empty) if there is none.
    pub fn entry(&mut self, id: &str) -> &mut ResellerConfig {
        let at = match self.resellers.iter().position(|r| r.id == id) {
            Some(i) => i,
            None => {
                self.resellers.push(ResellerConfig {
                    id: id.to_owned(),
                    name: None,
                    domains: Vec::new(),
                    plan: None,
                    tenants: Vec::new(),
                    credentials: Default::default(),
                    admin_key_hashes: Vec::new(),
                    branding: Default::default(),
                });
                self.resellers.len() - 1
            }
        };
        &mut self.resellers[at]
    }

    /// The store's entry for reseller `id`, if any.
    pub fn get(&self, id: &str) -> Option<&ResellerConfig> {
        self.resellers.iter().find(|r| r.id == id)
    }

    /// Drops entries left with nothing in them (an overlay whose last tenant
    /// went), so that the file holds only what was made.
    pub fn prune(&mut self, declared: &GatewayConfig) {
        self.resellers.retain(|r| {
            let is_declared = declared.resellers.iter().any(|d| d.id == r.id);
            !is_declared || !r.tenants.is_empty() || !r.admin_key_hashes.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> GatewayConfig {
        GatewayConfig::parse(
            "[[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"d\"\nprovider = \"m\"\n\
             [[plans]]\nname = \"p\"\nmodels = [\"d\"]\n\
             [[resellers]]\nid = \"acme\"\nname = \"Acme\"\n\
             [[resellers.tenants]]\nid = \"t\"\nplan = \"p\"\nkey_hashes = []\n",
        )
        .unwrap()
    }

    fn tenant(id: &str) -> crate::config::TenantConfig {
        serde_json::from_value(serde_json::json!({"id": id, "plan": "p", "key_hashes": []}))
            .unwrap()
    }

    #[test]
    fn a_declared_reseller_keeps_its_fields_and_gains_the_stores_tenants() {
        let mut store = Store::default();
        let e = store.entry("acme");
        e.name = Some("ignored".into());
        e.tenants.push(tenant("api"));
        store.entry("new").tenants.push(tenant("x"));
        let merged = store.merge(&base());
        assert_eq!(merged.resellers.len(), 2);
        let acme = &merged.resellers[0];
        assert_eq!(acme.name.as_deref(), Some("Acme"));
        let ids: Vec<&str> = acme.tenants.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t", "api"]);
        assert_eq!(merged.resellers[1].id, "new");
    }

    #[test]
    fn the_store_survives_a_round_trip_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let load = |p: &Path| Store::parse(&std::fs::read_to_string(p).unwrap(), "test");
        let mut store = Store::default();
        store.entry("new").tenants.push(tenant("x"));
        store.save(&path).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.version, VERSION);
        assert_eq!(back.resellers[0].tenants[0].id, "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "{\"version\": 1, \"resellers\": [], \"extra\": 1}").unwrap();
        assert!(load(&path).unwrap_err().contains("not valid"));
    }

    #[test]
    fn an_overlay_left_empty_is_pruned_and_a_whole_reseller_is_not() {
        let mut store = Store::default();
        store.entry("acme");
        store.entry("new");
        store.prune(&base());
        let ids: Vec<&str> = store.resellers.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["new"]);
    }
}
