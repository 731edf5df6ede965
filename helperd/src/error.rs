//! helperd's one error type for a request, and how it reaches the caller as a gRPC status.
//! Invalid input, policy refusals and backend failures map to their own codes; a backend's
//! details go to the log, not to the caller.

use tonic::{Code, Status};

use crate::nft::BackendError;
use crate::policy::Refusal;
use crate::request::Invalid;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is malformed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The policy said no.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The kernel change failed, so nothing changed.
    #[error("the helper could not {change} a rule or alias")]
    Backend {
        /// What the request would have changed.
        change: Change,
        /// What the backend said.
        #[source]
        source: BackendError,
    },
}

/// The kind of kernel change a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A mapping or alias added.
    Add,
    /// A mapping or alias removed.
    Remove,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Add => "add",
            Change::Remove => "remove",
        })
    }
}

impl Error {
    /// A failed addition: nothing was added.
    pub fn adding(source: BackendError) -> Error {
        Error::Backend {
            change: Change::Add,
            source,
        }
    }

    /// A failed removal: what was there is still there.
    pub fn removing(source: BackendError) -> Error {
        Error::Backend {
            change: Change::Remove,
            source,
        }
    }
}

/// The gRPC code of a refusal.
pub fn refusal_code(refusal: &Refusal) -> Code {
    use Refusal::*;
    match refusal {
        NotInGroup { .. }
        | NoSuchGroup { .. }
        | HostAddress { .. }
        | OutsideNetworks { .. }
        | AliasesDisabled => Code::PermissionDenied,
        NotAPodAddress { .. }
        | Ipv4Mapped { .. }
        | TargetNotLoopback { .. }
        | FamilyMismatch { .. }
        | AliasIpv6 { .. } => Code::InvalidArgument,
        RuleQuota { .. }
        | SessionQuota { .. }
        | AliasQuota { .. }
        | ConnectionQuota { .. }
        | ConnectionLimit { .. } => Code::ResourceExhausted,
        Duplicate { .. } | AliasHeld { .. } => Code::AlreadyExists,
        UnknownSession { .. } | UnknownMapping { .. } | UnknownAlias { .. } => Code::NotFound,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let details = "Its log (journalctl -u erlbridge-helperd) has the details for your \
                       administrator";
        match e {
            Error::Invalid(invalid) => Status::invalid_argument(invalid.to_string()),
            Error::Refused(refusal) => Status::new(refusal_code(&refusal), refusal.to_string()),
            Error::Backend {
                change: Change::Add,
                ..
            } => Status::internal(format!(
                "the helper could not change the host's firewall or loopback addresses; nothing \
                 was added. {details}"
            )),
            Error::Backend {
                change: Change::Remove,
                ..
            } => Status::internal(format!(
                "the helper could not change the host's firewall or loopback addresses; the \
                 mapping or alias is still in place, and goes when your session ends. {details}"
            )),
        }
    }
}

/// What every call gets from a helper that could not start (`reason` says why): the socket
/// stays up and the one recovery command is in the answer.
pub fn could_not_start(reason: &str) -> Status {
    Status::failed_precondition(format!(
        "the helper could not start: {reason}; fix it, then run: sudo systemctl restart \
         erlbridge-helperd"
    ))
}

/// An error and its causes, on one line: "X: because Y".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
