//! Short-lived logins through an exec credential plugin, as managed clusters do them (EKS, GKE,
//! AKS, OIDC helpers). The emulator writes an issuer file (a random secret, a user and how long
//! a token lives); the plugin (binary `kube-emulator-credential`, which a kubeconfig's
//! `users[].user.exec` runs) reads it and prints a `client.authentication.k8s.io/v1`
//! ExecCredential whose token is an HMAC over its expiry; the emulator accepts such a token
//! until it expires and answers 401 afterwards. Nothing but this plugin can mint one.
//!
//! Token: `kube-emulator-exec.v1.<expiry ms since the epoch>.<nonce>.<HMAC-SHA256, base64url>`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::jiff::Timestamp;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::kubeconfig::ExecLogin;

/// What every token the plugin mints starts with.
pub const TOKEN_PREFIX: &str = "kube-emulator-exec.v1.";

/// The plugin binary's name (in the same target directory as the test binaries' parent).
pub const PLUGIN_NAME: &str = "kube-emulator-credential";

/// What can go wrong minting or reading exec credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The issuer file could not be read or written.
    #[error("cannot use the issuer file {path}")]
    IssuerFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The issuer file is not one the emulator wrote.
    #[error("the issuer file {path} is not one the emulator wrote")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The invocation log could not be appended to.
    #[error("cannot append to the log {path}")]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No randomness for a secret or nonce.
    #[error("the system gave no random bytes")]
    Random,
}

/// The issuer file, as written to disk.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssuerFile {
    secret: String,
    user: String,
    validity_ms: u64,
}

/// Mints and checks exec-plugin tokens.
pub struct TokenIssuer {
    secret: Vec<u8>,
    key: hmac::Key,
    /// The user its tokens stand for.
    pub user: String,
    /// How long a token lives.
    pub validity: Duration,
}

/// Why a token was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a token this issuer minted (or altered).
    Forged,
    /// Minted here, but past its expiry.
    Expired,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random<const N: usize>() -> Result<[u8; N], CredentialError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CredentialError::Random)?;
    Ok(bytes)
}

impl TokenIssuer {
    /// A new issuer with a random secret.
    pub fn generate(user: &str, validity: Duration) -> Result<TokenIssuer, CredentialError> {
        Ok(TokenIssuer::with_secret(
            random::<32>()?.to_vec(),
            user,
            validity,
        ))
    }

    fn with_secret(secret: Vec<u8>, user: &str, validity: Duration) -> TokenIssuer {
        TokenIssuer {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            secret,
            user: user.to_owned(),
            validity,
        }
    }

    /// Writes the issuer file the plugin reads.
    pub fn write(&self, path: &Path) -> Result<(), CredentialError> {
        let file = IssuerFile {
            secret: STANDARD.encode(&self.secret),
            user: self.user.clone(),
            validity_ms: u64::try_from(self.validity.as_millis()).unwrap_or(u64::MAX),
        };
        std::fs::write(path, serde_json::to_vec(&file).unwrap_or_default()).map_err(|source| {
            CredentialError::IssuerFile {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Reads an issuer file.
    pub fn read(path: &Path) -> Result<TokenIssuer, CredentialError> {
        let bytes = std::fs::read(path).map_err(|source| CredentialError::IssuerFile {
            path: path.to_owned(),
            source,
        })?;
        let malformed = || CredentialError::Malformed {
            path: path.to_owned(),
        };
        let file: IssuerFile = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        let secret = STANDARD.decode(file.secret).map_err(|_| malformed())?;
        Ok(TokenIssuer::with_secret(
            secret,
            &file.user,
            Duration::from_millis(file.validity_ms),
        ))
    }

    /// A token valid from `now` for the issuer's validity, and its expiry.
    pub fn issue(&self, now: SystemTime) -> Result<(String, SystemTime), CredentialError> {
        let expiry = now + self.validity;
        let nonce = URL_SAFE_NO_PAD.encode(random::<9>()?);
        let body = format!("{TOKEN_PREFIX}{}.{nonce}", millis(expiry));
        let mac = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, body.as_bytes()));
        Ok((format!("{body}.{mac}"), expiry))
    }

    /// Whether `token` is one of this issuer's and still valid at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(), Rejection> {
        let (body, mac) = token.rsplit_once('.').ok_or(Rejection::Forged)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| Rejection::Forged)?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| Rejection::Forged)?;
        let expiry: u64 = body
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split('.').next())
            .and_then(|ms| ms.parse().ok())
            .ok_or(Rejection::Forged)?;
        if millis(now) >= expiry {
            return Err(Rejection::Expired);
        }
        Ok(())
    }
}

/// RFC 3339, as `expirationTimestamp` is written.
fn rfc3339(t: SystemTime) -> String {
    let ms = i64::try_from(millis(t)).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

/// The ExecCredential the plugin prints for a token.
pub fn exec_credential(token: &str, expiry: SystemTime) -> String {
    json!({
        "apiVersion": crate::kubeconfig::EXEC_API_VERSION,
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": rfc3339(expiry)},
    })
    .to_string()
}

/// What the plugin does: mints a token from the issuer file, appends a line to `log` when given
/// (one line per invocation, so a test can count re-authentications), and returns the
/// ExecCredential to print.
pub fn run_plugin(issuer_file: &Path, log: Option<&Path>) -> Result<String, CredentialError> {
    let issuer = TokenIssuer::read(issuer_file)?;
    let now = SystemTime::now();
    let (token, expiry) = issuer.issue(now)?;
    if let Some(path) = log {
        let line = format!(
            "{} issued a token for {} valid until {}\n",
            rfc3339(now),
            issuer.user,
            rfc3339(expiry)
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| CredentialError::Log {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(exec_credential(&token, expiry))
}

/// The kubeconfig `exec` entry that runs `plugin` on `issuer_file`, logging to `log`.
pub fn exec_login(plugin: &Path, issuer_file: &Path, log: Option<&Path>) -> ExecLogin {
    let mut args = vec![
        "--issuer".to_owned(),
        issuer_file.to_string_lossy().into_owned(),
    ];
    if let Some(log) = log {
        args.extend(["--log".to_owned(), log.to_string_lossy().into_owned()]);
    }
    ExecLogin {
        command: plugin.to_owned(),
        args,
        env: Vec::new(),
    }
}

/// Where the plugin binary is when this runs from a test binary built by cargo (`target/
/// PROFILE/deps/NAME-HASH` next to `target/PROFILE/kube-emulator-credential`), or `None` when
/// it was not built (`cargo build -p erlbridge-kube-emulator --bins` builds it).
pub fn find_plugin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(PLUGIN_NAME))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_forgeries_never() {
        let issuer = TokenIssuer::generate("ci", Duration::from_secs(5)).expect("issuer");
        let now = SystemTime::now();
        let (token, expiry) = issuer.issue(now).expect("token");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(expiry, now + Duration::from_secs(5));
        assert_eq!(issuer.verify(&token, now), Ok(()));
        assert_eq!(
            issuer.verify(&token, now + Duration::from_secs(5)),
            Err(Rejection::Expired)
        );
        // A later expiry with the old MAC, or another issuer's token, is a forgery.
        let (body, mac) = token.rsplit_once('.').expect("dotted");
        let stretched = body.replacen(TOKEN_PREFIX, &format!("{TOKEN_PREFIX}9"), 1);
        assert_eq!(
            issuer.verify(&format!("{stretched}.{mac}"), now),
            Err(Rejection::Forged)
        );
        let other = TokenIssuer::generate("ci", Duration::from_secs(5)).expect("issuer");
        let (foreign, _) = other.issue(now).expect("token");
        assert_eq!(issuer.verify(&foreign, now), Err(Rejection::Forged));
        assert_eq!(issuer.verify("plain-token", now), Err(Rejection::Forged));
    }

    #[test]
    fn the_plugin_reads_the_issuer_file_and_logs_each_call() {
        let dir = tempfile::tempdir().expect("dir");
        let (file, log) = (dir.path().join("issuer.json"), dir.path().join("calls.log"));
        let issuer = TokenIssuer::generate("ci", Duration::from_secs(60)).expect("issuer");
        issuer.write(&file).expect("write");
        for _ in 0..2 {
            let out: serde_json::Value =
                serde_json::from_str(&run_plugin(&file, Some(&log)).expect("plugin"))
                    .expect("json");
            assert_eq!(out["kind"], "ExecCredential");
            let token = out["status"]["token"].as_str().expect("a token");
            assert_eq!(issuer.verify(token, SystemTime::now()), Ok(()));
            let expiry: Timestamp = out["status"]["expirationTimestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("an RFC 3339 expiry");
            assert!(expiry > Timestamp::now());
        }
        let calls = std::fs::read_to_string(&log).expect("log");
        assert_eq!(calls.lines().count(), 2);
    }
}
