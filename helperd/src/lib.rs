//! erlbridge-helperd: the small privileged half of erlbridge.
//!
//! The `erlbridge` client runs as an ordinary user; to redirect its own connections to a pod
//! address onto its local port-forward listeners it needs a DNAT rule, which needs
//! CAP_NET_ADMIN. helperd is the root service that adds exactly such rules and nothing else:
//! it serves the `erlbridge.helper.v1` API (crate `erlbridge-proto`) on a Unix socket, learns
//! who the caller is from the kernel ([`peer`]), turns each request into typed values
//! ([`request`]), lets one pure function decide it ([`policy`]), applies the result through a
//! backend ([`nft`], [`alias`]) and records it against the caller's session ([`session`]).
//! A session lives as long as the caller's OpenSession stream; when it ends, for whatever
//! reason, its rules go. [`service`] ties these together; [`server`] binds the socket and
//! decides at accept which connections it serves ([`connection`]); [`process`] starts the
//! process clean.
#![deny(unsafe_code)]

pub mod alias;
pub mod config;
pub mod connection;
pub mod error;
pub mod exec;
#[cfg(test)]
pub mod fake;
pub mod nft;
pub mod peer;
pub mod policy;
pub mod privilege;
pub mod process;
pub mod request;
pub mod server;
pub mod service;
pub mod session;
