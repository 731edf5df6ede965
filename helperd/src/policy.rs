//! The one place that says yes or no. Every request passes through a function here that takes
//! the caller's identity, the validated request and the current state, and returns what to do
//! (a [`Rule`], an address) or a [`Refusal`] that names the rule it hit and the fix.
//!
//! Pure: no I/O. The host's addresses and the live state come in as arguments, so a table of
//! cases tests every decision without root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::config::Config;
use crate::request::{AddMapping, Alias, RemoveMapping, SessionId};

/// A connected process, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Process id (0 when the kernel did not say).
    pub pid: u32,
}

/// A connection and the process on its other end. Sessions belong to the connection they were
/// opened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Unique per accepted connection.
    pub conn: u64,
    /// Who connected.
    pub caller: Caller,
}

/// How many connections are open when a new one arrives (not counting it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    /// Those of the new connection's uid.
    pub of_uid: usize,
    /// Every uid's.
    pub total: usize,
}

/// What becomes of a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Served; it counts against the connection caps until it closes.
    Serve,
    /// The caller may not use the helper. Its first call gets the refusal (WhoAmI still says
    /// who it is and why), then the connection closes.
    Refused(Refusal),
    /// A connection cap is reached: the first call gets this refusal, then the connection
    /// closes. Connections already open are never dropped to make room.
    OverCap(Refusal),
}

/// One DNAT rule: `uid`'s TCP connections to `pod` go to `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    /// The only uid whose traffic the rule touches.
    pub uid: u32,
    /// The address and port the uid dials.
    pub pod: SocketAddr,
    /// Where its connections go instead: always loopback, same family as `pod`.
    pub target: SocketAddr,
}

impl Rule {
    /// The part of the rule that must be unique among live rules (the nftables map key).
    pub fn key(&self) -> RuleKey {
        RuleKey {
            uid: self.uid,
            pod: self.pod,
        }
    }
}

/// The nftables map key of a rule: `meta skuid . ip daddr . tcp dport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// The uid.
    pub uid: u32,
    /// The pod address and port.
    pub pod: SocketAddr,
}

/// What the policy needs to know about live state.
pub trait Ledger {
    /// Open sessions of `uid`.
    fn sessions_of(&self, uid: u32) -> usize;
    /// Live mappings of `uid`, across its sessions.
    fn rules_of(&self, uid: u32) -> usize;
    /// Aliases held by `uid`'s sessions (each session's hold counts once).
    fn aliases_of(&self, uid: u32) -> usize;
    /// The session holding a live rule with this key, if any.
    fn holder(&self, key: &RuleKey) -> Option<SessionId>;
    /// Whether `session` already holds the alias `ip`.
    fn holds_alias(&self, session: SessionId, ip: IpAddr) -> bool;
    /// The connection `session` was opened on, if the session is live.
    fn connection_of(&self, session: SessionId) -> Option<u64>;
    /// `session`'s live rule for `pod`, if any.
    fn rule(&self, session: SessionId, pod: SocketAddr) -> Option<Rule>;
}

/// The rules every request is checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The access group as configured (name or number), for messages.
    pub group: String,
    /// The access group's gid; `None` when the named group does not exist on this host.
    pub group_gid: Option<u32>,
    /// Uids allowed without the group.
    pub allowed_uids: Vec<u32>,
    /// Networks pod addresses must fall in.
    pub allowed_cidrs: Vec<IpNet>,
    /// Live mappings one uid may hold.
    pub max_rules_per_uid: usize,
    /// Sessions one uid may hold open.
    pub max_sessions_per_uid: usize,
    /// Aliases one uid may hold.
    pub max_aliases_per_uid: usize,
    /// Whether aliases may be added at all.
    pub aliases: bool,
    /// Connections one uid may hold open.
    pub max_connections_per_uid: usize,
    /// Connections open at once, across every uid.
    pub max_connections: usize,
}

/// Why a request was refused. Each message names the rule and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller is neither root, nor in the group, nor listed in `allowed_uids`.
    #[error(
        "uid {uid} may not use erlbridge-helperd: it is not in group {group}. Ask your \
         administrator to run `usermod -aG {group} <your user>`, then log in again so the \
         membership takes effect"
    )]
    NotInGroup {
        /// The caller's uid.
        uid: u32,
        /// The access group.
        group: String,
    },
    /// The configured group does not exist, so only root and `allowed_uids` may connect.
    #[error(
        "uid {uid} may not use erlbridge-helperd: its access group {group} does not exist on \
         this host. Ask your administrator to create it (`groupadd --system {group}`) and add \
         you to it, or to list your uid in allowed_uids in helperd.toml"
    )]
    NoSuchGroup {
        /// The caller's uid.
        uid: u32,
        /// The access group.
        group: String,
    },
    /// The address can never be a pod's (loopback, multicast, ...).
    #[error(
        "{field}: {ip} is {what}, not a pod address; give the pod's IP as `kubectl get pod -o wide` shows it"
    )]
    NotAPodAddress {
        /// The request field.
        field: &'static str,
        /// The address.
        ip: IpAddr,
        /// What kind of address it is.
        what: &'static str,
    },
    /// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) would never match IPv4 traffic.
    #[error("{field}: {ip} is an IPv4-mapped IPv6 address; write it as plain IPv4 ({v4})")]
    Ipv4Mapped {
        /// The request field.
        field: &'static str,
        /// The address.
        ip: IpAddr,
        /// The same address as IPv4.
        v4: Ipv4Addr,
    },
    /// Redirecting one of the host's own addresses would capture the caller's local traffic.
    #[error(
        "{field}: {ip} is an address of this host, not of a pod; the helper never redirects \
         the host's own addresses"
    )]
    HostAddress {
        /// The request field.
        field: &'static str,
        /// The address.
        ip: IpAddr,
    },
    /// The address lies outside every allowed network.
    #[error(
        "{field}: {ip} is outside the pod networks this helper allows ({allowed}); if it \
         really is a pod address, ask your administrator to add its network to allowed_cidrs \
         in helperd.toml"
    )]
    OutsideNetworks {
        /// The request field.
        field: &'static str,
        /// The address.
        ip: IpAddr,
        /// The allowed networks, comma-separated.
        allowed: String,
    },
    /// The target address is not loopback.
    #[error(
        "local_ip: {ip} is not a loopback address; a mapping may only lead to a listener on \
         this host's loopback (127.0.0.0/8 or ::1), or leave local_ip empty"
    )]
    TargetNotLoopback {
        /// The requested target.
        ip: IpAddr,
    },
    /// Pod and target addresses are of different families.
    #[error(
        "local_ip: {local} and pod_ip {pod} are of different IP families; use a loopback \
         address of the pod's family, or leave local_ip empty"
    )]
    FamilyMismatch {
        /// The pod address.
        pod: IpAddr,
        /// The requested target.
        local: IpAddr,
    },
    /// The uid holds as many mappings as it may.
    #[error(
        "uid {uid} already holds {max} mappings, the most this helper allows \
         (max_rules_per_uid); remove some, or end sessions you no longer need"
    )]
    RuleQuota {
        /// The caller's uid.
        uid: u32,
        /// The limit.
        max: usize,
    },
    /// The uid holds as many sessions as it may.
    #[error(
        "uid {uid} already has {max} open sessions, the most this helper allows \
         (max_sessions_per_uid); stop a bridge you no longer need (`erlbridge status` lists them)"
    )]
    SessionQuota {
        /// The caller's uid.
        uid: u32,
        /// The limit.
        max: usize,
    },
    /// The uid holds as many connections as it may.
    #[error(
        "uid {uid} already has {max} connections open to erlbridge-helperd, the most it allows \
         one user (max_connections_per_uid in helperd.toml); end bridges you no longer need \
         (each running erlbridge holds one), or ask your administrator to raise \
         max_connections_per_uid"
    )]
    ConnectionQuota {
        /// The caller's uid.
        uid: u32,
        /// The limit.
        max: usize,
    },
    /// The helper holds as many connections as it may, across every uid.
    #[error(
        "erlbridge-helperd already has {max} connections open, the most it allows \
         (max_connections in helperd.toml); try again later, or ask your administrator to raise \
         max_connections"
    )]
    ConnectionLimit {
        /// The limit.
        max: usize,
    },
    /// The uid holds as many aliases as it may.
    #[error(
        "uid {uid} already holds {max} loopback aliases, the most this helper allows \
         (max_aliases_per_uid); remove some first"
    )]
    AliasQuota {
        /// The caller's uid.
        uid: u32,
        /// The limit.
        max: usize,
    },
    /// A live rule of this uid already redirects the same pod address and port.
    #[error(
        "uid {uid} already redirects {pod} (in session {session}); remove that mapping first \
         or keep using it"
    )]
    Duplicate {
        /// The caller's uid.
        uid: u32,
        /// The pod address and port.
        pod: SocketAddr,
        /// The session holding the live rule.
        session: SessionId,
    },
    /// Aliases are switched off.
    #[error(
        "loopback aliases are switched off on this host (aliases = false in helperd.toml); \
         use a DNAT mapping instead, or ask your administrator to allow aliases"
    )]
    AliasesDisabled,
    /// Aliases are IPv4 only.
    #[error("ip: {ip} is IPv6; loopback aliases are IPv4 only, use a DNAT mapping for IPv6 pods")]
    AliasIpv6 {
        /// The address.
        ip: IpAddr,
    },
    /// The session already holds this alias.
    #[error("ip: session {session} already holds the alias {ip}")]
    AliasHeld {
        /// The session.
        session: SessionId,
        /// The address.
        ip: IpAddr,
    },
    /// No such session on this connection.
    #[error(
        "session_id: there is no session {session} on this connection; open one with \
         OpenSession and use it on the same connection"
    )]
    UnknownSession {
        /// The session named in the request.
        session: SessionId,
    },
    /// The session has no mapping for this pod address and port.
    #[error("session {session} has no mapping for {pod}")]
    UnknownMapping {
        /// The session.
        session: SessionId,
        /// The pod address and port.
        pod: SocketAddr,
    },
    /// The session does not hold this alias.
    #[error("session {session} holds no alias {ip}")]
    UnknownAlias {
        /// The session.
        session: SessionId,
        /// The address.
        ip: IpAddr,
    },
}

impl Policy {
    /// The policy a configuration describes, with the access group's gid as looked up at start.
    pub fn new(config: &Config, group_gid: Option<u32>) -> Policy {
        Policy {
            group: config.group.to_string(),
            group_gid,
            allowed_uids: config.allowed_uids.clone(),
            allowed_cidrs: config.allowed_cidrs.clone(),
            max_rules_per_uid: config.max_rules_per_uid as usize,
            max_sessions_per_uid: config.max_sessions_per_uid as usize,
            max_aliases_per_uid: config.max_aliases_per_uid as usize,
            aliases: config.aliases,
            max_connections_per_uid: config.max_connections_per_uid as usize,
            max_connections: config.max_connections as usize,
        }
    }

    /// What becomes of a new connection from `caller`, with `open` connections already served.
    /// A caller the policy refuses is never counted; one over a cap is refused, whatever its
    /// other connections do.
    pub fn connect(&self, caller: &Caller, open: Connections) -> Admission {
        if let Err(refusal) = self.admit(caller) {
            return Admission::Refused(refusal);
        }
        if open.of_uid >= self.max_connections_per_uid {
            return Admission::OverCap(Refusal::ConnectionQuota {
                uid: caller.uid,
                max: self.max_connections_per_uid,
            });
        }
        if open.total >= self.max_connections {
            return Admission::OverCap(Refusal::ConnectionLimit {
                max: self.max_connections,
            });
        }
        Admission::Serve
    }

    /// Whether the caller may use the helper at all: root, a listed uid, or a member of the
    /// group (primary or supplementary).
    pub fn admit(&self, caller: &Caller) -> Result<(), Refusal> {
        if caller.uid == 0 || self.allowed_uids.contains(&caller.uid) {
            return Ok(());
        }
        match self.group_gid {
            Some(gid) if caller.gid == gid || caller.groups.contains(&gid) => Ok(()),
            Some(_) => Err(Refusal::NotInGroup {
                uid: caller.uid,
                group: self.group.clone(),
            }),
            None => Err(Refusal::NoSuchGroup {
                uid: caller.uid,
                group: self.group.clone(),
            }),
        }
    }

    /// Whether the caller may open one more session.
    pub fn open_session(&self, caller: &Caller, ledger: &impl Ledger) -> Result<(), Refusal> {
        self.admit(caller)?;
        if ledger.sessions_of(caller.uid) >= self.max_sessions_per_uid {
            return Err(Refusal::SessionQuota {
                uid: caller.uid,
                max: self.max_sessions_per_uid,
            });
        }
        Ok(())
    }

    /// Whether `peer` may act on `session`: it must be allowed, and the session must be live
    /// and opened on the same connection. Another connection's session is reported as unknown,
    /// not as someone else's.
    fn own_session(
        &self,
        peer: &Peer,
        session: SessionId,
        ledger: &impl Ledger,
    ) -> Result<(), Refusal> {
        self.admit(&peer.caller)?;
        match ledger.connection_of(session) {
            Some(conn) if conn == peer.conn => Ok(()),
            _ => Err(Refusal::UnknownSession { session }),
        }
    }

    /// The rule an AddMapping request may install, or why not. `host_addrs` are the host's own
    /// addresses, less the aliases the helper itself added.
    pub fn add_mapping(
        &self,
        peer: &Peer,
        req: &AddMapping,
        host_addrs: &[IpAddr],
        ledger: &impl Ledger,
    ) -> Result<Rule, Refusal> {
        self.own_session(peer, req.session, ledger)?;
        let caller = &peer.caller;
        self.check_pod_ip("pod_ip", req.pod_ip, host_addrs)?;
        let target_ip = match req.local_ip {
            None if req.pod_ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Some(local) if local.is_ipv4() != req.pod_ip.is_ipv4() => {
                return Err(Refusal::FamilyMismatch {
                    pod: req.pod_ip,
                    local,
                });
            }
            Some(local) if !local.is_loopback() => {
                return Err(Refusal::TargetNotLoopback { ip: local });
            }
            Some(local) => local,
        };
        let rule = Rule {
            uid: caller.uid,
            pod: SocketAddr::new(req.pod_ip, req.pod_port),
            target: SocketAddr::new(target_ip, req.local_port),
        };
        if let Some(session) = ledger.holder(&rule.key()) {
            return Err(Refusal::Duplicate {
                uid: caller.uid,
                pod: rule.pod,
                session,
            });
        }
        if ledger.rules_of(caller.uid) >= self.max_rules_per_uid {
            return Err(Refusal::RuleQuota {
                uid: caller.uid,
                max: self.max_rules_per_uid,
            });
        }
        Ok(rule)
    }

    /// The rule a RemoveMapping request takes away, or why not.
    pub fn remove_mapping(
        &self,
        peer: &Peer,
        req: &RemoveMapping,
        ledger: &impl Ledger,
    ) -> Result<Rule, Refusal> {
        self.own_session(peer, req.session, ledger)?;
        let pod = SocketAddr::new(req.pod_ip, req.pod_port);
        ledger
            .rule(req.session, pod)
            .ok_or(Refusal::UnknownMapping {
                session: req.session,
                pod,
            })
    }

    /// Whether the caller's session may take a hold on the loopback alias `req.ip`.
    pub fn add_alias(
        &self,
        peer: &Peer,
        req: &Alias,
        host_addrs: &[IpAddr],
        ledger: &impl Ledger,
    ) -> Result<IpAddr, Refusal> {
        self.own_session(peer, req.session, ledger)?;
        let caller = &peer.caller;
        if !self.aliases {
            return Err(Refusal::AliasesDisabled);
        }
        self.check_pod_ip("ip", req.ip, host_addrs)?;
        if req.ip.is_ipv6() {
            return Err(Refusal::AliasIpv6 { ip: req.ip });
        }
        if ledger.holds_alias(req.session, req.ip) {
            return Err(Refusal::AliasHeld {
                session: req.session,
                ip: req.ip,
            });
        }
        if ledger.aliases_of(caller.uid) >= self.max_aliases_per_uid {
            return Err(Refusal::AliasQuota {
                uid: caller.uid,
                max: self.max_aliases_per_uid,
            });
        }
        Ok(req.ip)
    }

    /// Whether the caller's session may release its hold on the alias `req.ip`. Allowed even
    /// when aliases have been switched off since: releasing only ever takes one away.
    pub fn remove_alias(
        &self,
        peer: &Peer,
        req: &Alias,
        ledger: &impl Ledger,
    ) -> Result<IpAddr, Refusal> {
        self.own_session(peer, req.session, ledger)?;
        if !ledger.holds_alias(req.session, req.ip) {
            return Err(Refusal::UnknownAlias {
                session: req.session,
                ip: req.ip,
            });
        }
        Ok(req.ip)
    }

    fn check_pod_ip(
        &self,
        field: &'static str,
        ip: IpAddr,
        host_addrs: &[IpAddr],
    ) -> Result<(), Refusal> {
        if let Some(what) = special_address(ip) {
            return Err(Refusal::NotAPodAddress { field, ip, what });
        }
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Err(Refusal::Ipv4Mapped { field, ip, v4 });
        }
        if host_addrs.contains(&ip) {
            return Err(Refusal::HostAddress { field, ip });
        }
        if !self.allowed_cidrs.iter().any(|net| net.contains(&ip)) {
            let allowed = self
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Refusal::OutsideNetworks { field, ip, allowed });
        }
        Ok(())
    }
}

/// What kind of address `ip` is, when it is one that can never belong to a pod.
fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
