//! A TCP relay between the server and its database, which a test can break
//! the way networks and databases break: refuse and drop every connection (a
//! database that went down), or stop forwarding while keeping sockets open (a
//! cut network that nobody notices), and then heal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// What the relay does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Up,
    /// Closes every open connection and every new one at once.
    Down,
    /// Keeps connections open and accepts new ones, but forwards nothing.
    Blackhole,
}

/// A relay on `127.0.0.1:<port>` to one target.
pub struct Relay {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let (mode, watching) = watch::channel(Mode::Up);
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let registry = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = watching.clone();
                let link = tokio::spawn(relay_one(client, target, mode));
                let mut links = registry.lock().expect("links");
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Relay { addr, mode, links, accept }
    }

    /// Switches the relay to `mode`. Going `Down` closes every open connection.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode == Mode::Down {
            for link in self.links.lock().expect("links").drain(..) {
                link.abort();
            }
        }
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url_for(&self, url: &str, target: SocketAddr) -> String {
        url.replacen(&target.to_string(), &self.addr.to_string(), 1)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }
}

/// Relays one connection while the mode allows it.
async fn relay_one(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Down {
        let _ = client.shutdown().await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    loop {
        // Forward only while up; in a blackhole, hold the sockets and wait.
        if *mode.borrow_and_update() != Mode::Up {
            if mode.wait_for(|m| *m == Mode::Up).await.is_err() {
                return;
            }
            continue;
        }
        let mut up = [0u8; 16 * 1024];
        let mut down = [0u8; 16 * 1024];
        tokio::select! {
            n = tokio::io::AsyncReadExt::read(&mut client_read, &mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
            },
            n = tokio::io::AsyncReadExt::read(&mut server_read, &mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
            },
            _ = mode.changed() => {}
        }
    }
}
