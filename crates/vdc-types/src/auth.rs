//! Who may call what: principals, roles, credentials, and the one
//! constant-time check of a presented secret.
//!
//! Three kinds of caller exist:
//! - **users** (CLI, web page, scripts) hold a user token with a [`Role`];
//! - **agents** hold their host's agent credential, minted when the host is
//!   added (`vdc host add`) and bound to that host's name;
//! - **the server** holds the server credential, which agents learn when
//!   they join and the only credential the agent API accepts.
//!
//! [`authorize`] is the rule that decides, for a caller and what a route
//! needs ([`Access`]), whether the call may go on. It is pure.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// What a user may do. Ordered: each role may do everything the roles
/// before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything (inventory, tasks, events); changes nothing.
    Viewer,
    /// Also operates VMs, networks and templates and uses consoles.
    Operator,
    /// Also manages hosts and their credentials.
    Administrator,
}

impl Role {
    /// The role's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Administrator => "administrator",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user with a role.
    User {
        /// The user token's role.
        role: Role,
    },
    /// The agent of one host.
    Agent {
        /// The host its credential is bound to.
        host: String,
    },
}

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A user with at least this role.
    User(Role),
    /// A host's agent (reports, join).
    Agent,
}

/// Why [`authorize`] refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// An agent credential was used on a user route.
    #[error("an agent credential cannot call the user API; use a user token (VDC_TOKEN or VDC_TOKEN_FILE)")]
    AgentOnUserRoute,
    /// A user token was used on an agent route.
    #[error("only a host's agent may call this route, with the credential made by 'vdc host add'; a user token cannot")]
    UserOnAgentRoute,
    /// The user's role is below the route's.
    #[error("this needs the {needed} role; this token has the {has} role")]
    RoleTooLow {
        /// Role the route needs.
        needed: &'static str,
        /// Role the token has.
        has: &'static str,
    },
}

/// The access rule: whether `who` may call a route that needs `needs`.
pub fn authorize(who: &Principal, needs: Access) -> Result<(), Denied> {
    match (who, needs) {
        (Principal::User { role }, Access::User(needed)) if *role >= needed => Ok(()),
        (Principal::User { role }, Access::User(needed)) => Err(Denied::RoleTooLow {
            needed: needed.as_str(),
            has: role.as_str(),
        }),
        (Principal::User { .. }, Access::Agent) => Err(Denied::UserOnAgentRoute),
        (Principal::Agent { .. }, Access::User(_)) => Err(Denied::AgentOnUserRoute),
        (Principal::Agent { .. }, Access::Agent) => Ok(()),
    }
}

/// The SHA-256 of a secret, the form in which secrets are kept. Secrets are
/// 128-bit random strings, so a plain hash is enough (no password
/// stretching needed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHash(String);

impl SecretHash {
    /// Hash of `secret`.
    pub fn of(secret: &str) -> SecretHash {
        let digest = Sha256::digest(secret.as_bytes());
        SecretHash(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Whether `given` is the secret this is the hash of, compared in
    /// constant time (the one place vdc compares secrets).
    pub fn matches(&self, given: &str) -> bool {
        let given = SecretHash::of(given);
        bool::from(self.0.as_bytes().ct_eq(given.0.as_bytes()))
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// Prefix of every agent credential: `vdca.<host>.<secret>`.
pub const AGENT_CREDENTIAL_PREFIX: &str = "vdca";

/// The agent credential of `host` with the random part `secret`.
pub fn agent_credential(host: &str, secret: &str) -> String {
    format!("{AGENT_CREDENTIAL_PREFIX}.{host}.{secret}")
}

/// The host an agent credential names, if `credential` has the agent form.
/// Host names may contain dots; the secret (hex) never does.
pub fn agent_credential_host(credential: &str) -> Option<&str> {
    let rest = credential.strip_prefix(AGENT_CREDENTIAL_PREFIX)?;
    let rest = rest.strip_prefix('.')?;
    let (host, secret) = rest.rsplit_once('.')?;
    (!host.is_empty() && !secret.is_empty()).then_some(host)
}

/// `POST /api/v1/hosts`: make a host's agent credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHostRequest {
    /// Host name (the agent's `--name`): letters, digits, `-`, `_`, `.`; at
    /// most 63 characters.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub name: String,
    /// Replace the host's credential if it has one: the old one stops
    /// working at once (restart the agent with the new one).
    #[serde(default)]
    pub replace: bool,
}

/// The answer of `POST /api/v1/hosts`: the only time the credential is
/// shown. Give it to the host's agent (`--credential-file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostCredential {
    /// Host name.
    pub host: String,
    /// The agent credential (`vdca.<host>.<secret>`).
    pub credential: String,
}

/// A host known to the server's credential registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostJoin {
    /// Host name.
    pub host: String,
    /// When its credential was made.
    pub added_ms: crate::UnixMillis,
    /// When its agent last joined; `None` until it has.
    pub joined_ms: Option<crate::UnixMillis>,
}

/// `POST /api/v1/agent/join` body (agent credential required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joining host; must be the credential's host.
    #[schema(
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$",
        min_length = 1,
        max_length = 63
    )]
    pub host: String,
    /// A PKCS#10 certificate signing request (PEM) over the host's own key:
    /// the server answers with a certificate of the cluster CA for it
    /// (`JoinResponse.tls`). The names it asks for are ignored: the
    /// certificate names the credential's host and `migration_address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 16384)]
    pub csr: Option<String>,
    /// The host's migration address (an IP address), written into its
    /// certificate beside its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub migration_address: Option<String>,
}

/// The answer of a join: what the agent needs to accept the server's calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinResponse {
    /// The credential the server presents to the agent API.
    pub server_credential: String,
    /// The host's certificate for the migration stream, when the join
    /// carried a `csr` and the server has a cluster CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HostTlsBundle>,
}

/// A host certificate signed by the cluster CA, with that CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostTlsBundle {
    /// The cluster CA's certificate (PEM).
    pub ca_cert_pem: String,
    /// The host's certificate (PEM): its name and migration address as
    /// subject alternative names, usable as TLS server and client.
    pub cert_pem: String,
    /// End of the certificate's validity, ms since the Unix epoch.
    pub not_after_ms: crate::UnixMillis,
}

/// The certificate a host holds for the migration stream, as its agent
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostCertificate {
    /// End of its validity, ms since the Unix epoch.
    pub not_after_ms: crate::UnixMillis,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// SHA-256 of the CA certificate installed beside it, hex.
    pub ca_fingerprint: String,
    /// Its subject alternative names (`DNS:name`, `IP:address`).
    #[serde(default)]
    pub sans: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_rule() {
        let admin = Principal::User {
            role: Role::Administrator,
        };
        let viewer = Principal::User { role: Role::Viewer };
        let agent = Principal::Agent { host: "h1".into() };
        assert_eq!(authorize(&admin, Access::User(Role::Administrator)), Ok(()));
        assert_eq!(authorize(&admin, Access::User(Role::Viewer)), Ok(()));
        assert_eq!(authorize(&viewer, Access::User(Role::Viewer)), Ok(()));
        assert!(matches!(
            authorize(&viewer, Access::User(Role::Operator)),
            Err(Denied::RoleTooLow { .. })
        ));
        assert_eq!(
            authorize(&admin, Access::Agent),
            Err(Denied::UserOnAgentRoute)
        );
        assert_eq!(
            authorize(&agent, Access::User(Role::Viewer)),
            Err(Denied::AgentOnUserRoute)
        );
        assert_eq!(authorize(&agent, Access::Agent), Ok(()));
    }

    #[test]
    fn secrets_match_only_themselves() {
        let h = SecretHash::of("0123456789abcdef");
        assert!(h.matches("0123456789abcdef"));
        assert!(!h.matches("0123456789abcdeF"));
        assert!(!h.matches(""));
        assert!(!format!("{h:?}").contains("0123"));
    }

    #[test]
    fn agent_credentials_name_their_host() {
        let c = agent_credential("host-1", "abc");
        assert_eq!(agent_credential_host(&c), Some("host-1"));
        let dotted = agent_credential("h1.example.org", "abc");
        assert_eq!(agent_credential_host(&dotted), Some("h1.example.org"));
        for bad in [
            "",
            "vdca",
            "vdca.",
            "vdca.h",
            "vdca.h.",
            "vdca..x",
            "user-token",
            "vdcx.h.s",
        ] {
            assert_eq!(agent_credential_host(bad), None, "{bad}");
        }
    }
}
