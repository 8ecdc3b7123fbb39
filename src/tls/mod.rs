//! TLS termination and on-demand ACME certificates for reseller domains (issue 8).
//! Not built yet: listeners speak plain HTTP/1.1 and h2c.
