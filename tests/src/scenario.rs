//! The usual end-to-end setup in one value: a workstation, the test cluster a manifest
//! describes, erlbridge-helperd as root, and an unprivileged user who runs `erlbridge` and
//! local Erlang nodes. Scenarios read as prose on top of it:
//! `let s = Scenario::start(MANIFEST, 61020); let (up, ready) = s.up(&["app-0"]);`

use std::time::{Duration, Instant};

use erlbridge_kube_emulator::StartOptions;
use erlbridge_kube_emulator::credential::PLUGIN_NAME;

use crate::events::{self, Ready};
use crate::{Bins, Cluster, Helperd, Spawned, User, Workstation, require_root};

/// Workstation, cluster, helper and user. Fields drop in order: helper, cluster, workstation,
/// binaries.
pub struct Scenario {
    /// The helper, as root in the workstation (none in the no-helper scenarios).
    pub helperd: Option<Helperd>,
    /// The test cluster.
    pub cluster: Cluster,
    /// The workstation.
    pub ws: Workstation,
    /// The project's binaries.
    pub bins: Bins,
    /// The user who runs erlbridge: a member of the helper's access group.
    pub user: User,
}

impl Scenario {
    /// Builds everything; `uid` names the user (tests running side by side use different ones).
    pub fn start(manifest: &str, uid: u32) -> Scenario {
        Scenario::start_with_helper_config(manifest, uid, "")
    }

    /// The same, with `config` lines added to the helper's configuration.
    pub fn start_with_helper_config(manifest: &str, uid: u32, config: &str) -> Scenario {
        let mut s = Scenario::start_without_helper(manifest, uid);
        s.helperd = Some(Helperd::start(&s.ws, &s.bins, config).expect("helperd"));
        s
    }

    /// Builds the workstation and the cluster, and starts no helper: nothing privileged runs
    /// on the workstation.
    pub fn start_without_helper(manifest: &str, uid: u32) -> Scenario {
        Scenario::start_with_api(manifest, uid, StartOptions::default(), false)
    }

    /// The same with an API server started with `options` (a path prefix, say), and the helper
    /// when `helper` says so.
    pub fn start_with_api(
        manifest: &str,
        uid: u32,
        options: StartOptions,
        helper: bool,
    ) -> Scenario {
        require_root();
        let bins = Bins::stage(&[
            "erlbridge-helperd",
            "helper-probe",
            "erlbridge",
            PLUGIN_NAME,
        ])
        .expect("binaries");
        let ws = Workstation::new().expect("workstation");
        let cluster = Cluster::start_with(&ws, manifest, options).expect("cluster");
        let helperd = helper.then(|| Helperd::start(&ws, &bins, "").expect("helperd"));
        Scenario {
            helperd,
            cluster,
            ws,
            bins,
            user: User::member(uid),
        }
    }

    /// The helper's socket, or a path where none will ever be.
    pub fn helper_socket(&self) -> String {
        match &self.helperd {
            Some(helperd) => helperd.socket.display().to_string(),
            None => self
                .ws
                .scratch()
                .join("no-helper.sock")
                .display()
                .to_string(),
        }
    }

    /// The helper; the scenario must have one.
    pub fn helper(&mut self) -> &mut Helperd {
        self.helperd.as_mut().expect("this scenario runs no helper")
    }

    /// `erlbridge SUB ARGS`, pointed at the test cluster and helper unless ARGS say otherwise.
    pub fn erlbridge(&self, sub: &str, args: &[&str]) -> Vec<String> {
        let mut argv = vec![self.bins.path("erlbridge"), sub.to_owned()];
        if matches!(sub, "up" | "remsh" | "doctor" | "observer" | "top" | "eval")
            && !args.contains(&"--kubeconfig")
        {
            argv.extend([
                "--kubeconfig".to_owned(),
                self.cluster.kubeconfig.display().to_string(),
            ]);
        }
        if !args.contains(&"--helper-socket") {
            argv.extend(["--helper-socket".to_owned(), self.helper_socket()]);
        }
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Runs `erlbridge SUB ARGS` to completion as `user`: (exit code, stdout, stderr). What it
    /// printed must be plain sentences ([`events::assert_plain`]).
    pub fn run(&self, user: &User, sub: &str, args: &[&str]) -> (i32, String, String) {
        let argv = self.erlbridge(sub, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, out, err) = self.ws.run_as(user, &argv).expect("erlbridge");
        events::assert_plain(&out);
        events::assert_plain(&err);
        (code, out, err)
    }

    /// Starts `erlbridge up ARGS --output json` as the user; returns it once ready, with its
    /// ready event.
    pub fn up(&self, args: &[&str]) -> (Spawned, Ready) {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let argv = self.erlbridge("up", &args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let cmd = self.ws.command_as(&self.user, &argv).expect("erlbridge");
        let mut up = Spawned::start_capturing(cmd).expect("erlbridge");
        let ready = events::ready(&mut up, Duration::from_secs(60));
        (up, ready)
    }

    /// Evaluates `expr` on a fresh hidden local node of the user's, with `cookie`.
    pub fn local(&self, cookie: &str, expr: &str, extra: &[&str]) -> String {
        self.ws
            .erl_eval(&self.user, cookie, expr, extra)
            .expect("local node")
    }

    /// Whether a fresh hidden local node connects to `node` and gets its name back by rpc.
    pub fn reaches(&self, cookie: &str, node: &str) -> bool {
        let expr =
            format!("{{net_kernel:connect_node('{node}'), rpc:call('{node}', erlang, node, [])}}");
        self.ws
            .erl_eval(&self.user, cookie, &expr, &[])
            .is_ok_and(|r| r == format!("{{true,'{node}'}}"))
    }

    /// Asserts that each of `pods` lists exactly the others' nodes as its peers: a visible
    /// local node the pods could not reach would have made `global` split them.
    pub fn assert_peers_intact(&self, pods: &[&str], when: &str) {
        let names: Vec<String> = pods
            .iter()
            .map(|p| self.cluster.pod(p).node_name.clone().unwrap_or_default())
            .collect();
        for (i, pod) in pods.iter().enumerate() {
            let mut others: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n.clone())
                .collect();
            others.sort();
            assert_eq!(
                self.cluster.pod(pod).nodes().expect("nodes"),
                others,
                "{when}: {pod}'s peers"
            );
        }
    }

    /// How many mappings the helper's table holds.
    pub fn mappings(&self) -> usize {
        self.ws
            .helper_table()
            .unwrap_or_default()
            .matches(" : 127.0.0.1 . ")
            .count()
    }

    /// Waits until the helper's table holds no mapping.
    pub fn wait_no_mappings(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.mappings() > 0 {
            assert!(
                Instant::now() < deadline,
                "rules left after {within:?}:\n{:?}",
                self.ws.helper_table()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
