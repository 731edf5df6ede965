//! The socket: binding it with the right owner and mode, and serving the helper on it until a
//! signal says stop, then removing everything the sessions added.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

use erlbridge_proto::v1::helper_server::HelperServer;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::info;

use crate::alias::AliasBackend;
use crate::nft::NatBackend;
use crate::peer::PeerStream;
use crate::service::Helper;

/// Why the socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A step of binding failed.
    #[error("cannot {step} {path}")]
    Bind {
        /// What was being done.
        step: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A non-socket file stands where the socket goes.
    #[error("{0} exists and is not a socket; remove it or configure another `socket` path")]
    NotASocket(PathBuf),
    /// The gRPC server stopped with an error.
    #[error("the gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Binds the socket at `path`: parent directory created if missing, a stale socket replaced,
/// owner root, group `gid`, mode 0660 — or 0666 when `open_to_all` (uids listed in
/// allowed_uids need not be in the group; the helper checks every caller itself).
pub fn bind(
    path: &Path,
    gid: Option<u32>,
    open_to_all: bool,
) -> Result<StdUnixListener, ServeError> {
    let fail = |step, source| ServeError::Bind {
        step,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("set the mode of the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| fail("remove the stale socket", e))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("inspect", e)),
    }
    let listener = StdUnixListener::bind(path).map_err(|e| fail("bind", e))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid)).map_err(|e| fail("chown", e))?;
    }
    let mode = if open_to_all { 0o666 } else { 0o660 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail("set the mode of", e))?;
    info!(socket = %path.display(), mode = format_args!("{mode:o}"), gid, "listening");
    Ok(listener)
}

/// Serves `helper` on `listener` until `shutdown` completes, then removes every rule and alias.
pub async fn serve<N: NatBackend, A: AliasBackend>(
    listener: StdUnixListener,
    helper: Helper<N, A>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let bind_error = |source| ServeError::Bind {
        step: "listen on",
        path: PathBuf::from("the socket"),
        source,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = UnixListener::from_std(listener).map_err(bind_error)?;
    let incoming =
        UnixListenerStream::new(listener).map(|accepted| accepted.and_then(PeerStream::accept));
    let server = Server::builder()
        .add_service(HelperServer::new(helper.clone()))
        .serve_with_incoming(incoming);
    // Sessions are long-lived streams, so a graceful drain would wait for ever: on the signal,
    // stop serving and remove what they added.
    let result = tokio::select! {
        result = server => result.map_err(ServeError::Transport),
        () = shutdown => {
            info!("stopping");
            Ok(())
        }
    };
    helper.teardown().await;
    result
}
