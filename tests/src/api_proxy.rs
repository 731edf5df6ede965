//! The API server behind an HTTP CONNECT proxy, as companies put one in front of their
//! clusters: the proxy (the emulator crate's [`ConnectProxy`]) listens in the cluster
//! namespace where the workstation reaches it, and the workstation's direct packets to the API
//! server are dropped, so only the proxy path works.

use std::path::PathBuf;

use erlbridge_kube_emulator::ConnectProxy;
use erlbridge_kube_emulator::kubeconfig::{KubeContext, KubeUser, Kubeconfig};

use crate::cluster::{Cluster, TOKEN};
use crate::workstation::{PacketDrop, Workstation};

/// A running proxy, the only way from the workstation to the API server while it lives.
pub struct ApiProxy {
    /// The proxy: its tunnels show what went through it.
    pub proxy: ConnectProxy,
    /// A kubeconfig whose cluster names the proxy (`proxy-url`), for [`crate::cluster::TOKEN`].
    pub kubeconfig: PathBuf,
    _direct: PacketDrop,
}

impl ApiProxy {
    /// `http://[user:password@]IP:PORT`, for `HTTPS_PROXY` or `proxy-url`.
    pub fn url(&self) -> String {
        self.proxy.url()
    }
}

impl Cluster {
    /// Starts a CONNECT proxy (requiring `credentials`, user and password, when given) and
    /// drops the workstation's direct packets to the API server until the value is dropped:
    /// `let proxied = cluster.api_through_proxy(&ws, Some(("u", "p")))?;` then
    /// `--kubeconfig proxied.kubeconfig`, or `HTTPS_PROXY=proxied.url()` with any kubeconfig.
    pub fn api_through_proxy(
        &self,
        ws: &Workstation,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<ApiProxy> {
        let listen = std::net::SocketAddr::new(self.api_addr().ip(), 0);
        let proxy = self.runtime.block_on(ConnectProxy::start(
            listen,
            Some(self.netns().name()),
            credentials,
        ))?;
        let kubeconfig = Kubeconfig::default()
            .context(KubeContext::new(
                "erlbridge-test",
                self.emulator
                    .kube_cluster("erlbridge-test")
                    .with_proxy(&proxy.url()),
                KubeUser::token("tester", TOKEN),
                "default",
            ))
            .to_yaml();
        Ok(ApiProxy {
            kubeconfig: self.write_file("kubeconfig-proxy", &kubeconfig)?,
            _direct: ws.drop_packets_to(self.api_addr())?,
            proxy,
        })
    }
}
