//! Issue 16 item 6: open connections are capped below the process's file
//! descriptor limit, so idle sockets cannot starve the health check, the
//! database or the mail server connections of descriptors.

use std::{os::unix::process::CommandExt, time::Duration};

use crate::support::{
    child::{DATE, email, queue_edition, setup, smtp_env, wait_for, with},
    daemon::TestDaemon,
    http,
    smtp::SmtpServer,
};

/// Sets this process's soft descriptor limit to its hard limit (the test
/// holds thousands of client sockets).
fn raise_own_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    l.rlim_cur
}

/// With `ulimit -n 1024` (systemd's usual soft limit, and here the hard one
/// too), 10,000 idle connections: /healthz still answers, the edition still
/// goes out, and no "Too many open files"; once they go, /healthz is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_healthz_and_sending_alive() {
    let wanted = 10_000;
    assert!(
        raise_own_limit() > wanted + 100,
        "this test needs {wanted} sockets"
    );
    let s = setup(20);
    let server = SmtpServer::start().await;
    let bind = format!("127.0.0.1:{}", http::free_port());
    let env = with(smtp_env(server.port(), 2), "PAPERPOST__HTTP__BIND", &bind);
    let env = crate::support::child::never_fires(env);
    let mut command = s.command();
    command.envs(env.iter().map(|(k, v)| (k, v))).arg("run");
    unsafe {
        command.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = TestDaemon::spawn_command(command);
    let addr = daemon.addr().await;
    http::wait_healthy(&addr);

    let idle = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            (0..wanted)
                .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
                .collect::<Vec<_>>()
        }
    })
    .await
    .unwrap();
    assert_eq!(
        idle.len() as u64,
        wanted,
        "every connection was accepted or answered"
    );

    // /healthz answers (503 "busy" while the cap is reached), at once.
    let health = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || http::request_within(&addr, "/healthz", Duration::from_secs(3))
    })
    .await
    .unwrap()
    .expect("/healthz answers");
    assert!(matches!(health.status, 200 | 503), "{}", health.head);
    if health.status == 503 {
        assert!(
            health.head.to_ascii_lowercase().contains("retry-after"),
            "{}",
            health.head
        );
    }

    // The engine still has descriptors for the database and the mail server.
    queue_edition(&s, DATE).await;
    wait_for("the edition, during the flood", || {
        server.accepted().len() == 20
    })
    .await;
    assert!(server.accepted().iter().any(|m| m.to == email(0)));

    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health =
        tokio::task::spawn_blocking(move || http::request(&addr, "GET", "/healthz", &[], b""))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    let log = daemon.stop().await.stderr;
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("max_connections="), "the cap is logged");
}
