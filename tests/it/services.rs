//! The real services the notification tests talk to: an SMTP server
//! (aiosmtpd, writing a maildir) and an in-process HTTP server standing in
//! for the SMS gateway, the webhooks and the CRM, which records every
//! request and answers as the test scripts it (503, 429 with Retry-After,
//! 400, or hanging).

use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::nats::wait_until;

/// aiosmtpd on a free loopback port, delivering into a maildir.
pub struct Smtp {
    pub port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

impl Smtp {
    pub fn start(dir: &Path) -> Smtp {
        let mut smtp = Smtp { port: super::free_port(), maildir: dir.join("maildir"), child: None };
        smtp.restart();
        smtp
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd is installed (scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_until("the SMTP server to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                out.extend(entries.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request as the gateway saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// How the gateway answers one request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    RetryAfter(u16, u64),
    /// Never answers (the client times out).
    Hang,
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    /// Scripted answers by the SMS recipient (`to`) or the path; 200 when none is left.
    script: HashMap<String, VecDeque<Answer>>,
    delay: Duration,
}

type Gate = Arc<Mutex<Shared>>;

/// The HTTP gateway, serving until dropped.
pub struct Gateway {
    pub url: String,
    shared: Gate,
    _runtime: tokio::runtime::Runtime,
}

async fn answer(State(shared): State<Gate>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let request = Request {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    let key = request.json()["to"].as_str().map(String::from).unwrap_or_else(|| request.path.clone());
    let (next, delay) = {
        let mut s = shared.lock().unwrap();
        s.requests.push(request);
        let next = s.script.get_mut(&key).and_then(VecDeque::pop_front).unwrap_or(Answer::Status(200));
        (next, s.delay)
    };
    tokio::time::sleep(delay).await;
    match next {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::OK).into_response(),
        Answer::RetryAfter(code, secs) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::TOO_MANY_REQUESTS), [("retry-after", secs.to_string())])
                .into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Gateway {
    pub fn start() -> Gateway {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Gate::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = axum::serve(listener, app).await;
        });
        Gateway { url, shared, _runtime: runtime }
    }

    /// Answers the next requests for `key` (an SMS recipient or a path) so.
    pub fn script(&self, key: &str, answers: &[Answer]) {
        self.shared.lock().unwrap().script.entry(key.to_string()).or_default().extend(answers);
    }

    /// Every answer waits this long.
    pub fn delay(&self, delay: Duration) {
        self.shared.lock().unwrap().delay = delay;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.shared.lock().unwrap().requests.len()
    }

    /// The SMS webhook requests to `to`.
    pub fn sms_to(&self, to: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.json()["to"] == to).collect()
    }
}

/// A real Prometheus on a free loopback port, scraping `target` every second.
pub struct Prometheus {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: forewarn\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config written");
        let addr = format!("127.0.0.1:{}", super::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on the PATH (apt-get install prometheus)");
        Prometheus { addr, child, _dir: dir }
    }

    /// An instant query's JSON answer (`status`, `data` or `error`).
    pub fn query(&self, query: &str) -> serde_json::Value {
        let encoded = forewarn::dispatch::deliver::url_encode(query);
        let response = super::http_get(&self.addr, &format!("/api/v1/query?query={encoded}"));
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Tolerates a chunked body: the JSON object is between the first { and the last }.
        let json = body.find('{').zip(body.rfind('}')).and_then(|(a, b)| body.get(a..=b));
        json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
    }

    /// The value of an instant query's first sample, if any.
    pub fn value(&self, query: &str) -> Option<f64> {
        self.query(query)["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}
