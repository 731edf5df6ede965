//! A backend that changes nothing and records what it was asked, so the whole service can be
//! tested unprivileged. Failures can be switched on to test that a failed kernel change leaves
//! the helper's state as it was.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::alias::AliasBackend;
use crate::exec::BackendError;
use crate::nft::NatBackend;
use crate::policy::Rule;

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `NatBackend::reset`.
    Reset,
    /// `NatBackend::add`.
    Add(Rule),
    /// `NatBackend::remove`.
    Remove(Vec<Rule>),
    /// `NatBackend::teardown`.
    Teardown,
    /// `AliasBackend::reset`.
    AliasReset,
    /// `AliasBackend::add`.
    AliasAdd(IpAddr),
    /// `AliasBackend::remove`.
    AliasRemove(IpAddr),
}

/// A recording backend; clones share one log.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    calls: Arc<Mutex<Vec<Call>>>,
    failing: Arc<Mutex<bool>>,
    /// What `host_addresses` answers.
    pub hosts: Vec<IpAddr>,
}

impl Recording {
    /// A fake host with these addresses.
    pub fn with_hosts(hosts: Vec<IpAddr>) -> Recording {
        Recording {
            hosts,
            ..Recording::default()
        }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What a kernel would hold after the calls so far: the rules and the aliases, or the
    /// first call a kernel would have refused or silently ignored (a duplicate add, a removal
    /// of something absent).
    pub fn installed(&self) -> Result<(BTreeSet<Rule>, BTreeSet<IpAddr>), String> {
        let (mut rules, mut aliases) = (BTreeSet::new(), BTreeSet::new());
        for call in self.calls() {
            let ok = match &call {
                Call::Reset | Call::Teardown => {
                    rules.clear();
                    true
                }
                Call::AliasReset => {
                    aliases.clear();
                    true
                }
                Call::Add(rule) => rules.insert(*rule),
                Call::Remove(gone) => gone.iter().all(|rule| rules.remove(rule)),
                Call::AliasAdd(ip) => aliases.insert(*ip),
                Call::AliasRemove(ip) => aliases.remove(ip),
            };
            if !ok {
                return Err(format!(
                    "{call:?} does not fit what was installed before it"
                ));
            }
        }
        Ok((rules, aliases))
    }

    /// Whether changes fail now.
    pub fn failing(&self) -> bool {
        *self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, every change fails (or succeeds again).
    pub fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap_or_else(PoisonError::into_inner) = failing;
    }

    fn record(&self, call: Call) -> Result<(), BackendError> {
        if self.failing() {
            return Err(BackendError::Spawn {
                program: "/fake".into(),
                source: std::io::Error::other("switched to failing"),
            });
        }
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        Ok(())
    }
}

impl NatBackend for Recording {
    async fn reset(&self) -> Result<(), BackendError> {
        self.record(Call::Reset)
    }
    async fn add(&self, rule: &Rule) -> Result<(), BackendError> {
        self.record(Call::Add(*rule))
    }
    async fn remove(&self, rules: &[Rule]) -> Result<(), BackendError> {
        self.record(Call::Remove(rules.to_vec()))
    }
    async fn teardown(&self) -> Result<(), BackendError> {
        self.record(Call::Teardown)
    }
    async fn version(&self) -> String {
        "recording fake".to_owned()
    }
}

impl AliasBackend for Recording {
    async fn reset(&self) -> Result<(), BackendError> {
        self.record(Call::AliasReset)
    }
    async fn add(&self, ip: IpAddr) -> Result<(), BackendError> {
        self.record(Call::AliasAdd(ip))
    }
    async fn remove(&self, ip: IpAddr) -> Result<(), BackendError> {
        self.record(Call::AliasRemove(ip))
    }
    fn host_addresses(&self) -> Result<Vec<IpAddr>, BackendError> {
        Ok(self.hosts.clone())
    }
}
