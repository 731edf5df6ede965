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
    /// The kernel change failed.
    #[error("the helper could not change the host's firewall or loopback addresses")]
    Backend(#[source] BackendError),
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        Error::Backend(e)
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
        RuleQuota { .. } | SessionQuota { .. } | AliasQuota { .. } => Code::ResourceExhausted,
        Duplicate { .. } | AliasHeld { .. } => Code::AlreadyExists,
        UnknownSession { .. } | UnknownMapping { .. } | UnknownAlias { .. } => Code::NotFound,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Invalid(invalid) => Status::invalid_argument(invalid.to_string()),
            Error::Refused(refusal) => Status::new(refusal_code(&refusal), refusal.to_string()),
            Error::Backend(_) => Status::internal(
                "the helper could not change the host's firewall; nothing was added. Its log \
                 (journalctl -u erlbridge-helperd) has the details for your administrator",
            ),
        }
    }
}
