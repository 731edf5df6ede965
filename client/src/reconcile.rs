//! Healing as one pure decision. The pod watch keeps a store of the target's pods (swapped
//! whole at each re-list, as kube-runtime's reflector does); [`plan`] compares that snapshot
//! with what is bridged and says what to do: bridge, re-bridge, drop, or re-add redirects a
//! restarted helper lost. It does no I/O, so a table of cases tests it, the way helperd's
//! policy is tested. [`crate::bridge`] carries the actions out.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::discover::{PodInfo, Snapshot};

/// What erlbridge holds for one pod. `R` is what a bridged pod owns (its forwards and
/// redirects); the plan never looks inside it.
#[derive(Debug)]
pub enum PodState<R> {
    /// Bridged at `info`'s address; its redirects were made on helper session `generation`.
    Bridged {
        /// The pod as it was bridged.
        info: PodInfo,
        /// Its forwards and redirects.
        held: R,
        /// The helper session its redirects belong to.
        generation: u64,
    },
    /// Being attached (its epmd asked, its forwards opened) in a task of its own; no other
    /// pod's attach or heal waits for it.
    Attaching {
        /// The pod as it is being attached.
        info: PodInfo,
        /// Whether it was bridged before (then its return is a change, not an addition).
        came_back: bool,
        /// Whether its last attach failed (a failure again is not reported again).
        retrying: bool,
    },
    /// Ready, but bridging it failed; tried again at `retry_at`.
    Failing {
        /// The pod as last tried.
        info: PodInfo,
        /// When to try again.
        retry_at: Instant,
        /// Whether it was bridged before (then its return is a change, not an addition).
        came_back: bool,
    },
    /// Bridged once, gone since: a pod that comes back under the same name is a change.
    Gone,
}

/// One step the bridge takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bridge a ready pod that is not bridged: new, back, or due for another try; or attach
    /// again one whose attach in flight is for an instance that is gone.
    Bridge(PodInfo),
    /// The pod is bridged at an address that is no longer its own (new IP, re-created with a
    /// new uid, or its Erlang container restarted): unbridge it, then bridge it as it is now.
    Rebridge(PodInfo),
    /// The pod left the target (deleted, or missing from a re-list): unbridge it.
    Drop(String),
    /// The pod's redirects belong to a helper session that ended: add them to the current one.
    Remap(String),
}

/// What to do so that `pods` matches `snapshot`. `generation` is the live helper session's;
/// `now` decides which failed pods are due for another try.
pub fn plan<R>(
    snapshot: &Snapshot,
    pods: &BTreeMap<String, PodState<R>>,
    generation: u64,
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (name, seen) in snapshot {
        // A pod that is not ready keeps what it has: a readiness blip must not cut live
        // connections, and a pod that is really gone is deleted (or missing from a re-list).
        let Ok(info) = seen else { continue };
        match pods.get(name) {
            Some(PodState::Bridged {
                info: bridged,
                generation: g,
                ..
            }) => {
                if moved(bridged, info) {
                    actions.push(Action::Rebridge(info.clone()));
                } else if *g != generation {
                    actions.push(Action::Remap(name.clone()));
                }
            }
            Some(PodState::Attaching {
                info: attaching, ..
            }) => {
                if moved(attaching, info) {
                    actions.push(Action::Bridge(info.clone()));
                }
            }
            Some(PodState::Failing {
                info: tried,
                retry_at,
                ..
            }) => {
                if now >= *retry_at || tried != info {
                    actions.push(Action::Bridge(info.clone()));
                }
            }
            Some(PodState::Gone) | None => actions.push(Action::Bridge(info.clone())),
        }
    }
    for (name, state) in pods {
        let left = !snapshot.contains_key(name);
        let held = matches!(
            state,
            PodState::Bridged { .. } | PodState::Attaching { .. } | PodState::Failing { .. }
        );
        if left && held {
            actions.push(Action::Drop(name.clone()));
        }
    }
    actions
}

/// Whether `now` is another instance than `then`: another address, a re-created pod, or a
/// restarted Erlang container, whose node may listen elsewhere.
fn moved(then: &PodInfo, now: &PodInfo) -> bool {
    then.ip != now.ip || then.uid != now.uid || then.restarts != now.restarts
}

/// When the earliest failed pod that is ready to bridge is due for another try, if any is.
/// A failed pod that is not ready (or gone) waits for the watch to say it changed: counting it
/// here would wake the bridge at once, for ever.
pub fn next_retry<R>(snapshot: &Snapshot, pods: &BTreeMap<String, PodState<R>>) -> Option<Instant> {
    pods.iter()
        .filter_map(|(name, state)| match state {
            PodState::Failing { retry_at, .. } if matches!(snapshot.get(name), Some(Ok(_))) => {
                Some(*retry_at)
            }
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests;
