//! erlbridge, the unprivileged client. `erlbridge up app-0` turns the target into one pod
//! watch through the Kubernetes API ([`k8s`], [`discover`], [`watch`]), asks each pod's epmd
//! which Erlang nodes run there ([`epmd`]), forwards their ports through the API
//! ([`forward`]), and asks erlbridge-helperd (crate `erlbridge-proto` is its API) to redirect
//! this user's connections to the pods' addresses onto those forwards ([`helper`]) — or, with
//! no helper, has local nodes find the forwards through an epmd module erlbridge ships
//! ([`reach`] is that seam, [`runtime`] the private directory its files live in).
//! [`bridge`] holds that network state and keeps it healed by the pure plan of [`reconcile`];
//! the commands ([`up`], [`remsh`], [`observer`], [`top`], [`eval`], [`status`], [`doctor`])
//! sit around it, the four that act on a pod's node through one hidden local node of
//! [`local`]'s, and everything a person or script reads goes through [`output`]. Nothing here
//! needs root.
#![deny(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod cookie;
pub mod discover;
pub mod doctor;
pub mod epmd;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod helper;
pub mod inetrc;
pub mod k8s;
pub mod local;
pub mod look;
pub mod mode;
pub mod nodes;
pub mod observer;
pub mod output;
pub mod owner;
pub mod reach;
pub mod reconcile;
pub mod remsh;
pub mod route;
pub mod runtime;
pub mod status;
pub mod terminal;
pub mod top;
pub mod up;
pub mod watch;
