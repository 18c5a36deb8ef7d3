//! The sending lock is fenced (issue 8, item 5): every sender renews it, one
//! that lost it stops, claims and outcomes carry the holder, and a holder's
//! identity tells a dead process from one in another container or a reused PID.

use std::time::Duration;

use crate::support::{
    Sandbox,
    child::{DATE, queue_edition, run, setup, smtp_env, wait_for},
    daemon::TestDaemon,
    smtp::SmtpServer,
};

/// A short lock, so that the tests outlast it.
fn fast_lock(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.push(("PAPERPOST__DATABASE__LOCK_TTL".into(), "3s".into()));
    env
}

async fn set_holder(s: &Sandbox, holder: &str, for_ms: i64) {
    let pool = s.pool().await;
    crate::on_db!(&pool, |p| sqlx::query(p.sql(
        "INSERT INTO scheduler_lock (id, holder, expires_at) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET holder = $1, expires_at = $2"
    ))
    .bind(holder)
    .bind(paperpost::store::now_ms() + for_ms)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "")[..8]
        .to_string()
}

fn pid_namespace() -> String {
    let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let link = link.to_string_lossy();
    link.trim_start_matches("pid:[")
        .trim_end_matches(']')
        .to_string()
}

fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_renews_its_lock_so_nobody_takes_over_while_it_sends() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(250));
    let s = setup(24);
    let env = fast_lock(smtp_env(server.port(), 1));
    let first = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    // Well past the lock's 3 s: 16 messages at 250 ms each.
    wait_for("16 messages", || server.received().len() >= 16).await;
    let second = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        second.fails().contains("another paperpost process"),
        "{}",
        second.stderr
    );
    first.finish().await.ok();
    let counts = server.counts();
    assert_eq!(counts.len(), 24, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_lost_its_lock_stops_and_exits_non_zero() {
    let server = SmtpServer::start().await;
    server.set_delay(Duration::from_millis(200));
    let s = setup(40);
    let env = fast_lock(smtp_env(server.port(), 1));
    let first = TestDaemon::spawn(&s, &env, &["send", "--date", DATE]);
    wait_for("3 messages", || server.received().len() >= 3).await;
    // Another process takes the lock over (as one would once ours expired).
    set_holder(&s, "elsewhere:1:1:00000000:1:00000000", 600_000).await;
    let out = first.finish().await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("lost the sending lock"),
        "{}",
        out.stderr
    );
    let sent_by_first = server.received().len();
    assert!(sent_by_first < 40, "kept sending: {sent_by_first}");
    // The other holder goes away; what is left is sent once.
    set_holder(&s, "elsewhere:1:1:00000000:1:00000000", -1).await;
    run(&s, &env, &["send", "--date", DATE]).await.ok();
    let counts = server.counts();
    assert_eq!(counts.len(), 40, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_in_another_pid_namespace_is_not_taken_for_dead() {
    let server = SmtpServer::start().await;
    let s = setup(2);
    let env = smtp_env(server.port(), 1);
    // Same host name and kernel, a PID that does not exist here: a process
    // in another container on this machine, alive as far as anyone here knows.
    let holder = format!(
        "{}:4000000:12345:{}:{}:abcdef01",
        hostname(),
        boot_id(),
        pid_namespace().parse::<u64>().unwrap() + 1
    );
    set_holder(&s, &holder, 60_000).await;
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(
        out.fails().contains("another paperpost process"),
        "{}",
        out.stderr
    );
    assert!(server.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_pid_now_belongs_to_another_process_is_taken_over() {
    let server = SmtpServer::start().await;
    let s = setup(2);
    let env = smtp_env(server.port(), 1);
    // The PID is alive (this test), but it started at another time: the
    // holder died and its PID was reused (PID 1 in a restarted container).
    let me = std::process::id();
    let holder = format!(
        "{}:{me}:{}:{}:{}:abcdef01",
        hostname(),
        start_ticks(me) + 1,
        boot_id(),
        pid_namespace()
    );
    set_holder(&s, &holder, 60_000).await;
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    out.ok();
    assert!(out.stderr.contains("no longer running"), "{}", out.stderr);
    assert_eq!(server.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_names_this_process_so_a_second_one_waits() {
    let s = Sandbox::with_sample_papers();
    // Our own identity, alive: not taken over.
    let me = std::process::id();
    let holder = format!(
        "{}:{me}:{}:{}:{}:abcdef01",
        hostname(),
        start_ticks(me),
        boot_id(),
        pid_namespace()
    );
    set_holder(&s, &holder, 60_000).await;
    let out = s.run(&["send", "--date", DATE]);
    assert!(
        out.fails().contains("another paperpost process"),
        "{}",
        out.stderr
    );
}

/// Claims and outcomes carry the holder: a process whose rows were given to
/// the next holder cannot claim, re-queue, or finish them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_a_process_that_lost_its_rows_change_nothing() {
    use paperpost::store::deliveries;
    let s = setup(3);
    queue_edition(&s, DATE).await;
    let pool = s.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let ttl = 60_000;
    assert!(
        deliveries::try_lock(&mut conn, "a", ttl, None)
            .await
            .unwrap()
            .is_none()
    );
    let a = deliveries::claim(&mut conn, "a", 1, 10, 300_000, None)
        .await
        .unwrap();
    assert_eq!(a.len(), 3);
    // B takes over from A (whose lock ran out) and gets A's rows.
    let other = deliveries::try_lock(&mut conn, "b", ttl, Some("a"))
        .await
        .unwrap();
    assert!(other.is_none());
    // A's rows are queued again (as the new holder does at start): there is
    // something to claim, but A no longer holds the lock, so it claims none.
    deliveries::release_in_flight(&mut conn).await.unwrap();
    assert!(
        deliveries::claim(&mut conn, "a", 1, 10, 300_000, None)
            .await
            .unwrap()
            .is_empty(),
        "a process that lost the lock claimed rows"
    );
    let b = deliveries::claim(&mut conn, "b", 2, 10, 300_000, None)
        .await
        .unwrap();
    assert_eq!(b.len(), 3);
    // A's late outcomes and unclaims touch none of B's rows.
    let id = a[0].id;
    deliveries::mark_retry(&mut conn, 1, id, "late", 0, true)
        .await
        .unwrap();
    deliveries::mark_final(
        &mut conn,
        1,
        a[1].id,
        paperpost::domain::DeliveryStatus::Failed,
        "late",
    )
    .await
    .unwrap();
    deliveries::unclaim(&mut conn, 1, a[2].id).await.unwrap();
    let sent = [deliveries::SentRow {
        id,
        reply: "250",
        message_id: "<x@y>",
    }];
    let written = deliveries::mark_sent_many(&mut conn, 1, &sent)
        .await
        .unwrap();
    assert_eq!(written, 0);
    let rows: Vec<(String, Option<i64>)> = crate::on_db!(&pool, |p| sqlx::query_as(
        "SELECT status, claimed_by FROM deliveries ORDER BY id"
    )
    .fetch_all(p)
    .await
    .unwrap());
    assert_eq!(
        rows,
        vec![("sending".to_string(), Some(2)); 3],
        "A's late writes changed B's rows"
    );
}
