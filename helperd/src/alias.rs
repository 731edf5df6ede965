//! Loopback aliases: a pod address put on `lo`, so a local listener can bind it directly.
//! Host-wide, so the policy can switch them off. Each carries the label `lo:erlbridge`, so a
//! helper that starts after a crash can remove exactly the ones a previous helper added.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::exec::{BackendError, run};

/// The label on every alias helperd adds.
pub const LABEL: &str = "lo:erlbridge";

/// Adds and removes loopback aliases and reads the host's addresses. [`IpAlias`] does it for
/// real; tests use a recording fake.
pub trait AliasBackend: Send + Sync + 'static {
    /// Removes every alias a previous helper left.
    fn reset(&self) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Puts `ip` on the loopback interface.
    fn add(&self, ip: IpAddr) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Takes `ip` off the loopback interface.
    fn remove(&self, ip: IpAddr) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// The addresses of every interface of the host.
    fn host_addresses(&self) -> Result<Vec<IpAddr>, BackendError>;
}

/// The real backend: `ip addr` on `lo`.
#[derive(Debug, Clone)]
pub struct IpAlias {
    /// The `ip` binary, by absolute path.
    pub program: PathBuf,
}

impl AliasBackend for IpAlias {
    async fn reset(&self) -> Result<(), BackendError> {
        run(
            &self.program,
            &["-4", "addr", "flush", "dev", "lo", "label", LABEL],
            "",
        )
        .await
    }

    async fn add(&self, ip: IpAddr) -> Result<(), BackendError> {
        let cidr = format!("{ip}/32");
        run(
            &self.program,
            &["-4", "addr", "add", &cidr, "dev", "lo", "label", LABEL],
            "",
        )
        .await
    }

    async fn remove(&self, ip: IpAddr) -> Result<(), BackendError> {
        let cidr = format!("{ip}/32");
        run(
            &self.program,
            &["-4", "addr", "del", &cidr, "dev", "lo"],
            "",
        )
        .await
    }

    fn host_addresses(&self) -> Result<Vec<IpAddr>, BackendError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(BackendError::Addresses)?;
        Ok(addrs
            .filter_map(|ifa| ifa.address)
            .filter_map(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect())
    }
}
