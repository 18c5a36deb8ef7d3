//! A TCP proxy in front of a server that a test can cut off: the connections
//! through it are dropped, and new ones closed as they come, until it is
//! restored. What a database server restarting, or a lost network, looks like
//! to its clients.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (d, c) = (Arc::clone(&down), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(pipe(client, target, c.subscribe()));
            }
        });
        Proxy { port, down, cut }
    }

    /// A proxy before the database server at `url` (postgres://USER@HOST:PORT/DB),
    /// and the URL that goes through it.
    pub async fn before(url: &str) -> (Self, String) {
        let (head, rest) = url.split_once('@').expect("a URL with a user");
        let (target, name) = rest.split_once('/').expect("a URL with a database");
        let proxy = Self::start(target.parse().expect("HOST:PORT")).await;
        let through = format!("{head}@127.0.0.1:{}/{name}", proxy.port);
        (proxy, through)
    }

    /// Drops every connection and closes new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut client: TcpStream,
    target: SocketAddr,
    mut cut: tokio::sync::watch::Receiver<u64>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}
