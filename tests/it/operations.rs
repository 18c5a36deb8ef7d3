//! What real operations break (issue 15): a slow rate-limited relay, a
//! truncated subscriber file, a stale source, a lost secret, a live holder
//! that cannot be seen... each reproduced with the release binary.

use std::time::Duration;

use crate::support::{
    child::{DATE, run, setup, smtp_env, with},
    smtp::SmtpServer,
};

/// A slow, rate-limited relay: messages wait in this process's own queue
/// for longer than their lease. They are still this process's, so they must
/// not be swept back and claimed again (each reader got two copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_for_the_rate_limit_are_never_sent_twice() {
    let server = SmtpServer::start().await;
    let s = setup(40);
    let env = with(
        smtp_env(server.port(), 8),
        "PAPERPOST__MAIL__RATE_LIMIT",
        "3",
    );
    let env = with(env, "PAPERPOST__MAIL__LEASE", "1s");
    let out = run(&s, &env, &["send", "--date", DATE]).await;
    assert!(out.ok().contains("40 sent, 0 failed"), "{}", out.stdout);
    let counts = server.counts();
    assert_eq!(counts.len(), 40);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}\n{}", out.stderr);
    assert!(!out.stderr.contains("lease ran out"), "{}", out.stderr);
}

/// The sweep puts back rows whose lease ran out, unless their process still
/// holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_spares_the_rows_their_process_still_holds() {
    use paperpost::store::deliveries;
    let s = setup(3);
    crate::support::child::queue_edition(&s, DATE).await;
    let pool = s.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    assert!(
        deliveries::try_lock(&mut conn, "me", 60_000, None)
            .await
            .unwrap()
            .is_none()
    );
    let claimed = deliveries::claim(&mut conn, "me", 1, 10, 1, None)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let held = [claimed[0].id, claimed[1].id];
    let released = deliveries::release_expired(&mut conn, "me", &held)
        .await
        .unwrap();
    assert_eq!(released, 1, "only the row nobody holds goes back");
    let queued: Vec<i64> = sqlx::query_scalar("SELECT id FROM deliveries WHERE status = 'queued'")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(queued, vec![claimed[2].id]);
}
