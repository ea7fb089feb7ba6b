//! End-to-end tests of the `forewarn` command, run as a user runs it.

mod cli;
mod deploy;
mod dispatch;
mod fuzz;
mod hostile;
mod layers;
mod live;
mod nats;
mod ops;
mod replay;
mod services;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `forewarn` with `args` from the repository root.
pub fn forewarn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("forewarn runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Simulates `parcels` parcels into `dir/name` and returns its path as text.
pub fn simulate(dir: &Path, name: &str, parcels: u64, seed: u64) -> String {
    simulate_over(dir, name, parcels, seed, "1")
}

/// [`simulate`], labels created over `days` days.
pub fn simulate_over(dir: &Path, name: &str, parcels: u64, seed: u64, days: &str) -> String {
    let path = dir.join(name).to_string_lossy().into_owned();
    let (parcels, seed) = (parcels.to_string(), seed.to_string());
    let out = forewarn(&["simulate", "--parcels", &parcels, "--seed", &seed, "--days", days, "--out", &path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    path
}

/// Where [`free_port`] picks from: below Linux's ephemeral range
/// (32768–60999), so neither the kernel's `bind(0)` nor an outgoing
/// connection's source port can take a port between the time a test is
/// handed it and the time its server binds it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port nothing listens on, on loopback, never handed out twice in this
/// process: parallel tests each get their own, and test processes started
/// at once start from different places (by process id).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = TEST_PORTS.start + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on loopback in {TEST_PORTS:?}")
}

/// A plain HTTP GET on loopback: the whole response, head and body (empty when nothing listens).
pub fn http_get(addr: &str, path: &str) -> String {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra header lines (`"Accept: text/csv"`).
pub fn http_get_with(addr: &str, path: &str, headers: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read_to_string(&mut response);
    }
    response
}
