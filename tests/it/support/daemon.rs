//! `TestDaemon`: the real binary as a running child process (`run`, `serve`,
//! a long `send`), with its standard error read line by line on a thread of
//! its own into a channel, so that a wait never loses a line that arrived
//! together with the one an earlier wait was looking for.
//!
//! Every wait and every exit has a deadline; dropping a `TestDaemon` kills it.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Run, Sandbox};

/// An environment value that removes the variable instead (for one the
/// sandbox sets, such as PAPERPOST__LOG__LEVEL, when a test's file must rule).
pub const UNSET: &str = "\0unset";

/// How long a wait for a log line may take.
const LOG_WAIT: Duration = Duration::from_secs(30);
/// How long a process may take to exit (the unit's grace period is 60 s).
const EXIT_WAIT: Duration = Duration::from_secs(60);

pub struct TestDaemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Option<JoinHandle<String>>,
    log: String,
}

impl TestDaemon {
    /// Starts `paperpost ARGS...` in the sandbox with `env` on top of the
    /// sandbox's own environment.
    pub fn spawn(s: &Sandbox, env: &[(String, String)], args: &[&str]) -> Self {
        let mut command = s.command();
        for (k, v) in env {
            match v.as_str() {
                UNSET => command.env_remove(k),
                v => command.env(k, v),
            };
        }
        command.args(args);
        Self::spawn_command(command)
    }

    /// Starts `command` (made from `Sandbox::command`, wrapped or not).
    pub fn spawn_command(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start paperpost");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().expect("stdout piped");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        TestDaemon {
            child,
            lines,
            stdout: Some(stdout),
            log: String::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (SIGHUP, SIGTERM, SIGKILL, SIGSTOP...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child process, which is not reaped
        // until `wait` below.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Moves the lines that have arrived into the log; returns false when
    /// none has.
    fn take_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.log.push_str(&line);
        self.log.push('\n');
        Some(line)
    }

    /// Waits (30 s at most) for a line containing `marker`; returns the
    /// lines read by this wait, the marker's included.
    pub async fn wait_log(&mut self, marker: &str) -> String {
        let start = self.log.len();
        let deadline = Instant::now() + LOG_WAIT;
        while Instant::now() < deadline {
            match self.take_line(Duration::ZERO) {
                Some(line) if line.contains(marker) => return self.log[start..].to_string(),
                Some(_) => {}
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("no {marker:?} within {LOG_WAIT:?} in:\n{}", self.log);
    }

    /// `wait_log` for tests that are not async.
    pub fn wait_log_blocking(&mut self, marker: &str) -> String {
        let start = self.log.len();
        let deadline = Instant::now() + LOG_WAIT;
        while Instant::now() < deadline {
            if let Some(line) = self.take_line(Duration::from_millis(50))
                && line.contains(marker)
            {
                return self.log[start..].to_string();
            }
        }
        panic!("no {marker:?} within {LOG_WAIT:?} in:\n{}", self.log);
    }

    /// The whole log once a line containing `marker` is in it, whether an
    /// earlier wait read that line already or not.
    pub async fn logged(&mut self, marker: &str) -> String {
        if !self.log.contains(marker) {
            self.wait_log(marker).await;
        }
        self.log.clone()
    }

    /// The web endpoint's address, from its "listening" log line.
    pub async fn addr(&mut self) -> String {
        if !self.log.contains("web endpoint listening addr=") {
            self.wait_log("web endpoint listening addr=").await;
        }
        super::child::listening_addr(&self.log)
    }

    /// Waits (60 s at most) for it to exit by itself; what it printed.
    pub async fn finish(mut self) -> Run {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return self.output(status.code().unwrap_or(-1));
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {EXIT_WAIT:?}; log:\n{}",
                self.drain_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and waits for it to be gone (a crash).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then `finish`.
    pub async fn stop(self) -> Run {
        self.signal(libc::SIGTERM);
        self.finish().await
    }

    /// `stop` for tests that are not async.
    pub fn stop_blocking(mut self) -> Run {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return self.output(status.code().unwrap_or(-1));
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {EXIT_WAIT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it has logged so far (without waiting for more).
    pub fn drain_log(&mut self) -> String {
        while self.take_line(Duration::ZERO).is_some() {}
        self.log.clone()
    }

    /// The exited process's output: stdout, and every stderr line.
    fn output(&mut self, code: i32) -> Run {
        // The reader threads end at the pipes' end, which the exit closes
        // (unless a grandchild holds them: none does).
        while self.take_line(Duration::from_secs(5)).is_some() {}
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Run {
            code,
            stdout,
            stderr: self.log.clone(),
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
