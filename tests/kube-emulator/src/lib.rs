//! A Kubernetes API server emulator for erlbridge's tests and demo.
//!
//! No cluster is reachable where erlbridge is tested, so this crate speaks the real wire
//! formats instead: HTTPS with a CA it generates, bearer tokens, a kubeconfig that kubectl and
//! kube-rs accept as it is ([`tls`]), discovery, Pods (get, list with label selectors and
//! paging, watch with resource versions and bookmarks), StatefulSets, Deployments and Secrets as
//! real Kubernetes JSON, `metav1.Status` errors ([`api`]), and `pods/NAME/portforward` over
//! WebSocket with the kubelet's `v4.channel.k8s.io` framing, relayed to 127.0.0.1:PORT inside
//! the pod's network namespace ([`portforward`]).
//!
//! The pods themselves are the test bed's business (crate `erlbridge-testbed` makes them
//! network namespaces running real Erlang nodes); the emulator only stores what it is told
//! ([`store`]) and can break things on purpose ([`Emulator::fail_requests`],
//! [`Emulator::stall_requests`], [`Emulator::drop_forwards`], [`Emulator::revoke_token`]).

pub mod api;
pub mod manifest;
pub mod netns;
pub mod portforward;
pub mod selector;
pub mod store;
pub mod tls;

pub use api::{Access, Emulator};
pub use store::{PodDesc, SecretDesc, WorkloadDesc, WorkloadKind};
