use super::*;
use std::sync::Arc;

fn kek(id: &str) -> Arc<dyn KeyEncryptionKey> {
    let var = format!(
        "LIVERY_TEST_KEK_{}",
        id.replace(['-', '.'], "_").to_uppercase()
    );
    std::env::set_var(&var, generate_kek().unwrap());
    Arc::new(EnvKek::load(id, &var).unwrap())
}

fn ring(ids: &[&str]) -> Keyring {
    let mut r = Keyring::default();
    for id in ids {
        r.add(kek(id));
    }
    r
}

fn dental() -> CredentialOwner {
    CredentialOwner::parse("tenant:acme/dental").unwrap()
}

const PLAIN: &str = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

#[test]
fn round_trip() {
    let r = ring(&["rt"]);
    let sealed = r.seal(&dental(), "openai", PLAIN).unwrap();
    let text = sealed.to_sealed_string();
    assert!(text.starts_with("lvk1:rt:"), "{text}");
    assert!(!text.contains("ABCDEFGH"));
    let parsed = SealedKey::parse(&text).unwrap();
    assert_eq!(
        r.unseal(&parsed, &dental(), "openai").unwrap().expose(),
        PLAIN
    );
    // Each seal uses a fresh data key and nonces.
    assert_ne!(
        r.seal(&dental(), "openai", PLAIN)
            .unwrap()
            .to_sealed_string(),
        text
    );
}

#[test]
fn a_flipped_bit_anywhere_fails_cleanly() {
    let r = ring(&["flip"]);
    let text = r
        .seal(&dental(), "openai", PLAIN)
        .unwrap()
        .to_sealed_string();
    let bytes = text.as_bytes();
    for i in 0..bytes.len() {
        for bit in 0..7 {
            let mut m = bytes.to_vec();
            m[i] ^= 1 << bit;
            let Ok(m) = String::from_utf8(m) else {
                continue;
            };
            let result = SealedKey::parse(&m).and_then(|s| r.unseal(&s, &dental(), "openai"));
            assert!(
                result.is_err(),
                "flipping bit {bit} of byte {i} still unsealed: {m}"
            );
        }
    }
}

#[test]
fn the_wrong_kek_fails() {
    let a = ring(&["same-id"]);
    let sealed = a.seal(&dental(), "openai", PLAIN).unwrap();
    // Another KEK under the same id: the wrapped data key does not open.
    let b = ring(&["same-id"]);
    assert!(matches!(
        b.unseal(&sealed, &dental(), "openai"),
        Err(VaultError::Unseal)
    ));
    // A keyring without that KEK says which one is missing.
    let c = ring(&["other"]);
    assert!(
        matches!(c.unseal(&sealed, &dental(), "openai"), Err(VaultError::UnknownKek(id)) if id == "same-id")
    );
}

#[test]
fn a_key_moved_to_another_owner_or_provider_fails() {
    let r = ring(&["move"]);
    let sealed = r.seal(&dental(), "openai", PLAIN).unwrap();
    for (owner, provider) in [
        ("tenant:acme/realty", "openai"),
        ("tenant:globex/dental", "openai"),
        ("reseller:acme", "openai"),
        ("platform", "openai"),
        ("tenant:acme/dental", "azure"),
    ] {
        let owner = CredentialOwner::parse(owner).unwrap();
        assert!(
            r.unseal(&sealed, &owner, provider).is_err(),
            "{owner} {provider}"
        );
    }
}

#[test]
fn rotation_rewraps_under_the_active_kek_and_keeps_the_credential() {
    let mut r = ring(&["old", "new"]);
    assert_eq!(r.active_id(), Some("old"));
    let sealed = r.seal(&dental(), "openai", PLAIN).unwrap();
    r.set_active("new").unwrap();
    let rotated = r.rewrap(&sealed, &dental(), "openai").unwrap();
    assert_eq!(rotated.kek_id, "new");
    assert!(rotated.to_sealed_string().starts_with("lvk1:new:"));
    assert_eq!(
        r.unseal(&rotated, &dental(), "openai").unwrap().expose(),
        PLAIN
    );
    // The rotated string no longer needs the old KEK.
    let mut only_new = Keyring::default();
    // A KEK loaded again from the same environment variable is the same key.
    only_new.add(Arc::new(
        EnvKek::load("new", "LIVERY_TEST_KEK_NEW").unwrap(),
    ));
    assert!(only_new.unseal(&rotated, &dental(), "openai").is_ok());
    assert!(only_new.unseal(&sealed, &dental(), "openai").is_err());
}

#[test]
fn owners_parse_and_print() {
    for text in ["tenant:acme/dental", "reseller:acme", "platform"] {
        assert_eq!(CredentialOwner::parse(text).unwrap().to_string(), text);
    }
    for bad in ["tenant:acme", "tenant:/x", "reseller:", "user:x", ""] {
        assert!(CredentialOwner::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn kek_material_must_be_32_bytes_of_base64() {
    std::env::set_var("LIVERY_TEST_KEK_SHORT", "c2hvcnQ=");
    assert!(matches!(
        EnvKek::load("s", "LIVERY_TEST_KEK_SHORT"),
        Err(VaultError::KekMaterial { .. })
    ));
    std::env::set_var("LIVERY_TEST_KEK_JUNK", "not base64 !!");
    assert!(matches!(
        EnvKek::load("j", "LIVERY_TEST_KEK_JUNK"),
        Err(VaultError::KekMaterial { .. })
    ));
    assert!(matches!(
        EnvKek::load("m", "LIVERY_TEST_KEK_UNSET_XYZ"),
        Err(VaultError::KekMissing { .. })
    ));
}

#[cfg(unix)]
#[test]
fn a_kek_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    std::fs::write(&path, generate_kek().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        FileKek::load("f", &path),
        Err(VaultError::KekPermissions { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kek: Arc<dyn KeyEncryptionKey> = Arc::new(FileKek::load("f", &path).unwrap());
    let mut r = Keyring::default();
    r.add(kek);
    let sealed = r.seal(&dental(), "openai", PLAIN).unwrap();
    assert_eq!(
        r.unseal(&sealed, &dental(), "openai").unwrap().expose(),
        PLAIN
    );
}

#[test]
fn policy_cuts_the_lookup_order() {
    let r = ring(&["policy"]);
    let t = r.seal(&dental(), "openai", "sk-tenant").unwrap();
    let res_owner = CredentialOwner::Reseller("acme".into());
    let rs = r.seal(&res_owner, "openai", "sk-reseller").unwrap();
    let platform = Secret::new("sk-platform".into());
    let pick = |policy, with_t: bool, with_r: bool, with_p: bool| {
        select_credential(
            policy,
            "openai",
            &r,
            with_t.then(|| StoredCredential {
                owner: dental(),
                sealed: &t,
            }),
            with_r.then(|| StoredCredential {
                owner: res_owner.clone(),
                sealed: &rs,
            }),
            with_p.then_some(&platform),
        )
        .map(|c| (c.owner, c.key.map(|k| k.expose().to_owned())))
    };
    use ByokPolicy::*;
    assert_eq!(
        pick(Preferred, true, true, true).unwrap(),
        (KeyOwner::Tenant, Some("sk-tenant".into()))
    );
    assert_eq!(
        pick(Preferred, false, true, true).unwrap(),
        (KeyOwner::Reseller, Some("sk-reseller".into()))
    );
    assert_eq!(
        pick(Preferred, false, false, true).unwrap(),
        (KeyOwner::Platform, Some("sk-platform".into()))
    );
    assert_eq!(
        pick(Preferred, false, false, false).unwrap(),
        (KeyOwner::None, None)
    );
    assert_eq!(
        pick(Required, true, true, true).unwrap(),
        (KeyOwner::Tenant, Some("sk-tenant".into()))
    );
    assert!(matches!(
        pick(Required, false, true, true),
        Err(VaultError::ProviderKeyNotConfigured(_))
    ));
    assert_eq!(
        pick(Never, true, true, true).unwrap(),
        (KeyOwner::Reseller, Some("sk-reseller".into()))
    );
    assert_eq!(
        pick(Never, true, false, true).unwrap(),
        (KeyOwner::Platform, Some("sk-platform".into()))
    );
}

/// Resellers and tenants written as inline arrays load like `[[…]]` tables,
/// so rotation and verification must find their credentials too (they were
/// skipped: rotation reported success and left them under the old KEK).
#[test]
fn rotation_and_verification_find_credentials_in_inline_arrays() {
    let mut r = ring(&["old", "new"]);
    let tenant = r
        .seal(&dental(), "openai", PLAIN)
        .unwrap()
        .to_sealed_string();
    let reseller = r
        .seal(
            &CredentialOwner::parse("reseller:acme").unwrap(),
            "openai",
            PLAIN,
        )
        .unwrap()
        .to_sealed_string();
    r.set_active("new").unwrap();
    for text in [
        format!(
            "[[resellers]]\nid = \"acme\"\ncredentials = {{ openai = \"{reseller}\" }}\n\
             tenants = [{{ id = \"dental\", plan = \"p\", key_hashes = [], credentials = {{ openai = \"{tenant}\" }} }}]\n"
        ),
        format!(
            "resellers = [{{ id = \"acme\", credentials = {{ openai = \"{reseller}\" }}, \
             tenants = [{{ id = \"dental\", plan = \"p\", key_hashes = [], credentials = {{ openai = \"{tenant}\" }} }}] }}]\n"
        ),
    ] {
        assert_eq!(verify_config_text(&text, &r).unwrap().len(), 2, "{text}");
        let (out, reports) = rotate_config_text(&text, &r).unwrap();
        assert_eq!(reports.len(), 2, "{text}");
        assert!(reports.iter().all(|rep| rep.result.is_ok()));
        assert!(!out.contains("lvk1:old:"), "{out}");
        assert_eq!(out.matches("lvk1:new:").count(), 2, "{out}");
    }
}
