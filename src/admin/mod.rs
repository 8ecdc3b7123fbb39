//! The admin API (platform- and reseller-scoped keys managing resellers, tenants,
//! keys, domains and usage). Not built yet: tenancy is declared in gateway.toml.
