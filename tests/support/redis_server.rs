//! A `redis-server` on a free loopback port for the tests that need one
//! (`LIVERY_REDIS_SERVER`, else `PATH`; without it the test prints why and
//! passes, unless `LIVERY_REQUIRE_REDIS=1`). Append-only persistence in its own
//! directory, so that a stop and a restart keep the data (an outage, not a
//! wipe).
//!
//! The port is outside the kernel's ephemeral range, which port 0 and every
//! outgoing connection draw from: with thousands of connections made by the
//! tests running alongside, a port found free there could be taken before
//! redis-server listened on it, or while it was down between a kill and a
//! restart. A server that cannot listen all the same is started again, on
//! another port at first, on its own port at a restart.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports given to servers of this process, never given again: a server
/// that is down keeps its port.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How long a server has to answer PING once started.
const READY_WITHIN: Duration = Duration::from_secs(20);

pub struct RedisServer {
    bin: String,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(test: &str) -> Option<Self> {
        let bin = std::env::var("LIVERY_REDIS_SERVER")
            .ok()
            .filter(|b| !b.is_empty())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("redis-server"))
                        .find(|p| p.is_file())
                        .map(|p| p.to_string_lossy().into_owned())
                })
            });
        let Some(bin) = bin else {
            if std::env::var("LIVERY_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{test}: redis-server not found (LIVERY_REQUIRE_REDIS=1)");
            }
            eprintln!("SKIPPED {test}: redis-server not found (set LIVERY_REDIS_SERVER or install redis-server)");
            return None;
        };
        let mut failures = Vec::new();
        while failures.len() < 5 {
            let mut server = Self {
                bin: bin.clone(),
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(why) => {
                    eprintln!("{test}: redis-server on port {}: {why}", server.port);
                    failures.push(format!("port {}: {why}", server.port));
                }
            }
        }
        panic!(
            "{test}: redis-server did not start:\n{}",
            failures.join("\n")
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again on its port, with its data; returns once it
    /// answers PING. A start that cannot listen (its port still held) is
    /// tried again for 20 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let start = Instant::now();
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(why) if start.elapsed() < Duration::from_secs(20) => {
                    eprintln!("redis-server on port {}: {why}; again", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => panic!("redis-server did not start again on {}: {why}", self.port),
            }
        }
    }

    /// Runs redis-server on `self.port` and waits until it answers PING; its
    /// log if it exits first (as when the port is taken) or does not answer.
    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        };
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited ({status}):\n{}", log_tail()));
                }
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            if start.elapsed() > READY_WITHIN {
                self.kill();
                return Err(format!(
                    "no answer to PING within {READY_WITHIN:?}:\n{}",
                    log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`: with `appendfsync always` every acknowledged write survives.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A plain connection, for assertions.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server on `port` answers PING (not `-LOADING`, not some
/// other listener).
fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A loopback port free now, outside the ephemeral range when there is room
/// (else one the kernel picks), and not given to another server of this
/// process.
fn free_port() -> u16 {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut ends = r.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the range from 10000, or above it.
    let room = if low > 11_000 {
        Some((10_000, low - 1))
    } else if high < 64_000 {
        Some((high + 1, 65_535))
    } else {
        None
    };
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let port = match room {
            Some((from, to)) => from + (random() % u64::from(to - from + 1)) as u16,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free loopback port for redis-server");
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
