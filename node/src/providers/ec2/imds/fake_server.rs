//! A metadata server of our own, for tests and the local demo: IMDSv2 session tokens with TTLs,
//! the identity paths, and a spot interruption notice / rebalance recommendation that can be
//! switched on and off. It is in the library, not in `tests/`, because the demo's "instances"
//! (network namespaces) need one each too; it has no dependency the node does not already have.
//!
//! Its minimal HTTP/1.1 reader and writer are public so tests can build other loopback fakes
//! (the EC2 fault proxy) on them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{InstanceIdentity, INSTANCE_ID, INSTANCE_TYPE, REBALANCE, REGION, SPOT_ACTION, ZONE};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// One HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request (head and `Content-Length` body); `None` when the peer closed first.
pub async fn read_request<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return Err(bad("bad request line")) };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    let mut head_len = line.len();
    loop {
        line.clear();
        head_len += reader.read_line(&mut line).await?;
        if head_len > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad("bad header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = HttpRequest { method, path, headers, body: Vec::new() };
    let len: usize =
        req.header("content-length").map_or(Ok(0), str::parse::<usize>).map_err(|_| bad("bad content-length"))?;
    if len > MAX_BODY {
        return Err(bad("request body too large"));
    }
    req.body.resize(len, 0);
    reader.read_exact(&mut req.body).await?;
    Ok(Some(req))
}

/// Writes a complete response and announces that the connection closes after it.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    w.write_all(head.as_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[derive(Debug)]
struct State {
    identity: InstanceIdentity,
    tokens: HashMap<String, Instant>,
    issued: u64,
    spot_action: Option<String>,
    rebalance: Option<String>,
    rejected: u64,
}

/// A running fake metadata service. Dropping it without [`FakeImds::shutdown`] also stops it.
#[derive(Debug)]
pub struct FakeImds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakeImds {
    /// Serves on an already-bound listener (tests bind port 0).
    pub fn start(listener: TcpListener, identity: InstanceIdentity) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            identity,
            tokens: HashMap::new(),
            issued: 0,
            spot_action: None,
            rebalance: None,
            rejected: 0,
        }));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state.clone(), cancel.clone()));
        Ok(FakeImds { addr, state, cancel, task: Some(task) })
    }

    /// Base URL to give [`super::ImdsSettings::endpoint`].
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the spot interruption notice on (`action`, e.g. `terminate`, at RFC 3339 `time`) or off.
    pub fn set_spot_action(&self, notice: Option<(&str, &str)>) {
        self.state.lock().unwrap().spot_action =
            notice.map(|(action, time)| serde_json::json!({ "action": action, "time": time }).to_string());
    }

    /// Switches the rebalance recommendation on (noticed at RFC 3339 `time`) or off.
    pub fn set_rebalance(&self, time: Option<&str>) {
        self.state.lock().unwrap().rebalance = time.map(|t| serde_json::json!({ "noticeTime": t }).to_string());
    }

    /// Requests refused for a missing/invalid token or TTL header.
    pub fn rejected_requests(&self) -> u64 {
        self.state.lock().unwrap().rejected
    }

    /// Session tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if conns.len() < 64 => { conns.spawn(handle(stream, state.clone())); }
                Ok(_) => {} // over the connection limit: drop it, the client retries
                Err(e) => tracing::warn!(error = %e, "fake IMDS accept failed"),
            },
        }
    }
    conns.shutdown().await;
}

async fn handle(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let Ok(Some(req)) = read_request(&mut reader).await else { return };
    let (status, headers, body) = respond(&req, &mut state.lock().unwrap());
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let _ = write_response(&mut w, status, &headers, body.as_bytes()).await;
}

fn respond(req: &HttpRequest, st: &mut State) -> (u16, Vec<(&'static str, String)>, String) {
    let now = Instant::now();
    st.tokens.retain(|_, expires| *expires > now);
    if req.path == "/latest/api/token" {
        if req.method != "PUT" {
            return (405, vec![], String::new());
        }
        let ttl = req.header(TOKEN_TTL_HEADER).and_then(|v| v.parse::<u64>().ok()).filter(|t| (1..=21_600).contains(t));
        let Some(ttl) = ttl else {
            st.rejected += 1;
            return (400, vec![], "missing or invalid X-aws-ec2-metadata-token-ttl-seconds".into());
        };
        st.issued += 1;
        let token = format!("fake-imds-token-{}-{}", st.issued, std::process::id());
        st.tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        return (200, vec![(TOKEN_TTL_HEADER, ttl.to_string())], token);
    }
    if req.method != "GET" {
        return (405, vec![], String::new());
    }
    if !req.header(TOKEN_HEADER).is_some_and(|t| st.tokens.contains_key(t)) {
        st.rejected += 1;
        return (401, vec![], String::new());
    }
    let id = &st.identity;
    let body = match req.path.as_str() {
        INSTANCE_ID => Some(id.instance_id.clone()),
        INSTANCE_TYPE => Some(id.instance_type.clone()),
        ZONE => Some(id.zone.clone()),
        REGION => Some(id.region.clone()),
        SPOT_ACTION => st.spot_action.clone(),
        REBALANCE => st.rebalance.clone(),
        _ => None,
    };
    match body {
        Some(b) => (200, vec![("content-type", "text/plain".into())], b),
        None => (404, vec![], String::new()),
    }
}
