//! The healing decisions, case by case, without a cluster or a helper.

use std::time::Duration;

use super::*;

fn pod(name: &str, ip: &str, uid: &str) -> PodInfo {
    PodInfo {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        uid: uid.to_owned(),
        restarts: 0,
        ip: ip.parse().expect("ip"),
        epmd_port: 4369,
        host: ip.to_owned(),
        env: BTreeMap::new(),
        epmdless: None,
        alive: None,
    }
}

fn bridged(info: PodInfo, generation: u64) -> PodState<()> {
    PodState::Bridged {
        info,
        held: (),
        generation,
    }
}

fn failing(info: PodInfo, retry_at: Instant, came_back: bool) -> PodState<()> {
    PodState::Failing {
        info,
        retry_at,
        came_back,
    }
}

fn attaching(info: PodInfo) -> PodState<()> {
    PodState::Attaching {
        info,
        came_back: false,
        retrying: false,
    }
}

fn snapshot(pods: &[(&str, Result<PodInfo, &str>)]) -> Snapshot {
    pods.iter()
        .map(|(name, seen)| ((*name).to_owned(), seen.clone().map_err(ToOwned::to_owned)))
        .collect()
}

fn state(pods: Vec<(&str, PodState<()>)>) -> BTreeMap<String, PodState<()>> {
    pods.into_iter().map(|(n, s)| (n.to_owned(), s)).collect()
}

#[test]
fn the_table() {
    let now = Instant::now();
    let later = now + Duration::from_secs(1);
    let earlier = now - Duration::from_millis(1);
    let a0 = pod("app-0", "10.244.1.8", "u0");
    let a0_new_ip = pod("app-0", "10.244.1.9", "u1");
    let a0_new_uid = pod("app-0", "10.244.1.8", "u2");
    let a1 = pod("app-1", "10.244.1.10", "u3");
    let a0_restarted = PodInfo {
        restarts: 1,
        ..a0.clone()
    };
    let a0_relabelled = PodInfo {
        env: BTreeMap::from([("OTHER".to_owned(), "x".to_owned())]),
        ..a0.clone()
    };
    type Case<'a> = (
        &'a str,
        Snapshot,
        BTreeMap<String, PodState<()>>,
        u64,
        Vec<Action>,
    );
    let cases: Vec<Case> = vec![
        (
            "a new pod is bridged",
            snapshot(&[("app-0", Ok(a0.clone()))]),
            state(vec![]),
            1,
            vec![Action::Bridge(a0.clone())],
        ),
        (
            "a bridged pod as it was: nothing to do",
            snapshot(&[("app-0", Ok(a0.clone()))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            1,
            vec![],
        ),
        (
            "a pod back with a new IP is bridged again",
            snapshot(&[("app-0", Ok(a0_new_ip.clone()))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            1,
            vec![Action::Rebridge(a0_new_ip.clone())],
        ),
        (
            "a pod re-created with the same IP and a new uid is bridged again",
            snapshot(&[("app-0", Ok(a0_new_uid.clone()))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            1,
            vec![Action::Rebridge(a0_new_uid.clone())],
        ),
        (
            "a pod whose Erlang container restarted is asked again (its node may listen elsewhere)",
            snapshot(&[("app-0", Ok(a0_restarted.clone()))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            1,
            vec![Action::Rebridge(a0_restarted.clone())],
        ),
        (
            "a pod being attached: nothing more to do, whatever else the others need",
            snapshot(&[("app-0", Ok(a0.clone())), ("app-1", Ok(a1.clone()))]),
            state(vec![("app-0", attaching(a0.clone()))]),
            1,
            vec![Action::Bridge(a1.clone())],
        ),
        (
            "a pod being attached that changed in ways that move no node: left to finish",
            snapshot(&[("app-0", Ok(a0_relabelled))]),
            state(vec![("app-0", attaching(a0.clone()))]),
            1,
            vec![],
        ),
        (
            "a pod being attached that moved meanwhile is attached where it is now",
            snapshot(&[("app-0", Ok(a0_new_ip.clone()))]),
            state(vec![("app-0", attaching(a0.clone()))]),
            1,
            vec![Action::Bridge(a0_new_ip.clone())],
        ),
        (
            "a pod deleted while being attached is dropped",
            snapshot(&[]),
            state(vec![("app-0", attaching(a0.clone()))]),
            1,
            vec![Action::Drop("app-0".into())],
        ),
        (
            "a pod being attached when the helper restarts is not remapped: it maps when done",
            snapshot(&[("app-0", Ok(a0.clone()))]),
            state(vec![("app-0", attaching(a0.clone()))]),
            2,
            vec![],
        ),
        (
            "a deleted pod is dropped",
            snapshot(&[("app-1", Ok(a1.clone()))]),
            state(vec![
                ("app-0", bridged(a0.clone(), 1)),
                ("app-1", bridged(a1.clone(), 1)),
            ]),
            1,
            vec![Action::Drop("app-0".into())],
        ),
        (
            "a pod deleted while the watch was down is missing from the re-list: dropped",
            snapshot(&[]),
            state(vec![
                ("app-0", bridged(a0.clone(), 1)),
                ("app-1", bridged(a1.clone(), 1)),
            ]),
            1,
            vec![Action::Drop("app-0".into()), Action::Drop("app-1".into())],
        ),
        (
            "a pod that is not ready is not bridged",
            snapshot(&[("app-0", Err("pod app-0 is Running but not Ready"))]),
            state(vec![]),
            1,
            vec![],
        ),
        (
            "a bridged pod that turns not ready stays bridged",
            snapshot(&[("app-0", Err("pod app-0 is Running but not Ready"))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            1,
            vec![],
        ),
        (
            "a pod with no epmd answer yet waits for its retry",
            snapshot(&[("app-0", Ok(a0.clone()))]),
            state(vec![("app-0", failing(a0.clone(), later, false))]),
            1,
            vec![],
        ),
        (
            "a pod with no epmd answer yet is tried again when due",
            snapshot(&[("app-0", Ok(a0.clone()))]),
            state(vec![("app-0", failing(a0.clone(), earlier, false))]),
            1,
            vec![Action::Bridge(a0.clone())],
        ),
        (
            "a failing pod that changed is tried at once",
            snapshot(&[("app-0", Ok(a0_new_ip.clone()))]),
            state(vec![("app-0", failing(a0.clone(), later, false))]),
            1,
            vec![Action::Bridge(a0_new_ip.clone())],
        ),
        (
            "a failing pod that is deleted is dropped",
            snapshot(&[]),
            state(vec![("app-0", failing(a0.clone(), later, true))]),
            1,
            vec![Action::Drop("app-0".into())],
        ),
        (
            "a pod that comes back after it was gone is bridged",
            snapshot(&[("app-0", Ok(a0_new_ip.clone()))]),
            state(vec![("app-0", PodState::Gone)]),
            1,
            vec![Action::Bridge(a0_new_ip.clone())],
        ),
        (
            "a gone pod that stays gone: nothing to do",
            snapshot(&[]),
            state(vec![("app-0", PodState::Gone)]),
            1,
            vec![],
        ),
        (
            "after a helper restart every bridged pod's redirects are added again",
            snapshot(&[("app-0", Ok(a0.clone())), ("app-1", Ok(a1.clone()))]),
            state(vec![
                ("app-0", bridged(a0.clone(), 1)),
                ("app-1", bridged(a1.clone(), 1)),
            ]),
            2,
            vec![Action::Remap("app-0".into()), Action::Remap("app-1".into())],
        ),
        (
            "a helper restart and a new IP at once: the new IP wins",
            snapshot(&[("app-0", Ok(a0_new_ip.clone()))]),
            state(vec![("app-0", bridged(a0.clone(), 1))]),
            2,
            vec![Action::Rebridge(a0_new_ip.clone())],
        ),
    ];
    for (name, snapshot, pods, generation, want) in cases {
        assert_eq!(plan(&snapshot, &pods, generation, now), want, "{name}");
    }
}

#[test]
fn the_next_retry_is_the_earliest_failure_of_a_ready_pod() {
    let now = Instant::now();
    let a0 = pod("app-0", "10.244.1.8", "u0");
    let a1 = pod("app-1", "10.244.1.9", "u1");
    let a2 = pod("app-2", "10.244.1.10", "u2");
    let soon = now + Duration::from_millis(100);
    let long_ago = now - Duration::from_secs(60);
    let pods = state(vec![
        (
            "app-0",
            failing(a0.clone(), now + Duration::from_secs(1), false),
        ),
        ("app-1", failing(a1.clone(), soon, false)),
        // Failed, then turned not ready (a crash loop): not a reason to wake up.
        ("app-2", failing(a2, long_ago, false)),
        ("app-3", bridged(a0.clone(), 1)),
        // Failed, then deleted: the same.
        ("app-4", failing(a1.clone(), long_ago, false)),
    ]);
    let seen = snapshot(&[
        ("app-0", Ok(a0.clone())),
        ("app-1", Ok(a1.clone())),
        ("app-2", Err("pod app-2 is Running but not Ready")),
        ("app-3", Ok(a0)),
    ]);
    assert_eq!(next_retry(&seen, &pods), Some(soon));
    assert_eq!(
        plan(&seen, &pods, 1, now),
        vec![Action::Drop("app-4".into())],
        "the not-ready failure waits"
    );
    assert_eq!(
        next_retry(&seen, &state(vec![("app-0", PodState::Gone)])),
        None
    );
}
