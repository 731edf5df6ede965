//! The target's pods, as one kube-runtime watcher feeding a reflector store. API servers end
//! watches (timeouts, `410 Gone` after compaction); the watcher then lists again, and the store
//! swaps in the new list whole at its end, so a pod deleted while the watch was down simply is
//! not in the next snapshot. Readiness is the first complete list.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tracing::debug;

use crate::discover::{DiscoverError, NodeRules, Snapshot, api_error, pod_info};
use crate::k8s::Kube;

/// A live watch of the target's pods.
pub struct PodWatch {
    store: Store<Pod>,
    events: BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>,
    rules: NodeRules,
    what: String,
}

impl PodWatch {
    /// Starts watching the pods `config` selects and returns once the first list is complete
    /// (within the request timeout). An error before that is the caller's to report (wrong
    /// credentials, no such namespace); later ones are retried with backoff.
    pub async fn start(
        kube: &Kube,
        config: watcher::Config,
        rules: NodeRules,
        what: String,
    ) -> Result<PodWatch, DiscoverError> {
        let (store, writer) = reflector::store();
        let mut events = watcher(kube.pods(), config)
            .default_backoff()
            .reflect(writer)
            .boxed();
        let first_list = async {
            loop {
                match events.next().await {
                    Some(Ok(watcher::Event::InitDone)) => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(watch_error(kube, e, &what)),
                    None => {
                        return Err(DiscoverError::NotFound(format!(
                            "the watch of {what} ended before its first list"
                        )));
                    }
                }
            }
        };
        kube.bounded(first_list).await??;
        Ok(PodWatch {
            store,
            events,
            rules,
            what,
        })
    }

    /// The pods as the store holds them now, each ready to bridge or why not.
    pub fn snapshot(&self) -> Snapshot {
        self.store
            .state()
            .iter()
            .map(|pod| {
                let name = pod.metadata.name.clone().unwrap_or_default();
                (name, pod_info(pod, &self.rules))
            })
            .collect::<BTreeMap<_, _>>()
    }

    /// Completes when the store changed: a pod applied or deleted, or a re-list complete.
    /// Returns false when the watch has ended for good. Cancel-safe.
    pub async fn changed(&mut self) -> bool {
        loop {
            match self.events.next().await {
                Some(Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                )) => return true,
                // A re-list in progress: the store swaps at its end.
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Err(e)) => {
                    debug!(what = %self.what, error = %e, "the pod watch failed; retrying")
                }
                None => return false,
            }
        }
    }
}

/// What a watch failure before the first list means for the user.
fn watch_error(kube: &Kube, e: watcher::Error, what: &str) -> DiscoverError {
    let e = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => kube::Error::Api(status),
        watcher::Error::NoResourceVersion => {
            kube::Error::Api(Box::new(kube::core::Status::failure(
                "the API server sent no resourceVersion in a pod list",
                "BadResponse",
            )))
        }
    };
    api_error(kube.error(e), what)
}
