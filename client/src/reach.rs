//! How a local node reaches a bridged pod node: the one seam between erlbridge's two ways
//! (DESIGN.md, "Two ways"). Both keep node names untouched and send the connection to
//! erlbridge's local forward of the node's distribution port.
//!
//! - `nat`: erlbridge-helperd redirects this user's connections to `podIP:port` onto the
//!   forwards (uid-scoped DNAT), so any local node works, even one already running. DNS-named
//!   nodes resolve through an ERL_INETRC file.
//! - `epmd`: no helper, no privilege: local nodes started with `-pa DIR -epmd_module
//!   erlbridge_epmd` ask the module erlbridge ships where a node is, and it answers from a map
//!   erlbridge keeps current (`nodes.eterm`). No route to the pod network is needed.
//!
//! [`crate::bridge`] asks the same questions of either and never branches on the mode itself.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::helper::{HelperError, Link};
use crate::inetrc::{self, InetrcError};
pub use crate::mode::{Mode, ModeChoice};
use crate::route::{self, NoRoute};
use crate::runtime::{RuntimeDir, RuntimeError};

/// The epmd module, compiled (`scripts/build-epmd-module` rebuilds it from
/// `client/erlang/erlbridge_epmd.erl`); it loads on OTP 25 and newer.
pub const EPMD_MODULE_BEAM: &[u8] = include_bytes!("../erlang/erlbridge_epmd.beam");
/// The epmd module's name.
pub const EPMD_MODULE: &str = "erlbridge_epmd";
/// The map file the module reads, beside its .beam.
pub const EPMD_MAP: &str = "nodes.eterm";

/// Where one bridged node is reached locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its alive name (`app` of `app@10.244.1.8`).
    pub alive: String,
    /// The host part of its name.
    pub host: String,
    /// Its pod's IP.
    pub ip: IpAddr,
    /// The local forward of its distribution port.
    pub local_port: u16,
    /// Its distribution protocol version, from its epmd (epmd mode only; 0 otherwise).
    pub version: u16,
}

/// Why a pod could not be made reachable.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The helper could not be used.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// The ERL_INETRC file could not be written.
    #[error(transparent)]
    Inetrc(#[from] InetrcError),
    /// The host has no route to a pod and the helper may not alias it.
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    /// No runtime directory for the files local nodes read.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The epmd module or its map could not be written.
    #[error("cannot write the epmd module's files in {dir}")]
    Module {
        /// The runtime directory.
        dir: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// The chosen way, with the runtime directory its files live in: made at once for the epmd
/// module, only when a file needs it in nat mode.
enum Way {
    Nat {
        helper: Box<Link>,
        inetrc: Option<PathBuf>,
        dir: Option<RuntimeDir>,
    },
    Epmd {
        dir: RuntimeDir,
    },
}

/// The chosen way to reach the pods.
pub struct Reach {
    way: Way,
}

impl Reach {
    /// Through the helper session `helper`. No file is written until one is needed (an
    /// ERL_INETRC for DNS-named nodes).
    pub fn nat(helper: Link) -> Reach {
        Reach {
            way: Way::Nat {
                helper: Box::new(helper),
                inetrc: None,
                dir: None,
            },
        }
    }

    /// Through the epmd module, written now (with an empty map) into a new runtime directory.
    pub fn epmd() -> Result<Reach, ReachError> {
        let dir = RuntimeDir::create()?;
        let module = |source| ReachError::Module {
            dir: dir.path().to_owned(),
            source,
        };
        dir.write(&format!("{EPMD_MODULE}.beam"), EPMD_MODULE_BEAM)
            .map_err(module)?;
        dir.write(EPMD_MAP, b"").map_err(module)?;
        Ok(Reach {
            way: Way::Epmd { dir },
        })
    }

    /// The runtime directory, made now if it was not yet.
    pub fn dir(&mut self) -> Result<&RuntimeDir, RuntimeError> {
        match &mut self.way {
            Way::Nat { dir: Some(dir), .. } | Way::Epmd { dir } => Ok(dir),
            Way::Nat { dir, .. } => Ok(dir.insert(RuntimeDir::create()?)),
        }
    }

    /// Which way this is.
    pub fn mode(&self) -> Mode {
        match self.way {
            Way::Nat { .. } => Mode::Nat,
            Way::Epmd { .. } => Mode::Epmd,
        }
    }

    /// The flags a local node needs to reach the pod nodes: the epmd module's (and hidden),
    /// and IPv6 distribution where nodes are named by IPv6 addresses; none in nat mode for
    /// IPv4 nodes, which every local node reaches.
    pub fn erl_flags(&self, ipv6: bool) -> Option<String> {
        let inet6 = if ipv6 { " -proto_dist inet6_tcp" } else { "" };
        match &self.way {
            Way::Nat { .. } => ipv6.then(|| inet6.trim_start().to_owned()),
            Way::Epmd { dir } => Some(format!(
                "-pa {} -epmd_module {EPMD_MODULE}{inet6} -hidden",
                dir.path().display()
            )),
        }
    }

    /// The ERL_INETRC file for DNS-named nodes, once written (nat mode).
    pub fn inetrc(&self) -> Option<PathBuf> {
        match &self.way {
            Way::Nat { inetrc, .. } => inetrc.clone(),
            Way::Epmd { .. } => None,
        }
    }

    /// Whether pods' epmd addresses are redirected too (`podIP:4369`), to erlbridge's stand-in
    /// for their epmd.
    pub fn redirects_epmd(&self) -> bool {
        matches!(self.way, Way::Nat { .. })
    }

    /// The helper session's generation; redirects of an older one must be made again.
    pub fn generation(&self) -> u64 {
        match &self.way {
            Way::Nat { helper, .. } => helper.generation(),
            Way::Epmd { .. } => 0,
        }
    }

    /// Whether a helper session is live (and can end).
    pub fn is_live(&self) -> bool {
        match &self.way {
            Way::Nat { helper, .. } => helper.is_live(),
            Way::Epmd { .. } => false,
        }
    }

    /// Completes when the helper session ends; never in epmd mode.
    pub async fn ended(&mut self) {
        match &mut self.way {
            Way::Nat { helper, .. } => helper.ended().await,
            Way::Epmd { .. } => std::future::pending().await,
        }
    }

    /// Opens a new helper session after the last one ended.
    pub async fn reopen(&mut self) -> Result<(), HelperError> {
        match &mut self.way {
            Way::Nat { helper, .. } => helper.reopen().await,
            Way::Epmd { .. } => Ok(()),
        }
    }

    /// Makes `pod` (a pod address) reach the forward on `local_port`.
    pub async fn map(&mut self, pod: SocketAddr, local_port: u16) -> Result<(), ReachError> {
        match &mut self.way {
            Way::Nat { helper, .. } => Ok(helper.map(pod, local_port).await?),
            Way::Epmd { .. } => Ok(()),
        }
    }

    /// Makes `ip` connectable for this user's connections: in nat mode, where the host has no
    /// route to it, the helper puts it on the loopback interface for this session (the
    /// uid-scoped redirect still decides where a connection goes: another user's connect to
    /// it is refused, not redirected). Returns whether it did.
    pub async fn expose(&mut self, ip: IpAddr) -> Result<bool, ReachError> {
        let Way::Nat { helper, .. } = &mut self.way else {
            return Ok(false);
        };
        if !route::needs_alias(ip) {
            return Ok(false);
        }
        if !helper.policy().aliases || !route::aliasable(&[ip]) {
            let allowed = crate::helper::allowed_networks(helper.policy());
            return Err(route::no_route(&[ip], &allowed).into());
        }
        helper.alias(ip).await?;
        Ok(true)
    }

    /// Adds the alias of `ip` to the current helper session again (after a restart).
    pub async fn realias(&mut self, ip: IpAddr) -> Result<(), ReachError> {
        match &mut self.way {
            Way::Nat { helper, .. } => Ok(helper.alias(ip).await?),
            Way::Epmd { .. } => Ok(()),
        }
    }

    /// Releases the alias of `ip`.
    pub async fn unexpose(&mut self, ip: IpAddr) -> Result<(), ReachError> {
        match &mut self.way {
            Way::Nat { helper, .. } => Ok(helper.unalias(ip).await?),
            Way::Epmd { .. } => Ok(()),
        }
    }

    /// Undoes [`Reach::map`].
    pub async fn unmap(&mut self, pod: SocketAddr) -> Result<(), ReachError> {
        match &mut self.way {
            Way::Nat { helper, .. } => Ok(helper.unmap(pod).await?),
            Way::Epmd { .. } => Ok(()),
        }
    }

    /// Tells local nodes where every bridged node is now: the ERL_INETRC file for DNS-named
    /// nodes (nat), or the epmd module's map (epmd). Each file is replaced at once.
    pub fn publish(&mut self, routes: &[Route]) -> Result<(), ReachError> {
        match &mut self.way {
            Way::Nat { inetrc, dir, .. } => {
                let mut hosts: Vec<(IpAddr, String)> = routes
                    .iter()
                    .filter(|r| r.host.parse::<IpAddr>().is_err())
                    .map(|r| (r.ip, r.host.clone()))
                    .collect();
                hosts.dedup();
                if hosts.is_empty() && inetrc.is_none() {
                    return Ok(());
                }
                let dir = match dir {
                    Some(dir) => dir,
                    none => none.insert(RuntimeDir::create()?),
                };
                *inetrc = Some(inetrc::write(dir, &hosts)?);
                Ok(())
            }
            Way::Epmd { dir } => {
                dir.write(EPMD_MAP, map_text(routes).as_bytes())
                    .map_err(|source| ReachError::Module {
                        dir: dir.path().to_owned(),
                        source,
                    })?;
                Ok(())
            }
        }
    }
}

/// The epmd module's map: `{Alive, Host, LocalPort, Version}.` per node.
pub fn map_text(routes: &[Route]) -> String {
    routes
        .iter()
        .map(|r| {
            format!(
                "{{{}, {}, {}, {}}}.\n",
                erlang_string(&r.alive),
                erlang_string(&r.host),
                r.local_port,
                r.version
            )
        })
        .collect()
}

fn erlang_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_erlang_terms() {
        let routes = [
            Route {
                alive: "app".into(),
                host: "10.244.1.8".into(),
                ip: "10.244.1.8".parse().unwrap(),
                local_port: 40123,
                version: 6,
            },
            Route {
                alive: "we\"ird".into(),
                host: "app-0.app.default.svc.cluster.local".into(),
                ip: "10.244.1.9".parse().unwrap(),
                local_port: 40124,
                version: 6,
            },
        ];
        assert_eq!(
            map_text(&routes),
            "{\"app\", \"10.244.1.8\", 40123, 6}.\n\
             {\"we\\\"ird\", \"app-0.app.default.svc.cluster.local\", 40124, 6}.\n"
        );
    }
}
