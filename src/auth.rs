//! Who may do what: principals, their roles and tenant scopes, and the token file.
//!
//! A **principal** comes from a bearer token (looked up in the token file) or from a client
//! certificate (its common name, granted in the same file). Its **role** is `reader` (replay,
//! checkpoint reads), `writer` (a reader that also writes and creates checkpoints) or `admin`
//! (everything, on every tenant: truncation, membership, segments, cluster status details);
//! readers and writers are scoped to listed tenants or to all (`*`).
//!
//! The **token file** holds SHA-256 hashes of tokens, never tokens: `replog auth token create`
//! makes a token (`rlg_<id>_<secret>`: 6 random bytes of id, 32 of secret), stores its hash
//! and prints it once. Tokens are random, not passwords, so one SHA-256 suffices; the check
//! finds the entry by id and compares hashes in constant time. The file is re-read when it
//! changes (a revoked token stops working within [`RELOAD_CHECK`], or at once on SIGHUP); a
//! bad new file keeps the grants in use.
//!
//! A leaf: it knows neither gRPC nor the node.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How often the node checks whether the token file changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The most a token file may hold (a file of that size holds ~10,000 grants).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

const TOKEN_PREFIX: &str = "rlg_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// What a principal may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Replay and read checkpoints of its tenants.
    Reader,
    /// A reader that also writes and creates checkpoints for its tenants.
    Writer,
    /// Everything, on every tenant.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "reader" => Ok(Role::Reader),
            "writer" => Ok(Role::Writer),
            "admin" => Ok(Role::Admin),
            _ => Err(AuthError::Invalid(format!(
                "role {s:?} is not known: one of reader, writer, admin"
            ))),
        }
    }
}

/// The tenants a principal may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tenants {
    All,
    Only(BTreeSet<String>),
}

impl Tenants {
    /// From a list as the file and the CLI spell it: names, or `*` alone for every tenant.
    pub fn parse(list: &[String]) -> Result<Tenants, AuthError> {
        if list.iter().any(|t| t == "*") {
            if list.len() > 1 {
                return Err(AuthError::Invalid(
                    "tenants: `*` (every tenant) goes alone".to_owned(),
                ));
            }
            return Ok(Tenants::All);
        }
        if list.is_empty() {
            return Err(AuthError::Invalid(
                "tenants: name at least one tenant, or `*` for every tenant".to_owned(),
            ));
        }
        for t in list {
            if t.is_empty() || t.len() > 255 || t.chars().any(|c| c.is_control() || c == ',') {
                return Err(AuthError::Invalid(format!(
                    "tenants: {t:?} is not a tenant name"
                )));
            }
        }
        Ok(Tenants::Only(list.iter().cloned().collect()))
    }

    pub fn contains(&self, tenant: &str) -> bool {
        match self {
            Tenants::All => true,
            Tenants::Only(s) => s.contains(tenant),
        }
    }

    fn to_list(&self) -> Vec<String> {
        match self {
            Tenants::All => vec!["*".to_owned()],
            Tenants::Only(s) => s.iter().cloned().collect(),
        }
    }
}

impl fmt::Display for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_list().join(","))
    }
}

/// Where a principal's identity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Authentication is off on this listener: everyone may do everything.
    Open,
    Token,
    Certificate,
}

/// Who is calling, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub tenants: Tenants,
    pub source: Source,
}

/// A right a call needs.
#[derive(Clone, Copy, Debug)]
pub enum Right<'a> {
    /// Read this tenant (`None`: every tenant).
    Read(Option<&'a str>),
    /// Write this tenant (`None`: every tenant).
    Write(Option<&'a str>),
    Admin,
}

impl Principal {
    /// Everyone, when authentication is off.
    pub fn open() -> Principal {
        Principal {
            name: "anonymous".to_owned(),
            role: Role::Admin,
            tenants: Tenants::All,
            source: Source::Open,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the principal may read `tenant` (so may see that it exists).
    pub fn sees(&self, tenant: Option<&str>) -> bool {
        self.allows(Right::Read(tenant))
    }

    pub fn allows(&self, right: Right<'_>) -> bool {
        let scoped = |t: Option<&str>| match t {
            Some(t) => self.tenants.contains(t),
            None => self.tenants == Tenants::All,
        };
        match right {
            Right::Admin => self.role == Role::Admin,
            Right::Read(t) => scoped(t),
            Right::Write(t) => self.role >= Role::Writer && scoped(t),
        }
    }

    /// `Ok` when the principal has `right`; else what it lacks, naming only what the caller
    /// named (a tenant outside its scope is never listed).
    pub fn check(&self, right: Right<'_>) -> Result<(), String> {
        if self.allows(right) {
            return Ok(());
        }
        let who = format!("principal {:?} (role {})", self.name, self.role);
        Err(match right {
            Right::Admin => format!("{who} lacks the admin role this call needs"),
            Right::Read(Some(t)) => format!("{who} may not read tenant {t:?}"),
            Right::Read(None) => format!(
                "{who} may not read every tenant; name one of its tenants ({})",
                self.tenants
            ),
            Right::Write(Some(t)) if self.role < Role::Writer => {
                format!("{who} may not write (tenant {t:?}): it needs the writer role")
            }
            Right::Write(Some(t)) => format!("{who} may not write to tenant {t:?}"),
            Right::Write(None) => format!("{who} may not write to every tenant"),
        })
    }
}

/// One token as the file stores it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    pub principal: String,
    pub role: Role,
    pub tenants: Vec<String>,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    /// When it was made (RFC 3339), for operators.
    #[serde(default)]
    pub created: String,
}

/// Rights given to a client certificate's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertGrant {
    /// The certificate's subject common name (or, without one, its first DNS name).
    pub principal: String,
    pub role: Role,
    pub tenants: Vec<String>,
}

/// The token file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    #[serde(default)]
    pub certificates: Vec<CertGrant>,
}

const FILE_HEADER: &str = "# replog token file: hashes of bearer tokens (`replog auth token create`) and the rights\n\
# of client certificates (`replog auth cert grant`). Tokens themselves are never stored.\n";

impl TokenFile {
    /// Reads a token file; a missing one is empty.
    pub fn read(path: &Path) -> Result<TokenFile, AuthError> {
        let err = |message: String| AuthError::File {
            path: path.to_owned(),
            message,
        };
        let text = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
            Err(e) => return Err(err(e.to_string())),
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                return Err(err(format!(
                    "{} bytes; a token file holds at most {MAX_FILE_BYTES}",
                    m.len()
                )));
            }
            Ok(_) => std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?,
        };
        if text.trim().is_empty() {
            return Ok(TokenFile::default());
        }
        let f: TokenFile = serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?;
        f.grants().map_err(|e| err(e.to_string()))?;
        Ok(f)
    }

    /// Writes the file (mode 0600), replacing it atomically.
    pub fn write(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: &dyn fmt::Display| AuthError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let body = serde_yaml_ng::to_string(self).map_err(|e| err(&e))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(&e))?;
        f.write_all(FILE_HEADER.as_bytes()).map_err(|e| err(&e))?;
        f.write_all(body.as_bytes()).map_err(|e| err(&e))?;
        f.sync_all().map_err(|e| err(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(&e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(&e))?;
        }
        Ok(())
    }

    /// Makes a new token for `principal`, stores its hash here and returns the token (shown
    /// once: it is not kept).
    pub fn create_token(
        &mut self,
        principal: &str,
        role: Role,
        tenants: &[String],
        now: &str,
    ) -> Result<(String, String), AuthError> {
        let tenants = scope(principal, role, tenants)?;
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(|e| AuthError::Invalid(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let id = hex(&id);
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let token = format!("{TOKEN_PREFIX}{id}_{secret}");
        self.tokens.push(TokenEntry {
            id: id.clone(),
            principal: principal.to_owned(),
            role,
            tenants: tenants.to_list(),
            sha256: hex(&Sha256::digest(token.as_bytes())),
            created: now.to_owned(),
        });
        Ok((id, token))
    }

    /// Removes a token by id; false if none has it.
    pub fn revoke(&mut self, id: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.id != id);
        self.tokens.len() != before
    }

    /// Grants rights to a certificate name (replacing an earlier grant of that name).
    pub fn grant_certificate(
        &mut self,
        principal: &str,
        role: Role,
        tenants: &[String],
    ) -> Result<(), AuthError> {
        let tenants = scope(principal, role, tenants)?;
        self.certificates.retain(|c| c.principal != principal);
        self.certificates.push(CertGrant {
            principal: principal.to_owned(),
            role,
            tenants: tenants.to_list(),
        });
        Ok(())
    }

    /// The file checked and indexed for lookups.
    fn grants(&self) -> Result<Grants, AuthError> {
        let mut g = Grants::default();
        for t in &self.tokens {
            let hash = unhex(&t.sha256)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| {
                    AuthError::Invalid(format!("token {}: sha256 is not 64 hex digits", t.id))
                })?;
            let p = Principal {
                name: t.principal.clone(),
                role: t.role,
                tenants: scope(&t.principal, t.role, &t.tenants)
                    .map_err(|e| AuthError::Invalid(format!("token {}: {e}", t.id)))?,
                source: Source::Token,
            };
            if g.tokens.insert(t.id.clone(), (hash, Arc::new(p))).is_some() {
                return Err(AuthError::Invalid(format!(
                    "token id {} appears twice",
                    t.id
                )));
            }
        }
        for c in &self.certificates {
            let p = Principal {
                name: c.principal.clone(),
                role: c.role,
                tenants: scope(&c.principal, c.role, &c.tenants)
                    .map_err(|e| AuthError::Invalid(format!("certificate {}: {e}", c.principal)))?,
                source: Source::Certificate,
            };
            g.certificates.insert(c.principal.clone(), Arc::new(p));
        }
        Ok(g)
    }
}

/// A role's tenants: an admin has every tenant (and may list only `*`).
fn scope(principal: &str, role: Role, tenants: &[String]) -> Result<Tenants, AuthError> {
    if principal.is_empty() || principal.len() > 255 || principal.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "principal {principal:?}: 1 to 255 printable characters"
        )));
    }
    if role == Role::Admin {
        return match tenants {
            [] => Ok(Tenants::All),
            [one] if one == "*" => Ok(Tenants::All),
            _ => Err(AuthError::Invalid(
                "an admin has every tenant: leave --tenants out (or give `*`)".to_owned(),
            )),
        };
    }
    Tenants::parse(tenants)
}

#[derive(Default)]
struct Grants {
    /// By token id: the token's hash and its principal.
    tokens: HashMap<String, ([u8; 32], Arc<Principal>)>,
    certificates: HashMap<String, Arc<Principal>>,
}

/// Why a call has no principal.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No credentials, or a token that is not valid: UNAUTHENTICATED.
    Unauthenticated(String),
    /// A valid certificate whose name has no grant: PERMISSION_DENIED.
    NoGrant(String),
}

/// The node's view of the token file, reloaded when it changes.
pub struct Authenticator {
    path: PathBuf,
    grants: parking_lot::RwLock<Arc<Grants>>,
    /// The file's modification time and length when last read.
    seen: parking_lot::Mutex<Option<(SystemTime, u64)>>,
}

impl Authenticator {
    /// Reads the token file (which must exist).
    pub fn load(path: &Path) -> Result<Authenticator, AuthError> {
        if let Err(e) = std::fs::metadata(path) {
            return Err(AuthError::File {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
        let a = Authenticator {
            path: path.to_owned(),
            grants: parking_lot::RwLock::new(Arc::new(Grants::default())),
            seen: parking_lot::Mutex::new(None),
        };
        a.reload(true)?;
        Ok(a)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed (or `force`); `Ok(true)` when new grants are in use.
    /// On an error the grants in use stay. Blocking file I/O.
    pub fn reload(&self, force: bool) -> Result<bool, AuthError> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().ok().map(|t| (t, m.len())),
            // A file gone (or unreadable) is an error, not an empty file: the grants stay.
            Err(e) => {
                return Err(AuthError::File {
                    path: self.path.clone(),
                    message: e.to_string(),
                });
            }
        };
        if !force && stamp.is_some() && *self.seen.lock() == stamp {
            return Ok(false);
        }
        let file = TokenFile::read(&self.path);
        // A failed read is not retried until the file changes again (or SIGHUP).
        *self.seen.lock() = stamp;
        let grants = file?.grants().map_err(|e| AuthError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        *self.grants.write() = Arc::new(grants);
        Ok(true)
    }

    /// The principal of a bearer token.
    pub fn token(&self, token: &str) -> Result<Arc<Principal>, Refused> {
        let bad = || {
            Refused::Unauthenticated(
                "the bearer token is not valid (unknown, revoked or mistyped)".to_owned(),
            )
        };
        let id = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or_else(bad)?;
        let grants = self.grants.read().clone();
        let (hash, principal) = grants.tokens.get(id).ok_or_else(bad)?;
        let presented = Sha256::digest(token.as_bytes());
        if subtle::ConstantTimeEq::ct_eq(presented.as_slice(), hash.as_slice()).into() {
            Ok(principal.clone())
        } else {
            Err(bad())
        }
    }

    /// The principal of a client certificate, by its name.
    pub fn certificate(&self, name: &str) -> Result<Arc<Principal>, Refused> {
        let grants = self.grants.read().clone();
        grants.certificates.get(name).cloned().ok_or_else(|| {
            Refused::NoGrant(format!(
                "the client certificate {name:?} has no grant in the token file (replog auth cert grant)"
            ))
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, tenants: &[&str]) -> Principal {
        let list: Vec<String> = tenants.iter().map(|s| (*s).to_owned()).collect();
        Principal {
            name: "p".to_owned(),
            role,
            tenants: scope("p", role, &list).unwrap(),
            source: Source::Token,
        }
    }

    #[test]
    fn roles_are_scoped_to_tenants() {
        let r = principal(Role::Reader, &["a", "b"]);
        assert!(r.allows(Right::Read(Some("a"))));
        assert!(!r.allows(Right::Read(Some("c"))));
        assert!(!r.allows(Right::Read(None)));
        assert!(!r.allows(Right::Write(Some("a"))));
        assert!(!r.allows(Right::Admin));
        let w = principal(Role::Writer, &["a"]);
        assert!(w.allows(Right::Write(Some("a"))));
        assert!(w.allows(Right::Read(Some("a"))));
        assert!(!w.allows(Right::Write(Some("b"))));
        let all = principal(Role::Writer, &["*"]);
        assert!(all.allows(Right::Write(None)));
        assert!(!all.allows(Right::Admin));
        let admin = principal(Role::Admin, &[]);
        assert!(admin.allows(Right::Admin) && admin.allows(Right::Write(Some("x"))));
        assert!(Principal::open().allows(Right::Admin));
    }

    #[test]
    fn a_denial_names_only_what_was_asked() {
        let w = principal(Role::Writer, &["a", "secret-b"]);
        let msg = w.check(Right::Write(Some("c"))).unwrap_err();
        assert!(msg.contains("\"c\"") && !msg.contains("secret-b"), "{msg}");
        let r = principal(Role::Reader, &["a"]);
        let msg = r.check(Right::Write(Some("a"))).unwrap_err();
        assert!(msg.contains("writer role"), "{msg}");
        assert!(r.check(Right::Admin).unwrap_err().contains("admin"));
    }

    #[test]
    fn bad_scopes_are_refused() {
        assert!(scope("p", Role::Admin, &["a".to_owned()]).is_err());
        assert!(scope("p", Role::Writer, &[]).is_err());
        assert!(scope("p", Role::Writer, &["*".to_owned(), "a".to_owned()]).is_err());
        assert!(scope("", Role::Writer, &["a".to_owned()]).is_err());
    }

    #[test]
    fn tokens_are_checked_against_their_hash_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let mut f = TokenFile::default();
        let (id, token) = f
            .create_token("alice", Role::Writer, &["a".to_owned()], "now")
            .unwrap();
        f.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "the token itself is never stored");
        let auth = Authenticator::load(&path).unwrap();
        let p = auth.token(&token).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("alice", Role::Writer));
        // One character off, another id, garbage: all refused alike.
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push('x');
        for t in [wrong.as_str(), "rlg_000000000000_abc", "nonsense", ""] {
            assert!(
                matches!(auth.token(t), Err(Refused::Unauthenticated(_))),
                "{t}"
            );
        }
        let mut f = TokenFile::read(&path).unwrap();
        assert!(f.revoke(&id));
        f.write(&path).unwrap();
        auth.reload(true).unwrap();
        assert!(auth.token(&token).is_err());
    }

    #[test]
    fn a_bad_file_keeps_the_grants_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let mut f = TokenFile::default();
        let (_, token) = f
            .create_token("bob", Role::Reader, &["*".to_owned()], "now")
            .unwrap();
        f.grant_certificate("ingest", Role::Writer, &["a".to_owned()])
            .unwrap();
        f.write(&path).unwrap();
        let auth = Authenticator::load(&path).unwrap();
        assert_eq!(auth.certificate("ingest").unwrap().role, Role::Writer);
        assert!(matches!(
            auth.certificate("other"),
            Err(Refused::NoGrant(_))
        ));
        std::fs::write(
            &path,
            "tokens: [{id: x, principal: p, role: king, tenants: [a], sha256: 00}]",
        )
        .unwrap();
        assert!(auth.reload(true).is_err());
        assert!(auth.token(&token).is_ok(), "the old grants stay in use");
        std::fs::remove_file(&path).unwrap();
        assert!(auth.reload(false).is_err());
        assert!(auth.token(&token).is_ok(), "a file gone revokes nothing");
    }
}
