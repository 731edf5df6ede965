//! The erlbridge test bed: real network namespaces, real processes, real nftables, so that
//! end-to-end tests and benchmarks exercise erlbridge as a user's machine would.
//!
//! A test builds a [`Workstation`] (a namespace whose default route leads nowhere, so a pod
//! address is unreachable without erlbridge), starts `erlbridge-helperd` in it as root
//! ([`Helperd`]), and runs probes and clients as unprivileged [`User`]s. Everything started is
//! killed and every namespace removed when the values are dropped, even when a test panics.
//! Needs root; without it, [`require_root`] stops the test loudly.

pub mod api_proxy;
pub mod bins;
pub mod cluster;
pub mod container;
pub mod display;
pub mod erlang;
pub mod events;
pub mod helperd;
pub mod in_cluster;
pub mod link;
pub mod logins;
pub mod netns;
pub mod package;
pub mod process;
pub mod python;
pub mod scenario;
pub mod standing;
pub mod terminal;
pub mod user;
pub mod workstation;

pub use bins::Bins;
pub use cluster::Cluster;
pub use helperd::Helperd;
pub use in_cluster::InCluster;
pub use netns::Netns;
pub use process::{Spawned, listening_addrs, listening_sockets, rss_kib};
pub use scenario::Scenario;
pub use terminal::Terminal;
pub use user::User;
pub use workstation::{PacketDrop, Workstation};

/// Stops the test with a clear message unless it runs as root. Never a silent skip.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (it creates network namespaces and nftables rules); \
             run the suite as root, as CI does: sudo scripts/test"
        );
    }
}
