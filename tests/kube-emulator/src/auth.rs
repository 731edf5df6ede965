//! Who is asking: a verified client certificate the emulator's CA issued, else a bearer token
//! (one added by the test, or one the exec credential plugin minted and that has not expired),
//! as kube-apiserver's authenticators try them (x509 before tokens). Each login stands for a
//! user and comes with an [`Access`].

use std::collections::HashMap;
use std::time::SystemTime;

use crate::credential::{Rejection, TokenIssuer};

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything.
    Full,
    /// Nothing but discovery (a valid token without RBAC rights).
    Nothing,
    /// Only these (verb, resource) pairs, e.g. ("list", "pods"), ("create", "pods/portforward").
    Only(Vec<(String, String)>),
}

impl Access {
    /// Whether `verb` on `resource` (with `/subresource`) is allowed.
    pub fn allows(&self, verb: &str, resource: &str) -> bool {
        match self {
            Access::Full => true,
            Access::Nothing => false,
            Access::Only(rules) => rules.iter().any(|(v, r)| v == verb && r == resource),
        }
    }
}

/// The user every added token stands for, as Forbidden messages name it.
pub const TOKEN_USER: &str = "system:serviceaccount:default:tester";

/// An authenticated caller, put into each request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user name.
    pub user: String,
    /// What it may do.
    pub access: Access,
}

/// The client certificate a connection presented (DER), put into each request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<Vec<u8>>);

/// Every way in.
#[derive(Default)]
pub struct Logins {
    tokens: HashMap<String, Access>,
    exec: Option<(TokenIssuer, Access)>,
    /// Issued client certificates (DER) and their users; each user's access.
    certificates: HashMap<Vec<u8>, String>,
    certificate_users: HashMap<String, Access>,
}

impl Logins {
    /// Accepts `token` with `access`.
    pub fn add_token(&mut self, token: &str, access: Access) {
        self.tokens.insert(token.to_owned(), access);
    }

    /// Stops accepting `token`.
    pub fn revoke_token(&mut self, token: &str) {
        self.tokens.remove(token);
    }

    /// Accepts tokens `issuer` mints, with `access`.
    pub fn enable_exec(&mut self, issuer: TokenIssuer, access: Access) {
        self.exec = Some((issuer, access));
    }

    /// Accepts the client certificate `der` as `user`, whose access becomes `access`.
    pub fn add_certificate(&mut self, der: Vec<u8>, user: &str, access: Access) {
        self.certificates.insert(der, user.to_owned());
        self.certificate_users.insert(user.to_owned(), access);
    }

    /// The caller for a request's client certificate (already verified against the CA by the
    /// TLS acceptor) or bearer token; `None` answers 401.
    pub fn authenticate(&self, peer: &PeerCertificate, bearer: Option<&str>) -> Option<Caller> {
        if let Some(user) = peer.0.as_ref().and_then(|der| self.certificates.get(der)) {
            let access = self.certificate_users.get(user)?.clone();
            return Some(Caller {
                user: user.clone(),
                access,
            });
        }
        let token = bearer?;
        if let Some(access) = self.tokens.get(token) {
            return Some(Caller {
                user: TOKEN_USER.to_owned(),
                access: access.clone(),
            });
        }
        let (issuer, access) = self.exec.as_ref()?;
        match issuer.verify(token, SystemTime::now()) {
            Ok(()) => Some(Caller {
                user: issuer.user.clone(),
                access: access.clone(),
            }),
            Err(Rejection::Expired) => {
                tracing::debug!(user = %issuer.user, "an expired exec-plugin token");
                None
            }
            Err(Rejection::Forged) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn certificates_come_before_tokens_and_exec_tokens_are_checked() {
        let mut logins = Logins::default();
        logins.add_token("t", Access::Nothing);
        logins.add_certificate(vec![1, 2, 3], "alice", Access::Full);
        let issuer = TokenIssuer::generate("ci-bot", Duration::from_secs(30)).expect("issuer");
        let (minted, _) = issuer.issue(SystemTime::now()).expect("token");
        logins.enable_exec(issuer, Access::Full);

        let cert = PeerCertificate(Some(vec![1, 2, 3]));
        let none = PeerCertificate(None);
        let user = |c: Option<Caller>| c.map(|c| c.user);
        assert_eq!(
            user(logins.authenticate(&cert, Some("t"))).as_deref(),
            Some("alice")
        );
        assert_eq!(
            user(logins.authenticate(&none, Some("t"))).as_deref(),
            Some(TOKEN_USER)
        );
        assert_eq!(
            user(logins.authenticate(&none, Some(&minted))).as_deref(),
            Some("ci-bot")
        );
        assert_eq!(logins.authenticate(&none, Some("forged")), None);
        assert_eq!(
            logins.authenticate(&PeerCertificate(Some(vec![9])), None),
            None
        );
        logins.revoke_token("t");
        assert_eq!(logins.authenticate(&none, Some("t")), None);
    }
}
