//! The server secret and the per-subscriber link tokens derived from it.
//!
//! A subscriber's link token is HMAC-SHA256 keyed with the secret's text (as
//! configured, or the hex text of the secret file), over [`TOKEN_CONTEXT`]
//! followed by their uuid, hex-encoded. The database stores only
//! SHA-256(token), so a stolen copy of the database cannot forge links, and a
//! token is checked with one indexed lookup. (Confirmation links carry a
//! random token of their own: `store::confirmations`.)

use std::{io::Write, path::Path};

use anyhow::Context;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};

use crate::config::SecuritySettings;

/// A secret file this process created, not yet reported: the command line
/// reports it after its own outcome (so an error stays the first line of
/// standard error), a daemon when it starts.
static NEW_SECRET: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Logs (once) that a new secret file was created.
pub fn report_new_secret() {
    if let Some(path) = NEW_SECRET.lock().expect("new secret lock").take() {
        tracing::info!(path = %path.display(), "created a new secret for subscriber links; keep it with your backups");
    }
}

/// Creates a private temporary file beside `path` holding a new random
/// secret (64 hex digits, synced); returns it and the secret.
fn write_private_random(path: &Path) -> anyhow::Result<(std::path::PathBuf, String)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let text = hex::encode(raw);
    let tmp = dir.join(format!(".secret.{:08x}.tmp", fastrand::u32(..)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|_| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write a secret file in {}", dir.display()));
    }
    Ok((tmp, text))
}

/// True (and forgotten) if this process created a new secret file.
pub fn take_new_secret() -> Option<std::path::PathBuf> {
    NEW_SECRET.lock().expect("new secret lock").take()
}

/// What a subscriber's uuid follows in the HMAC that makes their link token
/// (the README gives the same recipe; a test follows it by hand).
pub const TOKEN_CONTEXT: &str = "paperpost-subscriber-token:";

/// The key that all link tokens are derived from.
#[derive(Clone)]
pub struct Keys {
    secret: SecretSlice<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([REDACTED])")
    }
}

impl Keys {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            secret: SecretSlice::from(bytes.to_vec()),
        }
    }

    /// `security.secret` when set; otherwise the contents of `security.secret_file`,
    /// which is created (mode 0600) with 32 random bytes on first use. A file
    /// others can read is refused: anyone who reads it can forge links.
    pub fn load(settings: &SecuritySettings) -> anyhow::Result<Self> {
        let configured = settings.secret.expose_secret();
        if !configured.is_empty() {
            return Ok(Self::from_bytes(configured.as_bytes()));
        }
        let path = &settings.secret_file;
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_file(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(e).with_context(|| format!("cannot read secret file {}", path.display())),
        }
    }

    fn from_file(path: &Path, text: &str) -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "secret file {} can be read by others (mode {mode:04o}); \
                     run `chmod 600 {}` (anyone who reads it can forge unsubscribe links)",
                    path.display(),
                    path.display()
                );
            }
        }
        let text = text.trim();
        if text.len() < 32 {
            anyhow::bail!(
                "secret file {} holds fewer than 32 characters; delete it to generate a new one \
                 (existing unsubscribe links then stop working)",
                path.display()
            );
        }
        Ok(Self::from_bytes(text.as_bytes()))
    }

    /// Writes a new secret to a private temporary file, then links it into
    /// place, which fails if another process got there first: nobody can
    /// read the file before its secret is in it.
    fn create(path: &Path) -> anyhow::Result<Self> {
        let (tmp, text) = write_private_random(path)?;
        let written = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                *NEW_SECRET.lock().expect("new secret lock") = Some(path.to_path_buf());
                Ok(Self::from_bytes(text.as_bytes()))
            }
            // Another process created it first: use theirs, complete already.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::from_file(path, &std::fs::read_to_string(path)?)
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot create secret file {}", path.display()))
            }
        }
    }

    /// A short fingerprint of the secret (an HMAC under it, which tells
    /// nothing of it), recorded in the database so that a process with
    /// another secret is noticed.
    pub fn fingerprint(&self) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(b"paperpost-secret-fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// Writes a new random secret to `path`, replacing the file there (the
    /// new one is complete and private before the rename makes it current).
    pub fn replace_file(path: &Path) -> anyhow::Result<Self> {
        let (tmp, text) = write_private_random(path)?;
        let renamed = std::fs::rename(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        renamed.with_context(|| format!("cannot replace secret file {}", path.display()))?;
        Ok(Self::from_bytes(text.as_bytes()))
    }

    /// The token in a subscriber's unsubscribe and preference links.
    pub fn subscriber_token(&self, uuid: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(TOKEN_CONTEXT.as_bytes());
        mac.update(uuid.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The tag that signs a VERP envelope sender for delivery `id`: 80 bits
    /// of HMAC-SHA256(secret, "paperpost-verp:" + id), 20 lowercase hex
    /// digits. A bounce to `bounces+ID-TAG@…` with another tag is forged.
    pub fn verp_tag(&self, id: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(b"paperpost-verp:");
        mac.update(id.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..10])
    }

    /// The VERP envelope sender for delivery `id` at `domain`.
    pub fn verp_address(&self, id: i64, domain: &str) -> String {
        format!("bounces+{id}-{}@{domain}", self.verp_tag(id))
    }

    /// The delivery a VERP address at `domain` names, if its tag is ours
    /// (compared ignoring case: mail systems may fold it).
    pub fn verp_delivery(&self, address: &str, domain: &str) -> Option<i64> {
        let address = address.trim().trim_matches(['<', '>']);
        let (local, at) = address.rsplit_once('@')?;
        if !at.eq_ignore_ascii_case(domain) {
            return None;
        }
        let rest = local
            .get(..8)?
            .eq_ignore_ascii_case("bounces+")
            .then(|| &local[8..])?;
        let (id, tag) = rest.split_once('-')?;
        let id: i64 = id.parse().ok()?;
        let ours = self.verp_tag(id);
        (tag.len() == ours.len() && tag.eq_ignore_ascii_case(&ours)).then_some(id)
    }

    /// What the database stores for a subscriber: the hash of their token.
    pub fn subscriber_token_hash(&self, uuid: &str) -> String {
        token_hash(&self.subscriber_token(uuid))
    }
}

/// SHA-256 of a token, hex-encoded: the form stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verp_addresses_name_their_delivery_and_resist_forgery() {
        let k = Keys::from_bytes(b"0123456789abcdef0123456789abcdef");
        let a = k.verp_address(42, "bounces.example.org");
        assert!(
            a.starts_with("bounces+42-") && a.len() == "bounces+42-@bounces.example.org".len() + 20
        );
        assert_eq!(k.verp_delivery(&a, "bounces.example.org"), Some(42));
        assert_eq!(
            k.verp_delivery(&a.to_uppercase(), "bounces.example.org"),
            Some(42)
        );
        assert_eq!(
            k.verp_delivery(&format!("<{a}>"), "bounces.example.org"),
            Some(42)
        );
        let forged = a.replace("bounces+42-", "bounces+43-");
        assert_eq!(k.verp_delivery(&forged, "bounces.example.org"), None);
        assert_eq!(k.verp_delivery(&a, "other.example.org"), None);
        assert_eq!(
            k.verp_delivery("bounces+x-y@bounces.example.org", "bounces.example.org"),
            None
        );
        let other = Keys::from_bytes(b"fedcba9876543210fedcba9876543210");
        assert_eq!(other.verp_delivery(&a, "bounces.example.org"), None);
    }

    #[test]
    fn tokens_depend_on_secret_and_uuid() {
        let a = Keys::from_bytes(b"0123456789abcdef0123456789abcdef");
        let b = Keys::from_bytes(b"fedcba9876543210fedcba9876543210");
        assert_eq!(a.subscriber_token("u1"), a.subscriber_token("u1"));
        assert_ne!(a.subscriber_token("u1"), a.subscriber_token("u2"));
        assert_ne!(a.subscriber_token("u1"), b.subscriber_token("u1"));
        assert_eq!(
            a.subscriber_token_hash("u1"),
            token_hash(&a.subscriber_token("u1"))
        );
        assert_ne!(a.subscriber_token_hash("u1"), a.subscriber_token("u1"));
        assert_eq!(a.subscriber_token("u1").len(), 64);
    }

    #[test]
    fn processes_racing_to_create_the_secret_all_get_the_same_one() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SecuritySettings {
            secret: String::new().into(),
            secret_file: dir.path().join("secret.key"),
        };
        let tokens: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| Keys::load(&settings).map(|k| k.subscriber_token("x"))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(tokens.windows(2).all(|w| w[0] == w[1]));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let settings = SecuritySettings {
            secret: String::new().into(),
            secret_file: path.clone(),
        };
        let e = Keys::load(&settings).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Keys::load(&settings).unwrap();
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SecuritySettings {
            secret: String::new().into(),
            secret_file: dir.path().join("sub/secret.key"),
        };
        let k1 = Keys::load(&settings).unwrap();
        let k2 = Keys::load(&settings).unwrap();
        assert_eq!(k1.subscriber_token("x"), k2.subscriber_token("x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&settings.secret_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
