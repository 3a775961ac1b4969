//! The control-plane endpoint as kubeadm's HA guide builds it (a TCP load balancer — HAProxy
//! there — in front of the API servers, health-checking each one's `/readyz`), in a few
//! threads: a backend gets new connections only while its `/readyz` answers 200, and a
//! connection a backend refuses (its API server just stopped) goes to the next healthy one.
//! A client loop through it sees what the cluster's users see during a rolling restart.
//!
//! `#[path = "support/endpoint.rs"] mod endpoint;` (uses `curl`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct Endpoint {
    pub listen: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Each backend's health, and curl's last answer (for failure messages).
type Health = Arc<Mutex<(Vec<bool>, String)>>;

impl Endpoint {
    /// Listens on `listen` (ADDR:PORT) and balances over `backends` (ADDR:PORT each, TLS
    /// checked against `ca` by the health checks).
    pub fn start(listen: &str, backends: &[String], ca: &Path) -> Endpoint {
        let listener = TcpListener::bind(listen).expect("bind the endpoint");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let health: Health = Arc::new(Mutex::new((vec![false; backends.len()], String::new())));
        let checker = {
            let (stop, health, b, ca) =
                (stop.clone(), health.clone(), backends.to_vec(), ca.to_path_buf());
            std::thread::spawn(move || check_loop(&stop, &health, &b, &ca))
        };
        let acceptor = {
            let (stop, health, b) = (stop.clone(), health.clone(), backends.to_vec());
            std::thread::spawn(move || accept_loop(&listener, &stop, &health, &b))
        };
        let ep =
            Endpoint { listen: listen.parse().unwrap(), stop, threads: vec![checker, acceptor] };
        let limit = Duration::from_secs(30);
        let what = "a healthy backend behind the endpoint";
        let deadline = std::time::Instant::now() + limit;
        while !health.lock().unwrap().0.iter().any(|h| *h) {
            let last = health.lock().unwrap().1.clone();
            assert!(std::time::Instant::now() < deadline, "no {what} after {limit:?}: {last}");
            std::thread::sleep(Duration::from_millis(200));
        }
        ep
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Every 250 ms, one curl for all backends' `/readyz` (a code per line, in order).
fn check_loop(stop: &AtomicBool, health: &Health, backends: &[String], ca: &PathBuf) {
    while !stop.load(Ordering::Relaxed) {
        let mut c = Command::new("curl");
        c.args(["-s", "--connect-timeout", "1", "--max-time", "2", "-w", "%{http_code}\\n"]);
        c.arg("--cacert").arg(ca);
        for b in backends {
            c.args(["-o", "/dev/null", &format!("https://{b}/readyz")]);
        }
        let out = c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let out = out.unwrap_or_default();
        let codes: Vec<bool> = out.lines().map(|l| l == "200").collect();
        let mut h = health.lock().unwrap();
        if codes.len() == backends.len() {
            h.0 = codes;
        }
        h.1 = out;
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, health: &Health, backends: &[String]) {
    let next = AtomicUsize::new(0);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let up: Vec<bool> = health.lock().unwrap().0.clone();
                let start = next.fetch_add(1, Ordering::Relaxed);
                if let Some(server) = connect_healthy(backends, &up, start) {
                    client.set_nonblocking(false).unwrap();
                    splice(client, server);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The first healthy backend from `start` on (round robin) that accepts a connection.
fn connect_healthy(backends: &[String], up: &[bool], start: usize) -> Option<TcpStream> {
    (0..backends.len()).map(|i| (start + i) % backends.len()).filter(|&i| up[i]).find_map(|i| {
        let addr: SocketAddr = backends[i].parse().ok()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
    })
}

/// Copies both ways until each side closes.
fn splice(client: TcpStream, server: TcpStream) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || copy(client, server));
    std::thread::spawn(move || copy(s2, c2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A bounded client loop: one `curl` sending `rate` requests a second (each on a new
/// connection) to `url`'s host resolved to the endpoint, at most `max` of them, until
/// finished. Every request's status is kept. HTTP/1.1: an API server shutting down gracefully
/// serves every connection it accepted, while over HTTP/2 it may refuse a just-opened
/// connection's first stream, unprocessed, with GOAWAY — which client-go retries and curl
/// reports as an error (one in ~2000 requests here).
pub struct ClientLoop {
    child: std::process::Child,
    out: PathBuf,
}

/// What the loop saw: requests answered, and each one that was not a 200 (status, curl's
/// error, its number in the loop, the start of the answer's body).
pub struct ClientTally {
    pub sent: usize,
    pub failed: Vec<String>,
}

impl ClientLoop {
    /// `auth` are curl's TLS arguments (--cacert, --cert, --key); `resolve` is HOST:PORT:ADDR.
    pub fn start(
        resolve: &str,
        url: &str,
        auth: &[&str],
        rate: u32,
        max: u32,
        out: PathBuf,
    ) -> ClientLoop {
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("curl")
            .args(["-s", "--http1.1", "--rate", &format!("{rate}/s"), "--resolve", resolve])
            .args(["-H", "Connection: close", "--connect-timeout", "5", "--max-time", "10"])
            .args(["-w", "\\nHAPKI-REQUEST %{http_code} %{exitcode} %{errormsg}\\n"])
            .args(auth)
            .arg(format!("{url}?n=[1-{max}]"))
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run curl");
        ClientLoop { child, out }
    }

    /// Stops the loop (the request in flight, if any, is not counted) and tallies.
    pub fn finish(mut self) -> ClientTally {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let (mut sent, mut failed, mut body) = (0, Vec::new(), String::new());
        for line in text.lines() {
            let Some(status) = line.strip_prefix("HAPKI-REQUEST ") else {
                body += line;
                continue;
            };
            sent += 1;
            if !status.starts_with("200 0") {
                let answer: String = body.chars().take(300).collect();
                failed.push(format!("{status} (request {sent}) {answer}"));
            }
            body.clear();
        }
        ClientTally { sent, failed }
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's arguments to send `token` as a bearer without putting it in any argv: the header is
/// written to `file` (created 0600, replaced if present) and read back by `-H @FILE`.
pub fn bearer_args(file: &Path, token: &str) -> [String; 2] {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .expect("create the bearer header file");
    writeln!(f, "Authorization: Bearer {token}").unwrap();
    ["-H".to_string(), format!("@{}", file.display())]
}
