//! erlbridge, the unprivileged client: Kubernetes discovery and port-forwarding ([`k8s`]),
//! epmd discovery, and NAT through erlbridge-helperd (whose API is the crate
//! `erlbridge-proto`).
#![deny(unsafe_code)]

pub mod k8s;
