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

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the helper's Unix socket at `path`. The connection is made at once, so an
/// absent helper or a socket the caller may not open is reported here.
pub async fn connect(
    path: impl Into<PathBuf>,
) -> Result<v1::helper_client::HelperClient<Channel>, tonic::transport::Error> {
    let path = path.into();
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::from_static("http://helper.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await?;
    Ok(v1::helper_client::HelperClient::new(channel))
}
