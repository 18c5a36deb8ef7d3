//! A notify socket like systemd's (NOTIFY_SOCKET): collects the datagrams a
//! daemon sends.

use std::os::unix::net::UnixDatagram;

/// A notify socket like systemd's; collects the datagrams the daemon sends.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    socket: UnixDatagram,
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
            seen: Vec::new(),
        }
    }

    pub fn drain(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.extend(text.lines().map(str::to_string));
        }
        &self.seen
    }

    pub fn has(&mut self, line: &str) -> bool {
        self.drain().iter().any(|l| l.starts_with(line))
    }

    pub fn count(&mut self, line: &str) -> usize {
        self.drain().iter().filter(|l| l.starts_with(line)).count()
    }
}
