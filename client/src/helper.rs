//! The client's side of erlbridge-helperd: one session for the whole bridge, which lives as
//! long as this process holds it; mappings added to it vanish with it, however the process
//! ends.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use erlbridge_proto::v1 as pb;
use tonic::transport::Channel;

/// The environment variable that overrides the socket path.
pub const ENV_HELPER_SOCKET: &str = "ERLBRIDGE_HELPER_SOCKET";

/// Why the helper could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// Nothing answers on the socket.
    #[error(
        "erlbridge-helperd is not reachable at {socket}. Is it installed and running? \
         (systemctl status erlbridge-helperd.socket; ERLBRIDGE_HELPER_SOCKET or --helper-socket \
         name another socket)"
    )]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// The socket exists but this user may not open it.
    #[error("you may not use erlbridge-helperd's socket {socket}: {}", access_advice(.group, *.stale))]
    NoAccess {
        /// The socket.
        socket: PathBuf,
        /// The socket's group, by name where it has one.
        group: String,
        /// Whether the group database lists this user in it (the login predates that).
        stale: bool,
    },
    /// The helper runs but could not start (an invalid configuration, say); its message says
    /// what to fix and how to bring it back.
    #[error("{message} (see journalctl -u erlbridge-helperd)")]
    NotStarted {
        /// The helper's own words.
        message: String,
    },
    /// The helper said no.
    #[error("erlbridge-helperd refused {what}: {message}")]
    Refused {
        /// What was asked.
        what: String,
        /// The helper's reason, which says what to do.
        message: String,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the helper said, as its own words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Said(pub String);

/// A live helper session.
pub struct Session {
    client: pb::helper_client::HelperClient<Channel>,
    socket: PathBuf,
    id: u64,
    // Holding the stream is what keeps the session (and its rules) alive.
    events: tonic::Streaming<pb::SessionEvent>,
}

fn refused(what: impl Into<String>, status: tonic::Status) -> HelperError {
    HelperError::Refused {
        what: what.into(),
        message: status.message().to_owned(),
    }
}

fn unreachable(socket: &Path, why: impl Into<String>) -> HelperError {
    HelperError::Unreachable {
        socket: socket.to_owned(),
        source: Box::new(Said(why.into())),
    }
}

/// What to do about a socket this user may not open: join its group, or, where the group
/// database already lists the user, start a login that has it.
pub fn access_advice(group: &str, stale: bool) -> String {
    if stale {
        format!(
            "you were added to group {group}, but this login started before that; log out and in \
             again (or run `newgrp {group}`)"
        )
    } else {
        format!(
            "ask your administrator to add you to group {group} (usermod -aG {group} <your user>), \
             then log in again"
        )
    }
}

/// The refusal for `socket`, with the advice that fits this user.
fn no_access(socket: &Path) -> HelperError {
    use std::os::unix::fs::MetadataExt as _;
    let gid = std::fs::metadata(socket).map_or(0, |m| m.gid());
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    let has = nix::unistd::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid));
    let listed = in_group_database(nix::unistd::getuid().as_raw(), gid);
    HelperError::NoAccess {
        socket: socket.to_owned(),
        group,
        stale: listed && !has,
    }
}

/// Whether the group database lists `uid`'s user in `gid` (though a process may not have it).
pub fn in_group_database(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    user.gid.as_raw() == gid
        || nix::unistd::getgrouplist(&name, user.gid)
            .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// Connects to the helper, telling "not running" from "not yours to open".
pub async fn connect(
    socket: &Path,
) -> Result<pb::helper_client::HelperClient<Channel>, HelperError> {
    erlbridge_proto::connect(socket)
        .await
        .map_err(|e| match io_kind(&e) {
            Some(std::io::ErrorKind::PermissionDenied) => no_access(socket),
            _ => HelperError::Unreachable {
                socket: socket.to_owned(),
                source: Box::new(e),
            },
        })
}

/// What a failed call that asks nothing of the policy means: a helper that could not start,
/// or one that is not there.
fn failed_call(socket: &Path, status: &tonic::Status) -> HelperError {
    if status.code() == tonic::Code::FailedPrecondition {
        return HelperError::NotStarted {
            message: status.message().to_owned(),
        };
    }
    unreachable(socket, status.message())
}

/// The helper's view of this process, its version and its policy.
pub async fn who_am_i(socket: &Path) -> Result<pb::WhoAmIResponse, HelperError> {
    let mut client = connect(socket).await?;
    client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| failed_call(socket, &status))
}

/// This user's live sessions (every session, for root).
pub async fn sessions(socket: &Path) -> Result<Vec<pb::SessionInfo>, HelperError> {
    let mut client = connect(socket).await?;
    client
        .list_sessions(pb::ListSessionsRequest {})
        .await
        .map(|r| r.into_inner().sessions)
        .map_err(|status| failed_call(socket, &status))
}

impl Session {
    /// Connects to the helper at `socket` and opens a session labelled `label`.
    pub async fn open(socket: &Path, label: &str) -> Result<Session, HelperError> {
        let mut client = connect(socket).await?;
        let open = client
            .open_session(pb::OpenSessionRequest {
                label: label.chars().take(128).collect(),
            })
            .await;
        let mut events = match open {
            Ok(response) => response.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::FailedPrecondition
                ) =>
            {
                return Err(failed_call(socket, &status));
            }
            Err(status) => return Err(refused("a session", status)),
        };
        match events.message().await.ok().flatten().and_then(|e| e.event) {
            Some(pb::session_event::Event::Opened(opened)) => Ok(Session {
                client,
                socket: socket.to_owned(),
                id: opened.session_id,
                events,
            }),
            None => Err(unreachable(socket, "the helper closed the session at once")),
        }
    }

    /// Redirects this user's connections to `pod` to 127.0.0.1:`local_port`.
    pub async fn map(&mut self, pod: SocketAddr, local_port: u16) -> Result<(), HelperError> {
        self.client
            .add_mapping(pb::AddMappingRequest {
                session_id: self.id,
                pod_ip: pod.ip().to_string(),
                pod_port: pod.port().into(),
                local_port: local_port.into(),
                local_ip: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|status| self.failed(format!("a mapping for {pod}"), status))
    }

    /// Removes the redirect of `pod`.
    pub async fn unmap(&mut self, pod: SocketAddr) -> Result<(), HelperError> {
        self.client
            .remove_mapping(pb::RemoveMappingRequest {
                session_id: self.id,
                pod_ip: pod.ip().to_string(),
                pod_port: pod.port().into(),
            })
            .await
            .map(|_| ())
            .map_err(|status| self.failed(format!("removing the mapping for {pod}"), status))
    }

    /// Puts `ip` on the loopback interface for this session (so connect() finds a route).
    pub async fn alias(&mut self, ip: IpAddr) -> Result<(), HelperError> {
        self.client
            .add_alias(pb::AddAliasRequest {
                session_id: self.id,
                ip: ip.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|status| self.failed(format!("a loopback alias for {ip}"), status))
    }

    /// Releases this session's alias of `ip`.
    pub async fn unalias(&mut self, ip: IpAddr) -> Result<(), HelperError> {
        self.client
            .remove_alias(pb::RemoveAliasRequest {
                session_id: self.id,
                ip: ip.to_string(),
            })
            .await
            .map(|_| ())
            .map_err(|status| self.failed(format!("removing the loopback alias {ip}"), status))
    }

    /// This user's live sessions (on this session's connection).
    pub async fn sessions(&mut self) -> Result<Vec<pb::SessionInfo>, HelperError> {
        self.client
            .list_sessions(pb::ListSessionsRequest {})
            .await
            .map(|r| r.into_inner().sessions)
            .map_err(|status| self.failed("listing sessions", status))
    }

    /// The policy the helper applies (on this session's connection).
    pub async fn policy(&mut self) -> Result<pb::Policy, HelperError> {
        self.client
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map(|r| r.into_inner().policy.unwrap_or_default())
            .map_err(|status| self.failed("telling its policy", status))
    }

    /// A failed call: the helper refused (its message says why), could not start, or is gone
    /// (a dropped connection is not a refusal).
    fn failed(&self, what: impl Into<String>, status: tonic::Status) -> HelperError {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::FailedPrecondition => failed_call(&self.socket, &status),
            _ => refused(what, status),
        }
    }

    /// Completes when the helper ends the session (it stopped, restarted, or dropped us).
    pub async fn ended(&mut self) {
        while let Ok(Some(_)) = self.events.message().await {}
    }
}

/// The pod networks the helper's policy allows.
pub fn allowed_networks(policy: &pb::Policy) -> Vec<ipnet::IpNet> {
    policy
        .allowed_cidrs
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The bridge's line to the helper: a session that can be lost (the helper stopped or
/// restarted) and opened again. Each session has a generation number; redirects made on an
/// older one are gone, and the bridge's plan adds them again ([`crate::reconcile`]).
pub struct Link {
    socket: PathBuf,
    label: String,
    session: Option<Session>,
    generation: u64,
    policy: pb::Policy,
}

impl Link {
    /// Opens the first session and learns the helper's policy; failing here is reported, not
    /// retried.
    pub async fn open(socket: &Path, label: &str) -> Result<Link, HelperError> {
        let mut session = Session::open(socket, label).await?;
        let policy = session.policy().await?;
        Ok(Link {
            session: Some(session),
            socket: socket.to_owned(),
            label: label.to_owned(),
            generation: 1,
            policy,
        })
    }

    /// The live session's id.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    /// This user's live sessions, this one included.
    pub async fn own_sessions(&mut self) -> Result<Vec<pb::SessionInfo>, HelperError> {
        match &mut self.session {
            Some(session) => session.sessions().await,
            None => Ok(Vec::new()),
        }
    }

    /// The helper's policy, as it said when the live (or last) session opened.
    pub fn policy(&self) -> &pb::Policy {
        &self.policy
    }

    /// The live (or last) session's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a session is live.
    pub fn is_live(&self) -> bool {
        self.session.is_some()
    }

    /// Redirects `pod` to 127.0.0.1:`local_port` in the live session; without one there is
    /// nothing to do (the next session's plan adds it).
    pub async fn map(&mut self, pod: SocketAddr, local_port: u16) -> Result<(), HelperError> {
        match &mut self.session {
            Some(session) => session.map(pod, local_port).await,
            None => Ok(()),
        }
    }

    /// Removes the redirect of `pod`.
    pub async fn unmap(&mut self, pod: SocketAddr) -> Result<(), HelperError> {
        match &mut self.session {
            Some(session) => session.unmap(pod).await,
            None => Ok(()),
        }
    }

    /// Puts `ip` on the loopback interface in the live session (the next session's plan adds
    /// it again).
    pub async fn alias(&mut self, ip: IpAddr) -> Result<(), HelperError> {
        match &mut self.session {
            Some(session) => session.alias(ip).await,
            None => Ok(()),
        }
    }

    /// Releases the live session's alias of `ip`.
    pub async fn unalias(&mut self, ip: IpAddr) -> Result<(), HelperError> {
        match &mut self.session {
            Some(session) => session.unalias(ip).await,
            None => Ok(()),
        }
    }

    /// Completes when the live session ends (never, while there is none).
    pub async fn ended(&mut self) {
        match &mut self.session {
            Some(session) => session.ended().await,
            None => std::future::pending().await,
        }
        self.session = None;
    }

    /// Opens a new session, of the next generation (the helper's policy may have changed).
    pub async fn reopen(&mut self) -> Result<(), HelperError> {
        let mut session = Session::open(&self.socket, &self.label).await?;
        self.policy = session.policy().await?;
        self.session = Some(session);
        self.generation += 1;
        Ok(())
    }
}

/// The kind of the first I/O error in `e`'s chain of causes.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}
