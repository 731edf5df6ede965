//! erlbridge, the unprivileged client. `erlbridge up app-0` finds the pod through the
//! Kubernetes API ([`k8s`], [`discover`]), asks its epmd which Erlang nodes run there
//! ([`epmd`]), forwards their ports through the API ([`forward`]), and asks erlbridge-helperd
//! (crate `erlbridge-proto` is its API) to redirect this user's connections to the pod's
//! addresses onto those forwards ([`helper`]); [`bridge`] ties it together, [`up`] is the
//! command around it and [`output`] what the user reads. Nothing here needs root.
#![deny(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod cookie;
pub mod discover;
pub mod doctor;
pub mod epmd;
pub mod forward;
pub mod generate;
pub mod helper;
pub mod k8s;
pub mod output;
pub mod remsh;
pub mod status;
pub mod up;
