//! DKIM signatures (RFC 6376, relaxed/relaxed, SHA-256) with AWS-LC's RSA and
//! Ed25519 (through mail-auth's signer), one per configured key: an RSA and
//! an Ed25519 selector together (RFC 8463), or two of a kind during a key
//! rotation. Signing runs on blocking threads, one per core but the one the
//! runtime's thread needs, so a send uses every core while that thread
//! composes and sends.

use std::{path::Path, sync::Arc};

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::{
    encoding::{AsBigEndian, AsDer, Curve25519SeedBin, PublicKeyX509Der},
    signature::{Ed25519KeyPair, KeyPair, RsaKeyPair},
};
use base64::Engine;
use mail_auth::{
    common::{
        crypto::{Ed25519Key, RsaKey, Sha256, SigningKey},
        headers::HeaderWriter,
    },
    dkim::{Canonicalization, DkimSigner, Done},
};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

use crate::config::DkimSettings;

/// The headers every signature covers, when the message has them.
pub const SIGNED_HEADERS: [&str; 8] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];

/// The kind of a DKIM key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ed25519,
}

impl KeyKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rsa" => Some(Self::Rsa),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ed25519 => "ed25519",
        }
    }
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Signer {
    fn header(&self, raw: &[u8]) -> anyhow::Result<String> {
        let signature = match self {
            Signer::Rsa(s) => s.sign(raw),
            Signer::Ed25519(s) => s.sign(raw),
        };
        Ok(signature
            .map_err(|e| anyhow!("cannot sign: {e}"))?
            .to_header())
    }
}

/// One configured key: its selector, domain and kind.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub selector: String,
    pub domain: String,
    pub kind: KeyKind,
    /// The public key as the DNS record's `p=` (base64).
    pub public: String,
}

/// Every configured signing key.
pub struct Dkim {
    signers: Vec<Signer>,
    pub keys: Vec<KeyInfo>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim").field("keys", &self.keys).finish()
    }
}

/// `list` split at commas, trimmed, empty items dropped.
fn items(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl Dkim {
    /// The keys `mail.dkim` names (none when `selector` is empty), each read
    /// and checked now: a missing, unreadable or wrong key stops start-up
    /// with the key's file named.
    pub fn from_settings(d: &DkimSettings, from_domain: &str) -> anyhow::Result<Option<Self>> {
        let selectors = items(&d.selector);
        if selectors.is_empty() {
            return Ok(None);
        }
        let files_text = d.key_file.to_string_lossy();
        let files = items(&files_text);
        let kinds: Vec<KeyKind> = items(&d.algorithm)
            .into_iter()
            .map(|a| {
                KeyKind::parse(a).ok_or_else(|| {
                    anyhow!(
                        "invalid configuration: mail.dkim.algorithm: {a:?} is not rsa or ed25519"
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if files.len() != selectors.len() || !(kinds.len() == 1 || kinds.len() == selectors.len()) {
            bail!(
                "invalid configuration: mail.dkim: {} selectors, {} key files and {} algorithms \
                 (give one key file per selector, and one algorithm for all or one each)",
                selectors.len(),
                files.len(),
                kinds.len()
            );
        }
        let domain = d.domain.clone().unwrap_or_else(|| from_domain.to_string());
        let mut dkim = Dkim {
            signers: Vec::new(),
            keys: Vec::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(cores())),
        };
        for (i, (selector, file)) in selectors.iter().zip(&files).enumerate() {
            let kind = kinds[if kinds.len() == 1 { 0 } else { i }];
            let (signer, public) = load(Path::new(file), kind, &domain, selector)
                .with_context(|| format!("invalid configuration: mail.dkim.key_file: {file}"))?;
            dkim.signers.push(signer);
            let (selector, domain) = (selector.to_string(), domain.clone());
            dkim.keys.push(KeyInfo {
                selector,
                domain,
                kind,
                public,
            });
        }
        Ok(Some(dkim))
    }

    /// The key in `path` (as `mail.dkim` would read it), described.
    pub fn key_info(
        path: &Path,
        kind: KeyKind,
        domain: &str,
        selector: &str,
    ) -> anyhow::Result<KeyInfo> {
        let (_, public) = load(path, kind, domain, selector)?;
        let (selector, domain) = (selector.to_string(), domain.to_string());
        Ok(KeyInfo {
            selector,
            domain,
            kind,
            public,
        })
    }

    /// One DKIM-Signature header per key, for `raw`.
    pub fn headers(&self, raw: &[u8]) -> anyhow::Result<String> {
        let mut headers = String::new();
        for s in &self.signers {
            headers.push_str(&s.header(raw)?);
        }
        Ok(headers)
    }

    /// `raw` with its DKIM-Signature headers in front.
    pub fn sign(&self, raw: &[u8]) -> anyhow::Result<Vec<u8>> {
        let headers = self.headers(raw)?;
        Ok([headers.as_bytes(), raw].concat())
    }

    /// Starts [`Dkim::headers`] on a blocking thread (at most one per core
    /// at a time) now, so signing overlaps whatever the caller does next;
    /// the returned future yields the headers.
    pub fn headers_soon(
        self: &Arc<Self>,
        raw: Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = anyhow::Result<String>> + Send + 'static {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _slot = me.slots.acquire().await?;
            let signer = Arc::clone(&me);
            tokio::task::spawn_blocking(move || signer.headers(&raw)).await?
        });
        async move { task.await? }
    }
}

/// Signing threads at once: one per core but one, which the runtime's
/// thread (composing and sending for every worker) keeps; with one core,
/// one.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| usize::from(n).saturating_sub(1).max(1))
}

/// Reads one key file: RSA as PEM (PKCS#1 or PKCS#8), 2048 to 8192 bits
/// (AWS-LC's range); Ed25519 as PKCS#8 PEM or a base64 32-byte seed.
fn load(
    path: &Path,
    kind: KeyKind,
    domain: &str,
    selector: &str,
) -> anyhow::Result<(Signer, String)> {
    let text = std::fs::read_to_string(path).context("cannot read it")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    match kind {
        KeyKind::Rsa => {
            let der = PrivateKeyDer::from_pem_slice(text.as_bytes())
                .map_err(|e| anyhow!("not a PEM RSA private key: {e}"))?;
            let pair = match &der {
                PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
                PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                _ => bail!("not an RSA private key (PKCS#1 or PKCS#8 PEM)"),
            }
            .map_err(|e| {
                anyhow!("not a usable RSA key ({e}; RSA keys must be 2048 to 8192 bits)")
            })?;
            // The record's p= is the SubjectPublicKeyInfo.
            let spki: PublicKeyX509Der = pair
                .public_key()
                .as_der()
                .map_err(|e| anyhow!("cannot encode the public key: {e}"))?;
            let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| anyhow!("{e}"))?;
            let signer = Signer::Rsa(signer(key, domain, selector));
            Ok((signer, b64.encode(spki.as_ref())))
        }
        KeyKind::Ed25519 => {
            let (seed, public) = ed25519_parts(&text)?;
            let key =
                Ed25519Key::from_seed_and_public_key(&seed, &public).map_err(|e| anyhow!("{e}"))?;
            let signer = Signer::Ed25519(signer(key, domain, selector));
            Ok((signer, b64.encode(public)))
        }
    }
}

/// The signer for `key`: relaxed/relaxed over [`SIGNED_HEADERS`].
fn signer<K: SigningKey>(key: K, domain: &str, selector: &str) -> DkimSigner<K, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The seed and public key of an Ed25519 key given as a base64 32-byte
/// seed, or as PKCS#8 PEM (v1 or v2).
fn ed25519_parts(text: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let pair = if text.contains("-----BEGIN") {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| anyhow!("not a PKCS#8 PEM Ed25519 key: {e}"))?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| anyhow!("not an Ed25519 key: {e}"))?
    } else {
        let seed = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| anyhow!("not base64 (an Ed25519 key is a base64 32-byte seed): {e}"))?;
        Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| anyhow!("not an Ed25519 seed: it must be 32 bytes, base64"))?
    };
    let seed: Curve25519SeedBin = pair
        .seed()
        .and_then(|s| s.as_be_bytes())
        .map_err(|_| anyhow!("cannot read the Ed25519 seed"))?;
    Ok((seed.as_ref().to_vec(), pair.public_key().as_ref().to_vec()))
}
