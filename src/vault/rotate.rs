//! Rewriting a configuration file's sealed credentials in place (`livery vault
//! rotate`), keeping its comments and layout (`toml_edit`), and checking them all
//! (`livery vault verify`). Rotation re-wraps data keys only: no credential is
//! ever decrypted to disk or printed.

use super::{CredentialOwner, Keyring, SealedKey, VaultError};
use std::sync::Arc;
use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The outcome for one credential.
#[derive(Debug)]
pub struct CredentialReport {
    pub owner: CredentialOwner,
    pub provider: String,
    pub result: Result<(), VaultError>,
}

/// Visits every `credentials` string of the document with its owner.
/// Resellers and tenants may be written as `[[resellers]]` tables or as inline
/// arrays of inline tables (`tenants = [{ id = "dental", ... }]`): the
/// configuration loads either, so both are visited (a credential skipped here
/// would stay under the old KEK while rotation reported success).
fn for_each_credential(
    doc: &mut DocumentMut,
    mut f: impl FnMut(&CredentialOwner, &str, &mut Value),
) {
    for reseller in tables_mut(doc.get_mut("resellers")) {
        let Some(rid) = id_of(reseller) else {
            continue;
        };
        let owner = CredentialOwner::Reseller(rid.clone());
        visit_table(reseller.get_mut("credentials"), &owner, &mut f);
        for tenant in tables_mut(reseller.get_mut("tenants")) {
            let Some(tid) = id_of(tenant) else {
                continue;
            };
            let owner = CredentialOwner::Tenant {
                reseller: rid.clone(),
                tenant: tid,
            };
            visit_table(tenant.get_mut("credentials"), &owner, &mut f);
        }
    }
}

/// A reseller's or tenant's `id`.
fn id_of(table: &dyn TableLike) -> Option<Arc<str>> {
    table.get("id").and_then(Item::as_str).map(Arc::from)
}

/// The tables of an array, whichever way it is written.
fn tables_mut(item: Option<&mut Item>) -> Vec<&mut dyn TableLike> {
    match item {
        Some(Item::ArrayOfTables(tables)) => {
            tables.iter_mut().map(|t| t as &mut dyn TableLike).collect()
        }
        Some(Item::Value(Value::Array(values))) => values
            .iter_mut()
            .filter_map(Value::as_inline_table_mut)
            .map(|t| t as &mut dyn TableLike)
            .collect(),
        _ => Vec::new(),
    }
}

fn visit_table(
    item: Option<&mut Item>,
    owner: &CredentialOwner,
    f: &mut impl FnMut(&CredentialOwner, &str, &mut Value),
) {
    let Some(item) = item else { return };
    if let Some(t) = item.as_table_like_mut() {
        for (provider, v) in t.iter_mut() {
            if let Some(v) = v.as_value_mut() {
                f(owner, &provider, v);
            }
        }
    }
}

/// Re-wraps every sealed credential under the keyring's active KEK. Returns the
/// new text and a report per credential; the text is only usable if every
/// report is `Ok`.
pub fn rotate_config_text(
    text: &str,
    keyring: &Keyring,
) -> Result<(String, Vec<CredentialReport>), VaultError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        VaultError::BadKekConfig(format!("cannot parse the configuration: {e}"))
    })?;
    let mut reports = Vec::new();
    for_each_credential(&mut doc, |owner, provider, value| {
        let result = value
            .as_str()
            .ok_or_else(|| VaultError::Malformed("not a string".into()))
            .and_then(SealedKey::parse)
            .and_then(|sealed| keyring.rewrap(&sealed, owner, provider))
            .map(|rotated| {
                let decor = value.decor().clone();
                *value = Value::from(rotated.to_sealed_string());
                *value.decor_mut() = decor;
            });
        reports.push(CredentialReport {
            owner: owner.clone(),
            provider: provider.to_owned(),
            result,
        });
    });
    Ok((doc.to_string(), reports))
}

/// Unseals every credential in memory and reports which fail.
pub fn verify_config_text(
    text: &str,
    keyring: &Keyring,
) -> Result<Vec<CredentialReport>, VaultError> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        VaultError::BadKekConfig(format!("cannot parse the configuration: {e}"))
    })?;
    let mut reports = Vec::new();
    for_each_credential(&mut doc, |owner, provider, value| {
        let result = value
            .as_str()
            .ok_or_else(|| VaultError::Malformed("not a string".into()))
            .and_then(SealedKey::parse)
            .and_then(|sealed| keyring.unseal(&sealed, owner, provider))
            .map(drop);
        reports.push(CredentialReport {
            owner: owner.clone(),
            provider: provider.to_owned(),
            result,
        });
    });
    Ok(reports)
}
