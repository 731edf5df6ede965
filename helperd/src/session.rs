//! Who holds what: the live sessions, their rules and aliases. helperd lists state from here,
//! never by parsing the kernel's ruleset. Changes are recorded only after the kernel took them,
//! so this always describes what is installed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::policy::{Caller, Ledger, Rule, RuleKey};
use crate::request::SessionId;

/// One live session.
#[derive(Debug)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The connection it was opened on; only that connection may change it.
    pub conn: u64,
    /// Who opened it.
    pub caller: Caller,
    /// The label given at open.
    pub label: String,
    /// When it was opened.
    pub opened: SystemTime,
    /// Its live rules.
    pub rules: BTreeMap<RuleKey, Rule>,
    /// The aliases it holds.
    pub aliases: BTreeSet<IpAddr>,
    /// Its tracing span: every event about the session is logged inside it.
    pub span: tracing::Span,
}

/// What a closed session leaves for the kernel to undo.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Rules to remove.
    pub rules: Vec<Rule>,
    /// Aliases no other session holds, to take off `lo`.
    pub aliases: Vec<IpAddr>,
}

/// Every live session.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: u64,
    sessions: BTreeMap<SessionId, Session>,
    rules: HashMap<RuleKey, SessionId>,
    alias_holders: BTreeMap<IpAddr, usize>,
}

impl Registry {
    /// Records a new session, logged inside `span` from now on. The span gets the session's id
    /// in its `session` field.
    pub fn open(
        &mut self,
        conn: u64,
        caller: Caller,
        label: String,
        span: tracing::Span,
    ) -> SessionId {
        self.next_id += 1;
        let id = SessionId(self.next_id);
        span.record("session", id.0);
        self.sessions.insert(
            id,
            Session {
                id,
                conn,
                caller,
                label,
                opened: SystemTime::now(),
                rules: BTreeMap::new(),
                aliases: BTreeSet::new(),
                span,
            },
        );
        id
    }

    /// The live session `id`.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Records a rule the kernel now has.
    pub fn insert_rule(&mut self, id: SessionId, rule: Rule) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.rules.insert(rule.key(), rule);
            self.rules.insert(rule.key(), id);
        }
    }

    /// Forgets a rule the kernel no longer has.
    pub fn forget_rule(&mut self, id: SessionId, rule: &Rule) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.rules.remove(&rule.key());
            self.rules.remove(&rule.key());
        }
    }

    /// Whether no session holds `ip` yet (so the kernel must add it first).
    pub fn alias_is_new(&self, ip: IpAddr) -> bool {
        !self.alias_holders.contains_key(&ip)
    }

    /// Records that `id` holds the alias `ip`.
    pub fn hold_alias(&mut self, id: SessionId, ip: IpAddr) {
        if let Some(session) = self.sessions.get_mut(&id)
            && session.aliases.insert(ip)
        {
            *self.alias_holders.entry(ip).or_default() += 1;
        }
    }

    /// Whether exactly one session holds `ip` (so releasing it takes it off `lo`).
    pub fn alias_is_last(&self, ip: IpAddr) -> bool {
        self.alias_holders.get(&ip) == Some(&1)
    }

    /// Releases `id`'s hold on `ip`, if it has one.
    pub fn release_alias(&mut self, id: SessionId, ip: IpAddr) {
        if self
            .sessions
            .get_mut(&id)
            .is_some_and(|s| s.aliases.remove(&ip))
        {
            self.drop_alias_hold(ip);
        }
    }

    fn drop_alias_hold(&mut self, ip: IpAddr) -> bool {
        match self.alias_holders.get_mut(&ip) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.alias_holders.remove(&ip);
                true
            }
        }
    }

    /// Forgets a session and says what the kernel must undo.
    pub fn close(&mut self, id: SessionId) -> Option<(Session, Leftovers)> {
        let session = self.sessions.remove(&id)?;
        let rules: Vec<Rule> = session.rules.values().copied().collect();
        for rule in &rules {
            self.rules.remove(&rule.key());
        }
        let aliases = session
            .aliases
            .iter()
            .copied()
            .filter(|ip| self.drop_alias_hold(*ip))
            .collect();
        Some((session, Leftovers { rules, aliases }))
    }

    /// The aliases helperd put on `lo`: the host's own addresses less these are what the
    /// policy protects.
    pub fn aliases(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.alias_holders.keys().copied()
    }

    /// Every live session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }
}

impl Ledger for Registry {
    fn sessions_of(&self, uid: u32) -> usize {
        self.sessions
            .values()
            .filter(|s| s.caller.uid == uid)
            .count()
    }

    fn rules_of(&self, uid: u32) -> usize {
        self.rules.keys().filter(|k| k.uid == uid).count()
    }

    fn aliases_of(&self, uid: u32) -> usize {
        self.sessions
            .values()
            .filter(|s| s.caller.uid == uid)
            .map(|s| s.aliases.len())
            .sum()
    }

    fn holder(&self, key: &RuleKey) -> Option<SessionId> {
        self.rules.get(key).copied()
    }

    fn holds_alias(&self, session: SessionId, ip: IpAddr) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.aliases.contains(&ip))
    }

    fn connection_of(&self, session: SessionId) -> Option<u64> {
        self.sessions.get(&session).map(|s| s.conn)
    }

    fn rule(&self, session: SessionId, pod: SocketAddr) -> Option<Rule> {
        self.sessions
            .get(&session)
            .and_then(|s| s.rules.values().find(|r| r.pod == pod))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            groups: vec![],
            pid: 1,
        }
    }

    fn rule(uid: u32, pod: &str) -> Rule {
        Rule {
            uid,
            pod: pod.parse().unwrap(),
            target: "127.0.0.1:40000".parse().unwrap(),
        }
    }

    fn open(registry: &mut Registry, conn: u64, uid: u32) -> SessionId {
        registry.open(conn, caller(uid), "test".into(), tracing::Span::none())
    }

    #[test]
    fn sessions_belong_to_their_connection() {
        let mut registry = Registry::default();
        let id = open(&mut registry, 7, 1000);
        assert_eq!(registry.connection_of(id), Some(7));
        assert_eq!(registry.connection_of(SessionId(id.0 + 1)), None);
    }

    #[test]
    fn closing_returns_exactly_what_the_session_held() {
        let mut registry = Registry::default();
        let a = open(&mut registry, 1, 1000);
        let b = open(&mut registry, 2, 1001);
        registry.insert_rule(a, rule(1000, "10.0.0.1:4369"));
        registry.insert_rule(b, rule(1001, "10.0.0.1:4369"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        registry.hold_alias(a, ip);
        registry.hold_alias(b, ip);
        registry.hold_alias(a, other);
        assert_eq!((registry.rules_of(1000), registry.aliases_of(1000)), (1, 2));

        let (_, left) = registry.close(a).expect("open");
        assert_eq!(left.rules, vec![rule(1000, "10.0.0.1:4369")]);
        assert_eq!(left.aliases, vec![other], "b still holds {ip}");
        assert_eq!(registry.rules_of(1000), 0);
        assert!(
            registry
                .holder(&rule(1001, "10.0.0.1:4369").key())
                .is_some()
        );
        assert!(registry.alias_is_last(ip));
        registry.release_alias(b, ip);
        assert!(registry.alias_is_new(ip));
        assert!(registry.close(a).is_none());
    }
}
