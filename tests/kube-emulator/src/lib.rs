//! A Kubernetes API server emulator for erlbridge's tests and demo.
//!
//! No cluster is reachable where erlbridge is tested, so this crate speaks the real wire
//! formats instead: HTTPS with a CA it generates ([`tls`]), discovery ([`discovery`]), Pods
//! (get, list with label selectors and paging, watch with resource versions, bookmarks and
//! expiry: [`pods`], [`watch`]), StatefulSets and Deployments ([`workloads`]) and Secrets as
//! real Kubernetes JSON, `metav1.Status` errors ([`api`]), and `pods/NAME/portforward` over
//! WebSocket with the kubelet's `v4.channel.k8s.io` framing, relayed into the pod's network
//! namespace ([`portforward`]).
//!
//! Clients log in the ways real clusters let them ([`auth`]): bearer tokens, short-lived tokens
//! from an exec credential plugin ([`credential`], binary `kube-emulator-credential`), client
//! certificates from the emulator's CA, or a service account's files for in-cluster clients.
//! [`kubeconfig`] writes kubeconfigs for all of them, several contexts and files included; the
//! API can sit under a path prefix ([`StartOptions::path_prefix`]) and behind an HTTP CONNECT
//! proxy ([`proxy`]).
//!
//! The pods themselves are the test bed's business (crate `erlbridge-testbed` makes them
//! network namespaces running real Erlang nodes); the emulator only stores what it is told
//! ([`store`]) and can break things on purpose ([`Emulator::fail_requests`],
//! [`Emulator::stall_requests`], [`Emulator::drop_forwards`], [`Emulator::revoke_token`],
//! [`Emulator::expire_watches`], [`Emulator::delete_pod_silently`],
//! [`Emulator::set_access_reviews`]), and keeps a log of what it was asked
//! ([`Emulator::requests`], [`Emulator::handshakes`]).

pub mod api;
pub mod auth;
pub mod credential;
pub mod discovery;
pub mod kubeconfig;
pub mod manifest;
pub mod netns;
pub mod pods;
pub mod portforward;
pub mod proxy;
pub mod selector;
pub mod store;
pub mod tls;
pub mod watch;
pub mod workloads;

pub use api::{Access, AccessReviews, Emulator, Handshakes, Logged, StartOptions};
pub use proxy::ConnectProxy;
pub use store::{
    ContainerDesc, IpFamily, PodDesc, SecretDesc, SelectorExpression, WorkloadDesc, WorkloadKind,
};
pub use tls::ClientCertificate;
