//! erlbridge, the unprivileged client: Kubernetes discovery and port-forwarding, epmd
//! discovery, and NAT through erlbridge-helperd. It is being built; the helper and its API
//! (crate `erlbridge-proto`, including `erlbridge_proto::connect`) are ready for it.
