//! The gRPC service: each call turns its request into domain values (`request`), asks the
//! policy, changes the kernel through a backend, then records the change (`session`). The
//! service is generic over its backends, so every call is tested unprivileged with a fake.

use std::future::Future;
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use erlbridge_proto::v1 as pb;
use erlbridge_proto::v1::helper_server::HelperServer;
use tokio::sync::Mutex;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, error, info, info_span, warn};

use crate::alias::AliasBackend;
use crate::error::{Error, chain};
use crate::exec::BackendError;
use crate::nft::NatBackend;
use crate::policy::{Admission, Caller, Peer, Policy, Rule};
use crate::request::{AddMapping, Alias, OpenSession, RemoveMapping, SessionId};
use crate::server::{self, ServeError, Verdict};
use crate::session::Registry;

/// The largest request body the helper reads. Every valid request fits in a few hundred bytes;
/// a bigger one is refused before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// The helper service; clones share one state.
pub struct Helper<N, A> {
    shared: Arc<Shared<N, A>>,
}

impl<N, A> Clone for Helper<N, A> {
    fn clone(&self) -> Self {
        Helper {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<N, A> {
    policy: Policy,
    nft_version: String,
    nat: N,
    alias: A,
    /// Held across each kernel change, so changes apply in order and the registry always
    /// describes what the kernel has.
    registry: Mutex<Registry>,
}

impl<N: NatBackend, A: AliasBackend> Helper<N, A> {
    /// Starts from a clean slate: removes whatever a previous helper left (its table, its
    /// aliases), then serves with `policy`.
    pub async fn start(policy: Policy, nat: N, alias: A) -> Result<Self, BackendError> {
        nat.reset().await?;
        alias.reset().await?;
        let nft_version = nat.version().await;
        info!(nft = %nft_version, "nftables table and loopback aliases reset");
        Ok(Helper {
            shared: Arc::new(Shared {
                policy,
                nft_version,
                nat,
                alias,
                registry: Mutex::new(Registry::default()),
            }),
        })
    }

    /// Serves on `listener` until `shutdown` completes (connections idle for `idle` are
    /// closed), then removes every rule and alias.
    pub async fn serve(
        self,
        listener: UnixListener,
        idle: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let policy = self.shared.policy.clone();
        let decide = move |caller: &Caller, open| match policy.connect(caller, open) {
            Admission::Serve => Verdict::Serve,
            Admission::Refused(_) => Verdict::AnswerOnce,
            Admission::OverCap(refusal) => Verdict::Refuse(Error::from(refusal).into()),
        };
        let service = HelperServer::new(self.clone()).max_decoding_message_size(MAX_REQUEST_BYTES);
        let result = server::serve(listener, idle, decide, service, shutdown).await;
        self.teardown().await;
        result
    }

    /// Removes everything every session added, for a helper that is stopping.
    pub async fn teardown(&self) {
        let mut registry = self.shared.registry.lock().await;
        // Sessions that end after this find nothing left to remove.
        *registry = Registry::default();
        if let Err(e) = self.shared.nat.teardown().await {
            error!(error = %chain(&e), "could not remove the nftables table");
        }
        if let Err(e) = self.shared.alias.reset().await {
            error!(error = %chain(&e), "could not remove the loopback aliases");
        }
        info!("nftables table and loopback aliases removed");
    }

    /// Ends session `id` and removes everything it added.
    pub async fn close(&self, id: SessionId) {
        self.shared.close(id).await;
    }
}

impl<N: NatBackend, A: AliasBackend> Shared<N, A> {
    async fn close(&self, id: SessionId) {
        let mut registry = self.registry.lock().await;
        let Some((session, left)) = registry.close(id) else {
            return;
        };
        async {
            if let Err(e) = self.nat.remove(&left.rules).await {
                error!(error = %chain(&e), "could not remove the session's rules");
            }
            for ip in &left.aliases {
                if let Err(e) = self.alias.remove(*ip).await {
                    error!(%ip, error = %chain(&e), "could not remove an alias");
                }
            }
            info!(
                rules = left.rules.len(),
                aliases = left.aliases.len(),
                "session ended; its rules and aliases removed"
            );
        }
        .instrument(session.span)
        .await;
    }

    /// The host's addresses the policy protects: all of them but the aliases helperd added.
    fn host_addresses(&self, registry: &Registry) -> Result<Vec<IpAddr>, BackendError> {
        let ours: Vec<IpAddr> = registry.aliases().collect();
        let mut addrs = self.alias.host_addresses()?;
        addrs.retain(|a| !ours.contains(a));
        Ok(addrs)
    }

    // Each change below asks the policy, changes the kernel, and only then records the change,
    // so a failed kernel change leaves the registry describing what the kernel has.

    async fn add_mapping(
        &self,
        registry: &mut Registry,
        peer: &Peer,
        req: &AddMapping,
    ) -> Result<Rule, Error> {
        let hosts = self.host_addresses(registry).map_err(Error::adding)?;
        let rule = self.policy.add_mapping(peer, req, &hosts, &*registry)?;
        self.nat.add(&rule).await.map_err(Error::adding)?;
        registry.insert_rule(req.session, rule);
        info!(pod = %rule.pod, target = %rule.target, "mapping granted");
        Ok(rule)
    }

    async fn remove_mapping(
        &self,
        registry: &mut Registry,
        peer: &Peer,
        req: &RemoveMapping,
    ) -> Result<(), Error> {
        let rule = self.policy.remove_mapping(peer, req, &*registry)?;
        self.nat.remove(&[rule]).await.map_err(Error::removing)?;
        registry.forget_rule(req.session, &rule);
        info!(pod = %rule.pod, "mapping removed");
        Ok(())
    }

    async fn add_alias(
        &self,
        registry: &mut Registry,
        peer: &Peer,
        req: &Alias,
    ) -> Result<IpAddr, Error> {
        let hosts = self.host_addresses(registry).map_err(Error::adding)?;
        let ip = self.policy.add_alias(peer, req, &hosts, &*registry)?;
        if registry.alias_is_new(ip) {
            self.alias.add(ip).await.map_err(Error::adding)?;
        }
        registry.hold_alias(req.session, ip);
        info!(%ip, "alias granted");
        Ok(ip)
    }

    async fn remove_alias(
        &self,
        registry: &mut Registry,
        peer: &Peer,
        req: &Alias,
    ) -> Result<(), Error> {
        let ip = self.policy.remove_alias(peer, req, &*registry)?;
        if registry.alias_is_last(ip) {
            self.alias.remove(ip).await.map_err(Error::removing)?;
        }
        registry.release_alias(req.session, ip);
        info!(%ip, "alias released");
        Ok(())
    }
}

fn peer_of<T>(request: &Request<T>) -> Result<Peer, Status> {
    request.extensions().get::<Peer>().cloned().ok_or_else(|| {
        Status::unauthenticated("the helper cannot tell who you are; connect over its Unix socket")
    })
}

/// Logs a refusal or failure (in the current span: the connection's, or the session's) and
/// turns it into the caller's status.
fn refused(what: &'static str, err: Error) -> Status {
    match &err {
        Error::Backend { source, .. } => error!(what, error = %chain(source), "failed"),
        _ => warn!(what, reason = %err, "refused"),
    }
    err.into()
}

/// Runs `work` inside `span`, logging its refusal or failure there too.
async fn in_span<T>(
    span: Span,
    what: &'static str,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Status> {
    let result = work.instrument(span.clone()).await;
    result.map_err(|e| span.in_scope(|| refused(what, e)))
}

/// The span of session `id` for events about a request of `peer`'s: the session's when it is
/// live on `peer`'s connection, else the connection's.
fn span_of(registry: &Registry, id: SessionId, peer: &Peer) -> Span {
    registry
        .session(id)
        .filter(|s| s.conn == peer.conn)
        .map_or_else(Span::current, |s| s.span.clone())
}

fn caller_pb(caller: &Caller) -> pb::Caller {
    pb::Caller {
        uid: caller.uid,
        gid: caller.gid,
        groups: caller.groups.clone(),
        pid: caller.pid,
    }
}

fn mapping_pb(rule: &Rule) -> pb::Mapping {
    pb::Mapping {
        pod_ip: rule.pod.ip().to_string(),
        pod_port: rule.pod.port().into(),
        local_ip: rule.target.ip().to_string(),
        local_port: rule.target.port().into(),
        uid: rule.uid,
    }
}

fn policy_pb(policy: &Policy) -> pb::Policy {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::Policy {
        group: policy.group.clone(),
        allowed_uids: policy.allowed_uids.clone(),
        allowed_cidrs: policy
            .allowed_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        max_rules_per_uid: clamp(policy.max_rules_per_uid),
        max_sessions_per_uid: clamp(policy.max_sessions_per_uid),
        max_aliases_per_uid: clamp(policy.max_aliases_per_uid),
        aliases: policy.aliases,
    }
}

/// A session's event stream. It yields `SessionOpened` and then stays open; dropping it (the
/// caller cancelled, exited, crashed, or its connection dropped) ends the session.
pub struct SessionStream<N: NatBackend, A: AliasBackend> {
    opened: Option<pb::SessionEvent>,
    id: SessionId,
    helper: Helper<N, A>,
}

impl<N: NatBackend, A: AliasBackend> Stream for SessionStream<N, A> {
    type Item = Result<pb::SessionEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.opened.take() {
            Some(event) => Poll::Ready(Some(Ok(event))),
            // Nothing more to say: the stream stays open until the caller goes away.
            None => Poll::Pending,
        }
    }
}

impl<N: NatBackend, A: AliasBackend> Drop for SessionStream<N, A> {
    fn drop(&mut self) {
        let (helper, id) = (self.helper.clone(), self.id);
        // Outside a runtime the process is exiting, and the shutdown teardown removes all.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { helper.close(id).await });
        }
    }
}

#[tonic::async_trait]
impl<N: NatBackend, A: AliasBackend> pb::helper_server::Helper for Helper<N, A> {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let peer = peer_of(&request)?;
        let verdict = self.shared.policy.admit(&peer.caller);
        Ok(Response::new(pb::WhoAmIResponse {
            caller: Some(caller_pb(&peer.caller)),
            helper_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: erlbridge_proto::API_VERSION,
            policy: Some(policy_pb(&self.shared.policy)),
            allowed: verdict.is_ok(),
            refusal: verdict.err().map(|r| r.to_string()).unwrap_or_default(),
            nft_version: self.shared.nft_version.clone(),
        }))
    }

    type OpenSessionStream = SessionStream<N, A>;

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let what = "open session";
        let peer = peer_of(&request)?;
        let open =
            OpenSession::try_from(request.into_inner()).map_err(|e| refused(what, e.into()))?;
        let mut registry = self.shared.registry.lock().await;
        self.shared
            .policy
            .open_session(&peer.caller, &*registry)
            .map_err(|e| refused(what, e.into()))?;
        let span = info_span!("session", session = tracing::field::Empty, label = %open.label);
        let id = registry.open(peer.conn, peer.caller.clone(), open.label, span.clone());
        span.in_scope(|| info!("session opened"));
        Ok(Response::new(SessionStream {
            opened: Some(pb::SessionEvent {
                event: Some(pb::session_event::Event::Opened(pb::SessionOpened {
                    session_id: id.0,
                })),
            }),
            id,
            helper: self.clone(),
        }))
    }

    async fn add_mapping(
        &self,
        request: Request<pb::AddMappingRequest>,
    ) -> Result<Response<pb::AddMappingResponse>, Status> {
        let what = "add mapping";
        let peer = peer_of(&request)?;
        let req =
            AddMapping::try_from(request.into_inner()).map_err(|e| refused(what, e.into()))?;
        let mut registry = self.shared.registry.lock().await;
        let span = span_of(&registry, req.session, &peer);
        let rule = in_span(
            span,
            what,
            self.shared.add_mapping(&mut registry, &peer, &req),
        )
        .await?;
        Ok(Response::new(pb::AddMappingResponse {
            mapping: Some(mapping_pb(&rule)),
        }))
    }

    async fn remove_mapping(
        &self,
        request: Request<pb::RemoveMappingRequest>,
    ) -> Result<Response<pb::RemoveMappingResponse>, Status> {
        let what = "remove mapping";
        let peer = peer_of(&request)?;
        let req =
            RemoveMapping::try_from(request.into_inner()).map_err(|e| refused(what, e.into()))?;
        let mut registry = self.shared.registry.lock().await;
        let span = span_of(&registry, req.session, &peer);
        in_span(
            span,
            what,
            self.shared.remove_mapping(&mut registry, &peer, &req),
        )
        .await?;
        Ok(Response::new(pb::RemoveMappingResponse {}))
    }

    async fn add_alias(
        &self,
        request: Request<pb::AddAliasRequest>,
    ) -> Result<Response<pb::AddAliasResponse>, Status> {
        let what = "add alias";
        let peer = peer_of(&request)?;
        let req = Alias::try_from(request.into_inner()).map_err(|e| refused(what, e.into()))?;
        let mut registry = self.shared.registry.lock().await;
        let span = span_of(&registry, req.session, &peer);
        let ip = in_span(
            span,
            what,
            self.shared.add_alias(&mut registry, &peer, &req),
        )
        .await?;
        Ok(Response::new(pb::AddAliasResponse { ip: ip.to_string() }))
    }

    async fn remove_alias(
        &self,
        request: Request<pb::RemoveAliasRequest>,
    ) -> Result<Response<pb::RemoveAliasResponse>, Status> {
        let what = "remove alias";
        let peer = peer_of(&request)?;
        let req = Alias::try_from(request.into_inner()).map_err(|e| refused(what, e.into()))?;
        let mut registry = self.shared.registry.lock().await;
        let span = span_of(&registry, req.session, &peer);
        in_span(
            span,
            what,
            self.shared.remove_alias(&mut registry, &peer, &req),
        )
        .await?;
        Ok(Response::new(pb::RemoveAliasResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let peer = peer_of(&request)?;
        self.shared
            .policy
            .admit(&peer.caller)
            .map_err(|e| refused("list sessions", e.into()))?;
        let registry = self.shared.registry.lock().await;
        let sessions = registry
            .sessions()
            .filter(|s| peer.caller.uid == 0 || s.caller.uid == peer.caller.uid)
            .map(|s| pb::SessionInfo {
                session_id: s.id.0,
                uid: s.caller.uid,
                pid: s.caller.pid,
                label: s.label.clone(),
                opened_unix_seconds: s
                    .opened
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                mappings: s.rules.values().map(mapping_pb).collect(),
                aliases: s.aliases.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
