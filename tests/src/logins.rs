//! Logins as the clusters people bring have them, set up on the test cluster for the test
//! users: an exec credential plugin with short-lived tokens, client certificates, and
//! kubeconfigs with several contexts, whole or split across files for `KUBECONFIG=a:b:c`.
//! Every file goes into the workstation's scratch directory, readable by every test user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use erlbridge_kube_emulator::Access;
use erlbridge_kube_emulator::credential::PLUGIN_NAME;
use erlbridge_kube_emulator::kubeconfig::{KubeCluster, KubeContext, KubeUser, Kubeconfig};

use crate::Bins;
use crate::cluster::{API_ADDR, Cluster, NO_RIGHTS_TOKEN, TOKEN, write_readable};

/// The context with full access in the default namespace ([`Cluster::contexts`]).
pub const CONTEXT_TEST: &str = "erlbridge-test";
/// The context with full access in namespace `staging`.
pub const CONTEXT_STAGING: &str = "staging";
/// The context whose user has no rights.
pub const CONTEXT_NO_RIGHTS: &str = "no-rights";
/// The context whose cluster is an address where no API server listens (refused at once).
pub const CONTEXT_ELSEWHERE: &str = "elsewhere";

/// Logins through the exec credential plugin (`kube-emulator-credential`).
#[derive(Debug, Clone)]
pub struct ExecLogin {
    /// A kubeconfig whose user runs the plugin.
    pub kubeconfig: PathBuf,
    /// The issuer file the plugin reads (readable by every test user).
    pub issuer: PathBuf,
    /// The plugin's log: one line per run (writable by every test user).
    pub log: PathBuf,
}

impl ExecLogin {
    /// How many times the plugin ran so far.
    pub fn calls(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |t| t.lines().count())
    }
}

/// A kubeconfig with several contexts, clusters and users: as one file, and split one
/// context per file in the same order (only the first sets `current-context`).
#[derive(Debug, Clone)]
pub struct Contexts {
    /// Everything in one file.
    pub whole: PathBuf,
    /// One file per context.
    pub split: Vec<PathBuf>,
}

impl Contexts {
    /// The split files as `KUBECONFIG` names them: `a:b:c`.
    pub fn kubeconfig_env(&self) -> String {
        let paths: Vec<String> = self.split.iter().map(|p| p.display().to_string()).collect();
        paths.join(":")
    }
}

impl Cluster {
    /// Accepts tokens from the exec credential plugin, each valid for `validity` (kube-rs runs
    /// the plugin again when its token expires within 60 s), and writes a kubeconfig that runs
    /// the plugin staged in `bins` (stage [`PLUGIN_NAME`]):
    /// `let login = cluster.exec_login(&Bins::stage(&["erlbridge", PLUGIN_NAME])?, Duration::from_secs(5))?;`
    pub fn exec_login(&self, bins: &Bins, validity: Duration) -> anyhow::Result<ExecLogin> {
        let plugin = PathBuf::from(bins.path(PLUGIN_NAME));
        if !plugin.exists() {
            bail!("stage the plugin first: Bins::stage(&[\"{PLUGIN_NAME}\", ...])");
        }
        let issuer = self.scratch.join("exec-issuer.json");
        let log = self.scratch.join("exec-plugin.log");
        self.emulator
            .enable_exec_logins(&issuer, "exec-user", validity, Access::Full)
            .context("exec logins")?;
        let issuer_text = std::fs::read_to_string(&issuer)?;
        write_readable(&issuer, &issuer_text)?;
        // Any test uid appends to it.
        write_readable(&log, "")?;
        std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        let text = self
            .emulator
            .exec_kubeconfig(&plugin, &issuer, Some(&log), "default");
        Ok(ExecLogin {
            kubeconfig: self.write_file("kubeconfig-exec", &text)?,
            issuer,
            log,
        })
    }

    /// A kubeconfig logging in as `user` with a client certificate from the cluster's CA, with
    /// full access: `let kubeconfig = cluster.client_certificate_kubeconfig("alice")?;`
    pub fn client_certificate_kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        let text = self
            .emulator
            .client_certificate_kubeconfig(user, Access::Full, "default")?;
        self.write_file(&format!("kubeconfig-cert-{user}"), &text)
    }

    /// A kubeconfig with the contexts [`CONTEXT_TEST`], [`CONTEXT_STAGING`],
    /// [`CONTEXT_NO_RIGHTS`] and [`CONTEXT_ELSEWHERE`] (two clusters, three users), `current`
    /// the current one; whole and split:
    /// `let contexts = cluster.contexts(CONTEXT_ELSEWHERE)?;` then `--context erlbridge-test`,
    /// or `KUBECONFIG=contexts.kubeconfig_env()`.
    pub fn contexts(&self, current: &str) -> anyhow::Result<Contexts> {
        let here = self.emulator.kube_cluster("erlbridge-test");
        let (api, _) = API_ADDR.split_once(':').context("the API address")?;
        // Nothing listens there: connections are refused at once.
        let elsewhere = KubeCluster::new(
            "elsewhere",
            &format!("https://{api}:6444"),
            self.emulator.ca_pem(),
        );
        let tester = KubeUser::token("tester", TOKEN);
        let config = Kubeconfig::default()
            .context(KubeContext::new(
                CONTEXT_TEST,
                here.clone(),
                tester.clone(),
                "default",
            ))
            .context(KubeContext::new(
                CONTEXT_STAGING,
                here.clone(),
                tester.clone(),
                "staging",
            ))
            .context(KubeContext::new(
                CONTEXT_NO_RIGHTS,
                here,
                KubeUser::token("nobody", NO_RIGHTS_TOKEN),
                "default",
            ))
            .context(KubeContext::new(
                CONTEXT_ELSEWHERE,
                elsewhere,
                tester,
                "default",
            ))
            .current(current);
        let split = config
            .split()
            .iter()
            .enumerate()
            .map(|(i, text)| self.write_file(&format!("kubeconfig-context-{i}"), text))
            .collect::<anyhow::Result<_>>()?;
        Ok(Contexts {
            whole: self.write_file("kubeconfig-contexts", &config.to_yaml())?,
            split,
        })
    }
}
