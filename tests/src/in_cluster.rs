//! Commands run "inside a pod", as a CI job in the cluster runs: in the workstation's network
//! namespace, as a test user, in a private mount namespace where the service account's files
//! (`token`, `ca.crt`, `namespace`) sit at their standard path, with `KUBERNETES_SERVICE_HOST`
//! and `KUBERNETES_SERVICE_PORT` pointing at the API server, as kube-rs's and client-go's
//! in-cluster configuration read them.
//!
//! The private mount namespace gets its own tmpfs on `/run` (`/var/run` links there), so
//! nothing is created on the host and everything goes with the command. The files themselves
//! live in the workstation's scratch directory and are bind-mounted: rewriting them
//! ([`InCluster::rotate`]) shows at once to a command that is running.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use erlbridge_kube_emulator::{Access, Emulator};

use crate::cluster::Cluster;
use crate::process::Spawned;
use crate::user::User;
use crate::workstation::Workstation;

/// Where a pod sees its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Sets up the mount namespace, then execs the rest of its arguments. `$1` is the directory
/// holding the service account's files.
const ENTER: &str = r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
mount --bind "$1" /run/secrets/kubernetes.io/serviceaccount
shift
exec "$@""#;

/// A service account of the test cluster, for commands run as if in a pod.
pub struct InCluster {
    dir: PathBuf,
    emulator: Emulator,
    host: String,
    port: u16,
    token: String,
    rotations: u32,
}

impl Cluster {
    /// A service account with full access in namespace `default`:
    /// `let sa = cluster.in_cluster()?; let (code, out, _) = sa.run_as(&ws, &user, &["kubectl", "get", "pods"])?;`
    pub fn in_cluster(&self) -> anyhow::Result<InCluster> {
        let mut sa = InCluster {
            dir: self.scratch.join("serviceaccount"),
            emulator: self.emulator.clone(),
            host: self.emulator.addr().ip().to_string(),
            port: self.emulator.addr().port(),
            token: String::new(),
            rotations: 0,
        };
        sa.rotate()?;
        Ok(sa)
    }
}

impl InCluster {
    /// The token the files hold now.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The directory bind-mounted at [`SERVICE_ACCOUNT_DIR`].
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Writes a new token (accepted with full access) into the files, each replaced whole, and
    /// returns it. The old token stays valid until [`InCluster::revoke`]: kube-rs reads its
    /// token file again only about once a minute (client-go likewise), so keep it valid that
    /// long where a running client must go on.
    pub fn rotate(&mut self) -> anyhow::Result<String> {
        self.rotations += 1;
        let token = format!("erlbridge-sa-token-{}", self.rotations);
        self.emulator.add_token(&token, Access::Full);
        self.emulator
            .write_service_account(&self.dir, &token, "default")
            .context("the service account's files")?;
        for name in ["", "ca.crt", "namespace", "token"] {
            let path = self.dir.join(name);
            let mode = if name.is_empty() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        self.token = token.clone();
        Ok(token)
    }

    /// Stops accepting `token` (401 from now on).
    pub fn revoke(&self, token: &str) {
        self.emulator.revoke_token(token);
    }

    /// A command that runs `argv` as `user` in the workstation, inside the pod-like mount
    /// namespace, with only HOME, PATH and the KUBERNETES_SERVICE_* variables set.
    pub fn command_as(
        &self,
        ws: &Workstation,
        user: &User,
        argv: &[&str],
    ) -> anyhow::Result<Command> {
        let home = ws.home(user)?.display().to_string();
        let mut inner = vec![
            "env".to_owned(),
            format!("KUBERNETES_SERVICE_HOST={}", self.host),
            format!("KUBERNETES_SERVICE_PORT={}", self.port),
        ];
        inner.extend(argv.iter().map(|a| (*a).to_owned()));
        let inner: Vec<&str> = inner.iter().map(String::as_str).collect();
        let dir = self.dir.display().to_string();
        let mut outer = vec!["unshare", "--mount", "--propagation", "private", "--"];
        outer.extend(["sh", "-c", ENTER, "sh", &dir]);
        let wrapped = user.wrap(&home, &inner);
        outer.extend(wrapped.iter().map(String::as_str));
        Ok(ws.ns.command(&outer))
    }

    /// Runs `argv` that way to completion: (exit code, stdout, stderr).
    pub fn run_as(
        &self,
        ws: &Workstation,
        user: &User,
        argv: &[&str],
    ) -> anyhow::Result<(i32, String, String)> {
        crate::workstation::run_to_end(self.command_as(ws, user, argv)?, argv)
    }

    /// Starts `argv` that way.
    pub fn spawn_as(
        &self,
        ws: &Workstation,
        user: &User,
        argv: &[&str],
    ) -> anyhow::Result<Spawned> {
        Spawned::start(self.command_as(ws, user, argv)?)
    }
}
