//! Livery's integration tests: one binary, one module per feature. Each test starts
//! its own mock provider and gateway on ephemeral loopback ports.

mod support;

mod cli;
mod endpoints;
mod isolation;
mod sdk;
mod streaming;
mod upstream;
mod usage;
