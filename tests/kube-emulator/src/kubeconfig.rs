//! Kubeconfig files as kubectl and kube-rs read them: any number of clusters, users and
//! contexts in one file, or the same split across several files for `KUBECONFIG=a:b:c`, which
//! kubectl merges by taking the first definition of each name and the first `current-context`.
//! Users log in with a bearer token, a client certificate or an exec credential plugin.
//!
//! ```
//! use erlbridge_kube_emulator::kubeconfig::{KubeCluster, KubeContext, KubeUser, Kubeconfig};
//! let cluster = KubeCluster::new("test", "https://10.0.0.1:6443", "-----BEGIN CERTIFICATE-----");
//! let config = Kubeconfig::default()
//!     .context(KubeContext::new("a", cluster.clone(), KubeUser::token("alice", "t1"), "default"))
//!     .context(KubeContext::new("b", cluster, KubeUser::token("bob", "t2"), "prod"))
//!     .current("b");
//! let files = config.split(); // two files; the first says `current-context: b`
//! assert_eq!(files.len(), 2);
//! ```

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::tls::ClientCertificate;

/// The exec plugin API version the emulator's plugin speaks.
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1";

/// A kubeconfig `clusters[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeCluster {
    /// Its name.
    pub name: String,
    /// `server`: the API server's URL (with its path prefix, if any).
    pub server: String,
    /// The CA certificate, PEM (`certificate-authority-data`).
    pub ca_pem: String,
    /// `proxy-url`, if any.
    pub proxy_url: Option<String>,
}

impl KubeCluster {
    /// A cluster without a proxy.
    pub fn new(name: &str, server: &str, ca_pem: &str) -> KubeCluster {
        KubeCluster {
            name: name.to_owned(),
            server: server.to_owned(),
            ca_pem: ca_pem.to_owned(),
            proxy_url: None,
        }
    }

    /// The same, reached through the proxy at `url` (`http://[user:pass@]host:port`).
    pub fn with_proxy(mut self, url: &str) -> KubeCluster {
        self.proxy_url = Some(url.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        let mut cluster = json!({
            "server": self.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
        });
        if let Some(proxy) = &self.proxy_url {
            cluster["proxy-url"] = json!(proxy);
        }
        json!({"name": self.name, "cluster": cluster})
    }
}

/// How a user logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A bearer token (`token`).
    Token(String),
    /// A client certificate and key, PEM (`client-certificate-data`, `client-key-data`).
    ClientCertificate {
        /// The certificate.
        cert_pem: String,
        /// Its private key.
        key_pem: String,
    },
    /// An exec credential plugin (`exec`).
    Exec(ExecLogin),
}

/// An `exec` entry: the plugin the client runs for a `client.authentication.k8s.io/v1`
/// ExecCredential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLogin {
    /// The plugin's path.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables for it.
    pub env: Vec<(String, String)>,
}

/// A kubeconfig `users[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeUser {
    /// Its name.
    pub name: String,
    /// How it logs in.
    pub login: Login,
}

impl KubeUser {
    /// A user with a bearer token.
    pub fn token(name: &str, token: &str) -> KubeUser {
        KubeUser {
            name: name.to_owned(),
            login: Login::Token(token.to_owned()),
        }
    }

    /// A user with a client certificate.
    pub fn client_certificate(name: &str, cert: &ClientCertificate) -> KubeUser {
        KubeUser {
            name: name.to_owned(),
            login: Login::ClientCertificate {
                cert_pem: cert.cert_pem.clone(),
                key_pem: cert.key_pem.clone(),
            },
        }
    }

    /// A user whose credentials an exec plugin gives.
    pub fn exec(name: &str, exec: ExecLogin) -> KubeUser {
        KubeUser {
            name: name.to_owned(),
            login: Login::Exec(exec),
        }
    }

    fn to_json(&self) -> Value {
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let user = match &self.login {
            Login::Token(token) => json!({"token": token}),
            Login::ClientCertificate { cert_pem, key_pem } => json!({
                "client-certificate-data": b64(cert_pem),
                "client-key-data": b64(key_pem),
            }),
            Login::Exec(exec) => {
                let mut entry = json!({
                    "apiVersion": EXEC_API_VERSION,
                    "command": exec.command.to_string_lossy(),
                    "args": exec.args,
                    // kubectl requires it for v1 plugins; Never keeps the plugin off the terminal.
                    "interactiveMode": "Never",
                    "provideClusterInfo": false,
                });
                if !exec.env.is_empty() {
                    entry["env"] = exec
                        .env
                        .iter()
                        .map(|(name, value)| json!({"name": name, "value": value}))
                        .collect();
                }
                json!({"exec": entry})
            }
        };
        json!({"name": self.name, "user": user})
    }
}

/// A kubeconfig `contexts[]` entry, with the cluster and user it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeContext {
    /// Its name.
    pub name: String,
    /// The cluster.
    pub cluster: KubeCluster,
    /// The user.
    pub user: KubeUser,
    /// The namespace.
    pub namespace: String,
}

impl KubeContext {
    /// A context.
    pub fn new(name: &str, cluster: KubeCluster, user: KubeUser, namespace: &str) -> KubeContext {
        KubeContext {
            name: name.to_owned(),
            cluster,
            user,
            namespace: namespace.to_owned(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"name": self.name, "context": {
            "cluster": self.cluster.name, "user": self.user.name, "namespace": self.namespace,
        }})
    }
}

/// A kubeconfig being put together: contexts in order, and the current one (the first added,
/// unless [`Kubeconfig::current`] says otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubeconfig {
    contexts: Vec<KubeContext>,
    current: Option<String>,
}

impl Kubeconfig {
    /// Adds a context (and its cluster and user, once per name).
    pub fn context(mut self, context: KubeContext) -> Kubeconfig {
        self.contexts.push(context);
        self
    }

    /// Makes `name` the current context.
    pub fn current(mut self, name: &str) -> Kubeconfig {
        self.current = Some(name.to_owned());
        self
    }

    fn current_name(&self) -> Option<&str> {
        self.current
            .as_deref()
            .or_else(|| self.contexts.first().map(|c| c.name.as_str()))
    }

    /// The whole kubeconfig as one file (JSON, which is YAML).
    pub fn to_yaml(&self) -> String {
        file(&self.contexts, self.current_name())
    }

    /// The same contexts, one file each (with its cluster and user), for `KUBECONFIG` to name
    /// in order; only the first file sets `current-context`, as kubectl's merge takes the first.
    pub fn split(&self) -> Vec<String> {
        self.contexts
            .iter()
            .enumerate()
            .map(|(i, context)| {
                file(
                    std::slice::from_ref(context),
                    (i == 0).then(|| self.current_name()).flatten(),
                )
            })
            .collect()
    }
}

/// One file: each cluster and user once, in the order the contexts first name them.
fn file(contexts: &[KubeContext], current: Option<&str>) -> String {
    let mut clusters: Vec<&KubeCluster> = Vec::new();
    let mut users: Vec<&KubeUser> = Vec::new();
    for context in contexts {
        if !clusters.iter().any(|c| c.name == context.cluster.name) {
            clusters.push(&context.cluster);
        }
        if !users.iter().any(|u| u.name == context.user.name) {
            users.push(&context.user);
        }
    }
    let mut config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
        "users": users.iter().map(|u| u.to_json()).collect::<Vec<_>>(),
        "contexts": contexts.iter().map(KubeContext::to_json).collect::<Vec<_>>(),
        "preferences": {},
    });
    if let Some(current) = current {
        config["current-context"] = json!(current);
    }
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_clusters_and_users_appear_once_and_split_files_carry_one_current_context() {
        let one = KubeCluster::new("one", "https://10.0.0.1:6443", "CA1");
        let two =
            KubeCluster::new("two", "https://10.0.0.2:6443", "CA2").with_proxy("http://p:3128");
        let alice = KubeUser::token("alice", "t");
        let config = Kubeconfig::default()
            .context(KubeContext::new("a", one.clone(), alice.clone(), "default"))
            .context(KubeContext::new("b", one, alice.clone(), "prod"))
            .context(KubeContext::new("c", two, alice, "default"))
            .current("c");
        let whole: Value = serde_json::from_str(&config.to_yaml()).expect("json");
        assert_eq!(whole["clusters"].as_array().map(Vec::len), Some(2));
        assert_eq!(whole["users"].as_array().map(Vec::len), Some(1));
        assert_eq!(whole["current-context"], "c");
        assert_eq!(
            whole["clusters"][1]["cluster"]["proxy-url"],
            "http://p:3128"
        );

        let files: Vec<Value> = config
            .split()
            .iter()
            .map(|f| serde_json::from_str(f).expect("json"))
            .collect();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0]["current-context"], "c");
        assert!(files[1].get("current-context").is_none());
        assert_eq!(files[2]["contexts"][0]["name"], "c");
    }
}
