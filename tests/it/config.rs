//! Start-up configuration through the real binary: layers, errors, secrets.

use crate::support;

use crate::support::Sandbox;

#[test]
fn invalid_values_stop_start_up_with_the_key_and_value() {
    let s = Sandbox::new();
    let cases = [
        (
            "PAPERPOST__SCHEDULE__CRON",
            "at seven",
            "schedule.cron",
            "at seven",
        ),
        (
            "PAPERPOST__SCHEDULE__TIMEZONE",
            "Europe/Atlantis",
            "schedule.timezone",
            "Europe/Atlantis",
        ),
        (
            "PAPERPOST__MAIL__FROM",
            "paperpost",
            "mail.from",
            "paperpost",
        ),
        (
            "PAPERPOST__MAIL__SMTP__PORT",
            "99999",
            "mail.smtp.port",
            "99999",
        ),
        (
            "PAPERPOST__HTTP__PUBLIC_URL",
            "ftp://example.org",
            "http.public_url",
            "ftp://example.org",
        ),
        (
            "PAPERPOST__MAIL__TRANSPORT",
            "pigeon",
            "mail.transport",
            "pigeon",
        ),
        (
            "PAPERPOST__MAIL__RETRY__MAX_AGE",
            "forever",
            "mail.retry.max_age",
            "forever",
        ),
    ];
    for (var, value, key, shown) in cases {
        let out = s.run_env(&[(var, value)], &["subscribers", "list"]);
        assert_eq!(out.code, 78, "{var}: {}", out.stderr);
        let line = out.first_error_line();
        assert!(line.starts_with("error: invalid configuration: "), "{line}");
        assert!(
            line.contains(key) && line.contains(shown),
            "{var}={value}: {line}"
        );
        assert!(
            !s.db_path().exists(),
            "nothing is created when the configuration is invalid"
        );
    }
}

#[test]
fn a_config_file_layers_over_defaults_and_env_wins() {
    let s = Sandbox::new();
    let f = s.write(
        "local.toml",
        "[database]\npath = \"other/pp.db\"\n[mail]\nconcurrency = 9\n",
    );
    let out = s.run(&["--config", f.to_str().unwrap(), "config"]);
    assert!(out.ok().contains("other/pp.db"), "{}", out.stdout);
    assert!(out.stdout.contains("concurrency: 9"), "{}", out.stdout);
    let out = s.run_env(
        &[
            ("PAPERPOST_CONFIG", f.to_str().unwrap()),
            ("PAPERPOST__MAIL__CONCURRENCY", "3"),
        ],
        &["config"],
    );
    assert!(out.ok().contains("concurrency: 3"), "{}", out.stdout);
    assert!(out.stdout.contains("other/pp.db"));

    s.run(&["--config", f.to_str().unwrap(), "migrate"]).ok();
    assert!(
        !s.db.url().is_empty() || s.path("other/pp.db").exists(),
        "the database folder is created"
    );
}

#[test]
fn unknown_keys_and_broken_files_are_named() {
    let s = Sandbox::new();
    let f = s.write("local.toml", "[mail]\nfrom_address = \"x@example.org\"\n");
    let out = s.run(&["--config", f.to_str().unwrap(), "config"]);
    assert_eq!(out.code, 78);
    assert!(
        out.first_error_line()
            .contains("mail.from_address: unknown field `from_address`"),
        "{}",
        out.stderr
    );

    let f = s.write("broken.toml", "[mail\nfrom = 1\n");
    let out = s.run(&["--config", f.to_str().unwrap(), "config"]);
    assert_eq!(out.code, 78);
    assert!(out.stderr.contains("broken.toml"), "{}", out.stderr);

    let out = s.run(&["--config", "missing.toml", "config"]);
    assert_eq!(out.code, 78);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

#[test]
fn secrets_never_appear_in_output() {
    let s = Sandbox::new();
    let out = s.run_env(
        &[("PAPERPOST__MAIL__SMTP__PASSWORD", "correct-horse-battery")],
        &["config"],
    );
    assert!(out.ok().contains("REDACTED"));
    assert!(!out.stdout.contains("correct-horse") && !out.stderr.contains("correct-horse"));
    assert!(!out.stdout.contains(support::SECRET));
}

#[test]
fn help_explains_the_commands() {
    let s = Sandbox::new();
    let out = s.run(&["--help"]);
    let text = out.ok();
    for cmd in ["demo", "subscribers", "papers", "migrate", "config"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
    let out = s.run(&["papers", "import", "--help"]);
    assert!(out.ok().contains("daily_papers"), "{}", out.stdout);
}

#[test]
fn demo_runs_on_the_embedded_defaults() {
    let s = Sandbox::new();
    let out = support::output_within(
        s.command()
            .env_remove("PAPERPOST__SECURITY__SECRET")
            .arg("demo"),
        support::RUN_LIMIT,
    );
    let text = out.ok();
    assert!(text.contains("Selected 5 papers for 2024-03-11"), "{text}");
    assert!(text.contains("ada@example.org"), "{text}");
    assert!(!s.db.url().is_empty() || s.db_path().exists());
    assert!(
        s.path("data/secret.key").exists(),
        "a secret is generated on first use"
    );
    // Twice is fine (with the same secret: the one it made).
    support::output_within(
        s.command()
            .env_remove("PAPERPOST__SECURITY__SECRET")
            .arg("demo"),
        support::RUN_LIMIT,
    )
    .ok();
}

/// Issue 8, item 12: `mail.smtp.tls = none` with a username would send the
/// password in clear; refused at start-up unless the relay is on loopback.
#[test]
fn a_password_in_clear_to_a_remote_host_is_refused() {
    let s = Sandbox::new();
    let clear = [
        ("PAPERPOST__MAIL__SMTP__TLS", "none"),
        ("PAPERPOST__MAIL__SMTP__USERNAME", "me"),
        ("PAPERPOST__MAIL__SMTP__HOST", "mail.example.org"),
    ];
    let out = s.run_env(&clear, &["config"]);
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.first_error_line()
            .starts_with("error: invalid configuration: mail.smtp.tls:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mail.example.org"));
    let local = [
        ("PAPERPOST__MAIL__SMTP__TLS", "none"),
        ("PAPERPOST__MAIL__SMTP__USERNAME", "me"),
        ("PAPERPOST__MAIL__SMTP__HOST", "127.0.0.1"),
    ];
    s.run_env(&local, &["config"]).ok();
}

/// The commented /etc/paperpost/paperpost.toml the .deb installs shows every
/// key of the built-in defaults with its default value, and is valid as is.
#[test]
fn the_packaged_config_file_lists_every_default_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let defaults = std::fs::read_to_string(root.join("config/default.toml")).unwrap();
    let packaged = std::fs::read_to_string(root.join("config/paperpost.toml")).unwrap();
    let keys = |text: &str, prefix: &str| -> Vec<String> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(line) = line.strip_prefix(prefix) else {
                continue;
            };
            if line.starts_with('[') && line.ends_with(']') {
                section = line.trim_matches(['[', ']']).to_string();
            } else if let Some((k, v)) = line.split_once(" = ")
                && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                out.push(format!("{section}.{k} = {v}"));
            }
        }
        out
    };
    assert_eq!(keys(&packaged, "# "), keys(&defaults, ""));
    let s = support::Sandbox::new();
    let out = s.run(&[
        "config",
        "--config",
        root.join("config/paperpost.toml").to_str().unwrap(),
    ]);
    assert!(
        out.ok().contains("configuration is valid"),
        "{}",
        out.stderr
    );
}
