//! `paperpost dkim`: make a signing key and its DNS record, and check that
//! the published records match the configured keys.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::{Context, anyhow, bail};
use base64::Engine;

use crate::{
    config::Settings,
    digest::dkim::{Dkim, KeyInfo, KeyKind},
};

#[derive(Debug, clap::Subcommand)]
pub enum DkimCmd {
    /// Write a new private key to FILE (mode 0600, never over an existing
    /// file) and print the DNS TXT record to publish for it.
    Keygen {
        /// The selector the record is published under.
        #[arg(long)]
        selector: String,
        #[arg(long, value_parser = ["rsa", "ed25519"], default_value = "rsa")]
        algorithm: String,
        /// Where the private key goes.
        #[arg(long)]
        out: PathBuf,
    },
    /// Look up each configured selector's TXT record and say whether it
    /// publishes the configured key (exit 1 if any does not).
    Check {
        /// The DNS server to ask (IP:PORT); default: the system's resolvers.
        #[arg(long, value_name = "IP:PORT")]
        resolver: Option<SocketAddr>,
    },
}

pub async fn run(settings: Settings, cmd: DkimCmd) -> anyhow::Result<()> {
    match cmd {
        DkimCmd::Keygen {
            selector,
            algorithm,
            out,
        } => keygen(&settings, &selector, &algorithm, &out),
        DkimCmd::Check { resolver } => check(&settings, resolver).await,
    }
}

/// The domain that signs: `mail.dkim.domain`, or the domain of `mail.from`.
fn signing_domain(settings: &Settings) -> String {
    let d = &settings.mail.dkim;
    d.domain
        .clone()
        .unwrap_or_else(|| settings.mail.from.email.domain().to_ascii_lowercase())
}

fn keygen(
    settings: &Settings,
    selector: &str,
    algorithm: &str,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let kind = KeyKind::parse(algorithm).ok_or_else(|| anyhow!("unknown algorithm {algorithm}"))?;
    let pkcs8 = match kind {
        KeyKind::Rsa => {
            use aws_lc_rs::encoding::AsDer;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| anyhow!("cannot make an RSA key: {e}"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der = pair
                .as_der()
                .map_err(|e| anyhow!("cannot encode the RSA key: {e}"))?;
            der.as_ref().to_vec()
        }
        KeyKind::Ed25519 => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| anyhow!("cannot make an Ed25519 key: {e}"))?
                .as_ref()
                .to_vec()
        }
    };
    write_private(out, &pem("PRIVATE KEY", &pkcs8))?;
    let domain = signing_domain(settings);
    let info = Dkim::key_info(out, kind, &domain, selector)
        .with_context(|| format!("the key written to {}", out.display()))?;
    println!(
        "Wrote a new {} private key to {} (mode 0600).",
        match kind {
            KeyKind::Rsa => "RSA-2048",
            KeyKind::Ed25519 => "Ed25519",
        },
        out.display()
    );
    println!(
        "Publish this TXT record, then add the key to [mail.dkim] and run `paperpost dkim check`:"
    );
    println!();
    println!("{}", zone_line(&info));
    Ok(())
}

/// PEM text: a label and base64 in lines of 64.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Creates `path` readable by its owner only, refusing an existing file.
fn write_private(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The record's text: `v=DKIM1; k=KIND; p=KEY`.
pub fn record_text(info: &KeyInfo) -> String {
    format!("v=DKIM1; k={}; p={}", info.kind.as_str(), info.public)
}

/// A zone-file line for the record, its text in strings of at most 255
/// characters (DNS's limit per string; resolvers join them).
fn zone_line(info: &KeyInfo) -> String {
    let text = record_text(info);
    let strings: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{}._domainkey.{}. IN TXT ( {} )",
        info.selector,
        info.domain,
        strings.join(" ")
    )
}

/// What a selector's published record says of the configured key.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    Matches,
    Differs(String),
    Missing(String),
}

async fn check(settings: &Settings, resolver: Option<SocketAddr>) -> anyhow::Result<()> {
    let domain = signing_domain(settings);
    let Some(dkim) = Dkim::from_settings(&settings.mail.dkim, &domain)? else {
        bail!("DKIM signing is off (mail.dkim.selector is empty): nothing to check");
    };
    let dns = resolver_for(resolver)?;
    let mut all_match = true;
    for key in &dkim.keys {
        let name = format!("{}._domainkey.{}.", key.selector, key.domain);
        let found = match dns.txt_raw_lookup(name.as_str()).await {
            Ok(raw) => compare(key, &String::from_utf8_lossy(&raw)),
            Err(e) => Published::Missing(e.to_string()),
        };
        match found {
            Published::Matches => {
                println!("{name}: publishes the configured {} key", key.kind.as_str())
            }
            Published::Differs(why) => {
                all_match = false;
                println!("{name}: DIFFERS: {why}; publish:\n  {}", record_text(key));
            }
            Published::Missing(why) => {
                all_match = false;
                println!(
                    "{name}: NO RECORD ({why}); publish:\n  {}",
                    record_text(key)
                );
            }
        }
    }
    if !all_match {
        bail!("a published DKIM record does not match the configured key");
    }
    Ok(())
}

fn resolver_for(addr: Option<SocketAddr>) -> anyhow::Result<mail_auth::MessageAuthenticator> {
    use mail_auth::hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    let Some(addr) = addr else {
        return mail_auth::MessageAuthenticator::new_system_conf()
            .map_err(|e| anyhow!("cannot read the system's DNS configuration: {e}"));
    };
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let server = NameServerConfig::new(addr.ip(), true, vec![udp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    mail_auth::MessageAuthenticator::new(config, ResolverOpts::default())
        .map_err(|e| anyhow!("cannot use the resolver {addr}: {e}"))
}

/// Compares a record's text with the configured key.
fn compare(key: &KeyInfo, record: &str) -> Published {
    let tags: Vec<(&str, String)> = record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim(), v.split_whitespace().collect::<String>()))
        .collect();
    let tag = |name: &str| {
        tags.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let kind = tag("k").unwrap_or("rsa");
    if kind != key.kind.as_str() {
        return Published::Differs(format!("k={kind}, the key is {}", key.kind.as_str()));
    }
    match tag("p") {
        Some(p) if p == key.public => Published::Matches,
        Some("") => Published::Differs("the key is revoked (empty p=)".into()),
        Some(_) => Published::Differs("p= is another key".into()),
        None => Published::Differs("no p= tag".into()),
    }
}
