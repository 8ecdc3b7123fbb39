//! Livery's integration tests: one binary, one module per feature. Each test starts
//! its own mock provider and gateway on ephemeral loopback ports.

// Test code asserts by panicking; the no-panic rule is for the request path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admin;
mod anthropic;
mod branding;
mod cli;
mod endpoints;
mod isolation;
mod ledger;
mod limits;
mod limits_gateway;
mod responses;
mod routing;
mod sdk;
mod streaming;
mod tls;
mod upstream;
mod usage;
mod vault;
