//! Who holds what: the live sessions, their rules and aliases. helperd lists state from here,
//! never by parsing the kernel's ruleset. Changes are recorded only after the kernel took them,
//! so this always describes what is installed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::policy::{Caller, Ledger, Refusal, Rule, RuleKey};
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
    /// Records a new session.
    pub fn open(&mut self, conn: u64, caller: Caller, label: String) -> SessionId {
        self.next_id += 1;
        let id = SessionId(self.next_id);
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
            },
        );
        id
    }

    /// The session `id`, if it was opened on connection `conn`. Another connection's session
    /// is reported as unknown, not as someone else's.
    pub fn owned(&self, id: SessionId, conn: u64) -> Result<&Session, Refusal> {
        self.sessions
            .get(&id)
            .filter(|s| s.conn == conn)
            .ok_or(Refusal::UnknownSession { session: id })
    }

    /// Records a rule the kernel now has.
    pub fn insert_rule(&mut self, id: SessionId, rule: Rule) {
        if let Some(session) = self.sessions.get_mut(&id) {
            session.rules.insert(rule.key(), rule);
            self.rules.insert(rule.key(), id);
        }
    }

    /// The session's rule for `pod`.
    pub fn rule(&self, id: SessionId, pod: SocketAddr) -> Result<Rule, Refusal> {
        self.sessions
            .get(&id)
            .and_then(|s| s.rules.values().find(|r| r.pod == pod))
            .copied()
            .ok_or(Refusal::UnknownMapping { session: id, pod })
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

    /// Releases `id`'s hold on `ip`; `Ok(true)` when no session holds it any more.
    pub fn release_alias(&mut self, id: SessionId, ip: IpAddr) -> Result<bool, Refusal> {
        let held = self
            .sessions
            .get_mut(&id)
            .is_some_and(|s| s.aliases.remove(&ip));
        if !held {
            return Err(Refusal::UnknownAlias { session: id, ip });
        }
        Ok(self.drop_alias_hold(ip))
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

    #[test]
    fn sessions_belong_to_their_connection() {
        let mut registry = Registry::default();
        let id = registry.open(7, caller(1000), "a".into());
        assert!(registry.owned(id, 7).is_ok());
        assert_eq!(
            registry.owned(id, 8).unwrap_err(),
            Refusal::UnknownSession { session: id }
        );
    }

    #[test]
    fn closing_returns_exactly_what_the_session_held() {
        let mut registry = Registry::default();
        let a = registry.open(1, caller(1000), "a".into());
        let b = registry.open(2, caller(1001), "b".into());
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
        assert_eq!(registry.release_alias(b, ip), Ok(true));
        assert!(registry.close(a).is_none());
    }
}
