//! The Erlang cookie: from a Secret (`--cookie-from secret/NAME[:KEY]`) or from the pods'
//! environment (`--cookie-from env[:VAR]`, RELEASE_COOKIE by default). It reaches `-- CMD` as
//! ERLBRIDGE_COOKIE and a `--cookie-file` (mode 0600), and the printed commands only when
//! `--show-cookie` asks; it is never logged and never part of JSON output.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::discover::PodInfo;
use crate::k8s::{ApiError, Kube};

/// Where the cookie comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieSource {
    /// A key of a Secret in the target's namespace; `None`: the Secret's only key, or `cookie`.
    Secret {
        /// The Secret.
        name: String,
        /// The key.
        key: Option<String>,
    },
    /// A variable of the pods' environment (default RELEASE_COOKIE).
    Env(String),
}

/// A `--cookie-from` that is none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--cookie-from \"{0}\": use secret/NAME, secret/NAME:KEY, env or env:VARIABLE")]
pub struct BadSource(String);

impl FromStr for CookieSource {
    type Err = BadSource;

    fn from_str(text: &str) -> Result<Self, BadSource> {
        let bad = || BadSource(text.to_owned());
        if text == "env" {
            return Ok(CookieSource::Env("RELEASE_COOKIE".to_owned()));
        }
        if let Some(var) = text.strip_prefix("env:") {
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad());
            }
            return Ok(CookieSource::Env(var.to_owned()));
        }
        let rest = text.strip_prefix("secret/").ok_or_else(bad)?;
        let (name, key) = match rest.split_once(':') {
            Some((name, key)) if !key.is_empty() => (name, Some(key.to_owned())),
            Some(_) => return Err(bad()),
            None => (rest, None),
        };
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(CookieSource::Secret {
            name: name.to_owned(),
            key,
        })
    }
}

/// Why no cookie could be had.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The Secret, its key or the variable is not there.
    #[error("{0}")]
    NotFound(String),
    /// The API refused to show the Secret.
    #[error("the Kubernetes API refused to show secret {name}: {message}")]
    Forbidden {
        /// The Secret.
        name: String,
        /// The API's message.
        message: String,
    },
    /// The API failed.
    #[error("cannot read secret {0}")]
    Api(String, #[source] ApiError),
}

/// The nodes' cookie: from `source`, or without one the pods' RELEASE_COOKIE if they set it.
pub async fn find(
    kube: &Kube,
    source: Option<&CookieSource>,
    pods: &[PodInfo],
) -> Result<Option<String>, CookieError> {
    match source {
        Some(source) => resolve(kube, source, pods).await.map(Some),
        None => Ok(pods
            .iter()
            .find_map(|p| p.env.get("RELEASE_COOKIE").cloned())),
    }
}

/// Reads the cookie from `source`.
pub async fn resolve(
    kube: &Kube,
    source: &CookieSource,
    pods: &[PodInfo],
) -> Result<String, CookieError> {
    let namespace = &kube.namespace;
    match source {
        CookieSource::Env(var) => pods
            .iter()
            .find_map(|p| p.env.get(var).cloned())
            .ok_or_else(|| CookieError::NotFound(format!("no pod of the target sets {var} in its environment; try --cookie-from secret/NAME"))),
        CookieSource::Secret { name, key } => {
            let api: Api<Secret> = Api::namespaced(kube.client.clone(), namespace);
            let secret = kube.call(api.get(name)).await.map_err(|e| match e.code() {
                Some(404) => {
                    CookieError::NotFound(format!("secret {name} not found in namespace {namespace}"))
                }
                Some(401 | 403) => CookieError::Forbidden {
                    name: name.clone(),
                    message: e.message().unwrap_or("forbidden").to_owned(),
                },
                _ => CookieError::Api(name.clone(), e),
            })?;
            let data = secret.data.unwrap_or_default();
            let keys: Vec<&String> = data.keys().collect();
            let chosen = match key {
                Some(key) => key.clone(),
                None if data.len() == 1 => keys[0].clone(),
                None if data.contains_key("cookie") => "cookie".to_owned(),
                None => {
                    return Err(CookieError::NotFound(format!(
                        "secret {name} has the keys {}; say which one holds the cookie: --cookie-from secret/{name}:KEY",
                        list(&keys)
                    )));
                }
            };
            let value = data.get(&chosen).ok_or_else(|| {
                CookieError::NotFound(format!("secret {name} has no key \"{chosen}\" (it has {})", list(&keys)))
            })?;
            let cookie = String::from_utf8(value.0.clone())
                .map_err(|_| CookieError::NotFound(format!("secret {name} key \"{chosen}\" is not text")))?;
            Ok(cookie.trim().to_owned())
        }
    }
}

/// Names, each in quotes, joined for a sentence.
fn list(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the cookie to `path`, readable by the owner only.
pub fn write_file(path: &Path, cookie: &str) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(cookie.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read() {
        assert_eq!(
            "env".parse(),
            Ok(CookieSource::Env("RELEASE_COOKIE".into()))
        );
        assert_eq!(
            "env:MY_COOKIE".parse(),
            Ok(CookieSource::Env("MY_COOKIE".into()))
        );
        assert_eq!(
            "secret/app-cookie".parse(),
            Ok(CookieSource::Secret {
                name: "app-cookie".into(),
                key: None
            })
        );
        assert_eq!(
            "secret/app:erlang-cookie".parse(),
            Ok(CookieSource::Secret {
                name: "app".into(),
                key: Some("erlang-cookie".into())
            })
        );
        for bad in [
            "",
            "secret",
            "secret/",
            "secret/a:",
            "env:",
            "env:A-B",
            "file:/x",
            "configmap/x",
        ] {
            assert!(bad.parse::<CookieSource>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cookie_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("eb-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cookie");
        std::fs::write(&path, "old").unwrap();
        write_file(&path, "s3cret").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
