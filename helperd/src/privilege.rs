//! Keeping only CAP_NET_ADMIN. Capabilities are per thread, so this runs in `main` before the
//! async runtime starts any thread. The bounding set goes too, so the `nft` and `ip` helperd
//! runs (as root) inherit CAP_NET_ADMIN and nothing else.

use caps::{CapSet, Capability, CapsHashSet};
use tracing::{debug, info};

/// The one capability helperd keeps.
pub const KEEP: Capability = Capability::CAP_NET_ADMIN;

/// Why the capabilities could not be narrowed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// helperd was started without CAP_NET_ADMIN.
    #[error(
        "erlbridge-helperd needs CAP_NET_ADMIN to change nftables; run it as root (its systemd \
         unit does)"
    )]
    NoNetAdmin,
    /// A capability set could not be changed.
    #[error("cannot change the {set} capability set")]
    Change {
        /// Which set.
        set: &'static str,
        /// What the kernel said.
        #[source]
        source: caps::errors::CapsError,
    },
}

fn change<T>(
    set: &'static str,
    result: Result<T, caps::errors::CapsError>,
) -> Result<T, PrivilegeError> {
    result.map_err(|source| PrivilegeError::Change { set, source })
}

/// Drops every capability but CAP_NET_ADMIN from the bounding, inheritable, permitted and
/// effective sets, and raises it in the ambient set so children keep it even as non-root.
pub fn keep_only_net_admin() -> Result<(), PrivilegeError> {
    if !change("permitted", caps::has_cap(None, CapSet::Permitted, KEEP))? {
        return Err(PrivilegeError::NoNetAdmin);
    }
    let keep: CapsHashSet = [KEEP].into_iter().collect();
    for cap in change("bounding", caps::read(None, CapSet::Bounding))? {
        if cap != KEEP {
            change("bounding", caps::drop(None, CapSet::Bounding, cap))?;
            debug!(capability = %cap, "dropped from the bounding set");
        }
    }
    change("inheritable", caps::set(None, CapSet::Inheritable, &keep))?;
    change("effective", caps::set(None, CapSet::Effective, &keep))?;
    change("permitted", caps::set(None, CapSet::Permitted, &keep))?;
    change("ambient", caps::set(None, CapSet::Ambient, &keep))?;
    info!("capabilities narrowed to CAP_NET_ADMIN");
    Ok(())
}

/// Drops every capability, for a helper that will change nothing in the kernel. The bounding
/// set is emptied too when helperd may (CAP_SETPCAP, as root by hand); under its unit it holds
/// only CAP_NET_ADMIN, and with nothing permitted nothing can be raised again.
pub fn keep_none() -> Result<(), PrivilegeError> {
    if change(
        "effective",
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP),
    )? {
        for cap in change("bounding", caps::read(None, CapSet::Bounding))? {
            change("bounding", caps::drop(None, CapSet::Bounding, cap))?;
        }
    }
    change("ambient", caps::clear(None, CapSet::Ambient))?;
    change("inheritable", caps::clear(None, CapSet::Inheritable))?;
    change("effective", caps::clear(None, CapSet::Effective))?;
    change("permitted", caps::clear(None, CapSet::Permitted))?;
    info!("every capability dropped");
    Ok(())
}
