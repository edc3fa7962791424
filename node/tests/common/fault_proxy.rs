//! A loopback proxy in front of moto that answers chosen EC2 actions with a real AWS error
//! document (moto cannot throttle or deny), and forwards everything else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hotspot_node::providers::ec2::imds::fake_server::{read_request, write_response, HttpRequest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
struct Fault {
    status: u16,
    code: &'static str,
    message: &'static str,
    /// How many more requests fail; then the action passes through.
    remaining: u32,
}

#[derive(Default)]
struct Shared {
    faults: HashMap<String, Fault>,
    seen: HashMap<String, u32>,
}

pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Proxies to `upstream` (e.g. `http://127.0.0.1:5000`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(serve(listener, upstream, shared.clone()));
        FaultProxy { endpoint, shared, task }
    }

    /// The next `times` requests for `action` get HTTP `status` with error `code`.
    pub fn fail(&self, action: &str, status: u16, code: &'static str, message: &'static str, times: u32) {
        let f = Fault { status, code, message, remaining: times };
        self.shared.lock().unwrap().faults.insert(action.to_string(), f);
    }

    /// Requests seen for `action` (failed or forwarded).
    pub fn seen(&self, action: &str) -> u32 {
        self.shared.lock().unwrap().seen.get(action).copied().unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, upstream: String, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        // Per-connection tasks end with their one request; the proxy is aborted with the test.
        tokio::spawn(handle(stream, upstream.clone(), shared.clone()));
    }
}

fn action_of(req: &HttpRequest) -> String {
    let body = String::from_utf8_lossy(&req.body);
    body.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("?").to_string()
}

async fn handle(stream: TcpStream, upstream: String, shared: Arc<Mutex<Shared>>) {
    let (r, mut w) = stream.into_split();
    let Ok(Some(req)) = read_request(&mut BufReader::new(r)).await else { return };
    let action = action_of(&req);
    let fault = {
        let mut s = shared.lock().unwrap();
        *s.seen.entry(action.clone()).or_default() += 1;
        match s.faults.get_mut(&action) {
            Some(f) if f.remaining > 0 => {
                f.remaining -= 1;
                Some(f.clone())
            }
            _ => None,
        }
    };
    if let Some(f) = fault {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>",
            f.code, f.message
        );
        let _ = write_response(&mut w, f.status, &[("content-type", "text/xml")], xml.as_bytes()).await;
        return;
    }
    let Ok((status_line, headers, body)) = forward(&upstream, &req).await else { return };
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(502);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "content-length" | "connection" | "transfer-encoding"))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let _ = write_response(&mut w, status, &headers, &body).await;
}

/// Sends the request upstream on a fresh connection and reads the whole response.
async fn forward(upstream: &str, req: &HttpRequest) -> std::io::Result<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (n, v) in &req.headers {
        if n != "connection" {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    up.write_all(head.as_bytes()).await?;
    up.write_all(&req.body).await?;
    let mut reader = BufReader::new(up);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(len) => {
            body.resize(len, 0);
            reader.read_exact(&mut body).await?;
        }
        None => {
            reader.read_to_end(&mut body).await?;
        }
    }
    Ok((status_line, headers, body))
}
