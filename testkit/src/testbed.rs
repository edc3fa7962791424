//! Real-process fixtures shared by the `host_*` tests and the `checkpoint` benchmark: a
//! cleanup guard for namespaces and workloads, and a redis client that pipelines
//! INCR/SET/PING over one TCP connection from a client network namespace and reports what a
//! user would notice (reconnects, gaps in the INCR sequence, the longest stall).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hotspot_node::sys::netns;
use hotspot_node::workload::Workloads;

/// Removes what a test created, even when it panics: workloads (by name), then namespaces.
pub struct Cleanup {
    pub workloads: Workloads,
    pub names: Vec<String>,
    pub netns: Vec<String>,
}

impl Cleanup {
    pub fn new(workloads: Workloads) -> Self {
        Cleanup { workloads, names: Vec::new(), netns: Vec::new() }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.names {
            if let Err(e) = self.workloads.stop(n) {
                if !matches!(e, hotspot_node::workload::WorkloadError::Unknown(_)) {
                    eprintln!("cleanup: stopping {n}: {e}");
                }
            }
        }
        for ns in &self.netns {
            let _ = netns::delete(ns);
        }
    }
}

/// The numbers a counter workload appended to `file`, one per line.
pub fn read_counts(file: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// One RESP reply, as much as the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Error(String),
}

pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad reply line {line:?}"));
    let body = line.trim_end_matches("\r\n");
    let (kind, rest) = body.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                std::io::Read::read_exact(r, &mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        }
        _ => return Err(bad()),
    })
}

/// A command in RESP array form.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend(*a);
        out.extend(b"\r\n");
    }
    out
}

/// What the pipelining client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// Every INCR result, in order.
    pub incrs: Vec<i64>,
    /// SETs acknowledged (each a distinct key).
    pub sets_acked: u64,
    /// Longest time between two consecutive reply batches.
    pub max_stall: Duration,
    /// The connection broke or a reply was wrong (a reconnect would be needed).
    pub error: Option<String>,
    /// DBSIZE asked on the same connection after stopping.
    pub dbsize: Option<i64>,
}

impl ClientReport {
    /// INCR values are consecutive (no gap, no repeat).
    pub fn incr_sequence_ok(&self) -> Result<(), String> {
        for w in self.incrs.windows(2) {
            if w[1] != w[0] + 1 {
                return Err(format!("INCR jumped from {} to {}", w[0], w[1]));
            }
        }
        Ok(())
    }
}

/// A client pipelining `INCR ctr`, `SET key:N`, `PING` every `interval` on one connection.
pub struct PipeliningClient {
    stop: Arc<AtomicBool>,
    batches: Arc<std::sync::atomic::AtomicU64>,
    /// Longest stall since the last [`PipeliningClient::take_max_stall`], in microseconds.
    stall_us: Arc<std::sync::atomic::AtomicU64>,
    /// Why the connection ended, as soon as it did (the report comes only with `finish`).
    error: Arc<Mutex<Option<String>>>,
    handle: Option<JoinHandle<ClientReport>>,
}

impl PipeliningClient {
    /// Connects from inside network namespace `client_ns` (None: the caller's) to `server`.
    pub fn start(client_ns: Option<&str>, server: SocketAddr, interval: Duration, key_prefix: &str) -> std::io::Result<Self> {
        let stream = match client_ns {
            Some(ns) => netns::run_in(ns, move || TcpStream::connect_timeout(&server, Duration::from_secs(5)))
                .map_err(|e| std::io::Error::other(e.to_string()))??,
            None => TcpStream::connect_timeout(&server, Duration::from_secs(5))?,
        };
        stream.set_nodelay(true)?;
        // Long enough for a 1 GiB checkpoint round, short enough that a broken test ends.
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stall_us = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (stop2, batches2, stall2, error2, prefix) = (stop.clone(), batches.clone(), stall_us.clone(), error.clone(), key_prefix.to_string());
        let handle = std::thread::Builder::new().name("redis-client".into()).spawn(move || {
            let report = client_loop(stream, interval, &prefix, &stop2, &batches2, &stall2);
            *error2.lock().unwrap_or_else(|p| p.into_inner()) = report.error.clone();
            report
        })?;
        Ok(PipeliningClient { stop, batches, stall_us, error, handle: Some(handle) })
    }

    /// The longest time between two reply batches since the previous call (the client-visible
    /// gap of whatever happened in between), and starts a new measurement.
    pub fn take_max_stall(&self) -> Duration {
        Duration::from_micros(self.stall_us.swap(0, Ordering::Relaxed))
    }

    /// Why the connection broke, once it has (None while it is alive).
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Batches answered so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more batches were answered (or `timeout`).
    pub fn wait_batches(&self, n: u64, timeout: Duration) -> bool {
        let target = self.batches() + n;
        let deadline = Instant::now() + timeout;
        while self.batches() < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn finish(mut self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("finished once").join().expect("client thread panicked")
    }
}

impl Drop for PipeliningClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn client_loop(
    stream: TcpStream,
    interval: Duration,
    prefix: &str,
    stop: &AtomicBool,
    batches: &std::sync::atomic::AtomicU64,
    stall_us: &std::sync::atomic::AtomicU64,
) -> ClientReport {
    let mut report = ClientReport::default();
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut last = Instant::now();
    let mut n = 0u64;
    let result: std::io::Result<()> = (|| {
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}:{n}");
            let mut batch = command(&[b"INCR", b"ctr"]);
            batch.extend(command(&[b"SET", key.as_bytes(), &n.to_le_bytes()]));
            batch.extend(command(&[b"PING"]));
            writer.write_all(&batch)?;
            match read_reply(&mut reader)? {
                Reply::Int(v) => report.incrs.push(v),
                other => return Err(std::io::Error::other(format!("INCR answered {other:?}"))),
            }
            match read_reply(&mut reader)? {
                Reply::Simple(s) if s == "OK" => report.sets_acked += 1,
                other => return Err(std::io::Error::other(format!("SET answered {other:?}"))),
            }
            match read_reply(&mut reader)? {
                Reply::Simple(s) if s == "PONG" => {}
                other => return Err(std::io::Error::other(format!("PING answered {other:?}"))),
            }
            let now = Instant::now();
            report.max_stall = report.max_stall.max(now - last);
            stall_us.fetch_max((now - last).as_micros() as u64, Ordering::Relaxed);
            last = now;
            n += 1;
            batches.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(interval);
        }
        writer.write_all(&command(&[b"DBSIZE"]))?;
        if let Reply::Int(v) = read_reply(&mut reader)? {
            report.dbsize = Some(v);
        }
        Ok(())
    })();
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    report
}

/// Fills redis with `bytes` of incompressible values (`fill:N` keys of `value_len` bytes of a
/// seeded xorshift stream), pipelined `batch` at a time. Returns the number of keys.
pub fn fill_random(client_ns: Option<&str>, server: SocketAddr, bytes: u64, value_len: usize) -> std::io::Result<u64> {
    let work = move || -> std::io::Result<u64> {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let keys = bytes.div_ceil(value_len as u64);
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (std::process::id() as u64) ^ Instant::now().elapsed().as_nanos() as u64;
        let mut value = vec![0u8; value_len];
        const BATCH: u64 = 64;
        let mut k = 0;
        while k < keys {
            let end = (k + BATCH).min(keys);
            let mut buf = Vec::with_capacity((end - k) as usize * (value_len + 64));
            for i in k..end {
                for chunk in value.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
                }
                buf.extend(command(&[b"SET", format!("fill:{i}").as_bytes(), &value]));
            }
            writer.write_all(&buf)?;
            for _ in k..end {
                match read_reply(&mut reader)? {
                    Reply::Simple(_) => {}
                    other => return Err(std::io::Error::other(format!("SET answered {other:?}"))),
                }
            }
            k = end;
        }
        Ok(keys)
    };
    match client_ns {
        Some(ns) => netns::run_in(ns, work).map_err(|e| std::io::Error::other(e.to_string()))?,
        None => work(),
    }
}

/// Waits until something accepts TCP connections at `addr` from `client_ns`.
pub fn wait_listening(client_ns: Option<&str>, addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let ok = match client_ns {
            Some(ns) => netns::run_in(ns, move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()).unwrap_or(false),
            None => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        };
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resp_replies() {
        let mut input: &[u8] = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n-ERR no\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Int(42));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Bulk(Some(b"abc".to_vec())));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Bulk(None));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Error("ERR no".into()));
        assert!(read_reply(&mut input).is_err());
        assert_eq!(command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn incr_gaps_are_found() {
        let ok = ClientReport { incrs: vec![5, 6, 7], ..Default::default() };
        assert!(ok.incr_sequence_ok().is_ok());
        let gap = ClientReport { incrs: vec![5, 7], ..Default::default() };
        assert!(gap.incr_sequence_ok().is_err());
        let repeat = ClientReport { incrs: vec![5, 5], ..Default::default() };
        assert!(repeat.incr_sequence_ok().is_err());
    }
}

/// The redis-server command line every host test, bench and the demo run: port 6379 on all
/// addresses of its namespace, no RDB snapshots, then `extra` (persistence choices, data dir).
pub fn redis_command(extra: &[&str]) -> Vec<String> {
    ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}
