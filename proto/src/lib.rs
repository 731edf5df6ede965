//! The erlbridge helper's gRPC API, `erlbridge.helper.v1`, generated from
//! `erlbridge/helper/v1/helper.proto` (the single source of truth; read its comments for what
//! each field means).
//!
//! `erlbridge-helperd` implements [`v1::helper_server::Helper`]; the `erlbridge` client talks to
//! it through [`v1::helper_client::HelperClient`] over a Unix socket.

/// Version 1 of the helper API.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("erlbridge.helper.v1");
}

/// The API version this crate describes; the helper reports its own in `WhoAmIResponse`.
pub const API_VERSION: u32 = 1;

/// Where the helper listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/erlbridge/helper.sock";
