//! Latency of several HTTP targets measured request by request in turn, for
//! A/B comparisons finer than this VM's minute-to-minute drift.
//!
//! `oha` runs (and the harness's rounds) load one target at a time, so two
//! binaries are compared across different seconds of a shared machine, whose
//! speed moves by tens of microseconds of added latency between bursts. Here
//! the requests go to every target in turn at a fixed overall rate, each round
//! in a new random order, so every target sees the same seconds and follows
//! every other as often; and the client spins (on its own CPU) instead of
//! sleeping, so that its own wake-ups add no noise. One request is in flight
//! at a time (at 2,000 req/s a request takes a fraction of the 500 us slot),
//! each target over `--conns` keep-alive connections used in turn.
//!
//! Standard library only, built by `interleave.sh` with `rustc -O`:
//!
//! ```text
//! interleave --rate 2000 --seconds 60 [--conns 16] [--warmup 2000] NAME=HOST:PORT ...
//! ```
//!
//! Prints one line per target: `NAME p50 p90 p99 requests` (microseconds).
//! Any answer but a 200 ends the run with an error.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BODY: &str = r#"{"model":"demo","messages":[{"role":"user","content":"Hello"}]}"#;
const KEY: &str = "sk-livery-bench-0123456789";

struct Target {
    name: String,
    request: Vec<u8>,
    conns: Vec<TcpStream>,
    next: usize,
    samples: Vec<u32>,
}

fn die(msg: String) -> ! {
    eprintln!("interleave: {msg}");
    std::process::exit(1);
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die(format!("{flag} needs a number")))
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| die(format!("{addr}: {e}")));
    s.set_nodelay(true).ok();
    s.set_nonblocking(true).ok();
    s
}

/// Sends one request and spins until its whole answer is read.
fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<(), String> {
    let mut sent = 0;
    while sent < request.len() {
        match conn.write(&request[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    buf.clear();
    let mut chunk = [0u8; 16384];
    let mut need: Option<usize> = None;
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::hint::spin_loop();
                continue;
            }
            Err(e) => return Err(e.to_string()),
        }
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
                }
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or("no content-length")?;
                need = Some(end + 4 + len);
            }
        }
        if need.is_some_and(|n| buf.len() >= n) {
            return Ok(());
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let mut rate = 2000.0_f64;
    let mut seconds = 60.0_f64;
    let mut conns = 16;
    let mut warmup = 2000;
    let mut named = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rate" => rate = number(&a, args.next()),
            "--seconds" => seconds = number(&a, args.next()),
            "--conns" => conns = number(&a, args.next()),
            "--warmup" => warmup = number(&a, args.next()),
            t => {
                let (name, addr) = t
                    .split_once('=')
                    .unwrap_or_else(|| die(format!("not NAME=HOST:PORT: {t}")));
                named.push((name.to_owned(), addr.to_owned()));
            }
        }
    }
    let mut targets: Vec<Target> = named
        .into_iter()
        .map(|(name, addr)| {
            let request = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {KEY}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            Target {
                name,
                request: request.into_bytes(),
                conns: (0..conns).map(|_| connect(&addr)).collect(),
                next: 0,
                samples: Vec::new(),
            }
        })
        .collect();
    if targets.is_empty() {
        die("no targets".into());
    }
    let mut buf = Vec::with_capacity(4096);
    let slot = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as usize;
    let n = targets.len();
    let start = Instant::now();
    // Each round of n requests visits every target once, in an order shuffled
    // anew, so that no target always follows the same one (a request finds
    // the caches as the one before it left them: in a fixed order the second
    // of two Livery builds ran 3-6 us faster than the first, whichever it was).
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    for k in 0..warmup + total {
        if k % n == 0 {
            for i in (1..n).rev() {
                // xorshift64: enough for a shuffle, no dependency.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng % (i as u64 + 1)) as usize);
            }
        }
        // Open loop: each request's latency counts from its scheduled time,
        // so a stall that delays the next ones is counted in them too.
        let due = start + slot * k as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let t = &mut targets[order[k % n]];
        let c = t.next;
        t.next = (c + 1) % t.conns.len();
        if let Err(e) = exchange(&mut t.conns[c], &t.request, &mut buf) {
            die(format!("{}: {e}", t.name));
        }
        if k >= warmup {
            let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
            t.samples.push(us);
        }
    }
    for t in &mut targets {
        t.samples.sort_unstable();
        println!(
            "{} {} {} {} {}",
            t.name,
            percentile(&t.samples, 0.5),
            percentile(&t.samples, 0.9),
            percentile(&t.samples, 0.99),
            t.samples.len()
        );
    }
}
