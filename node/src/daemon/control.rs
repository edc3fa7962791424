//! The local control API: a unix socket (mode 0600 in a 0700 directory, so root only) speaking
//! one JSON request line and one JSON response line per connection, both carrying the protocol
//! version (`hotspot_protocol::ids::CONTROL_PROTOCOL_VERSION`). JSON keeps it scriptable with
//! `socat`; the version lets an old CLI and a new daemon refuse each other clearly.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::ids::CONTROL_PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    #[serde(flatten)]
    pub body: T,
}

pub use super::api::{
    Attempt, EvacuationEvent, EvacuationReport, FailedMove, HeldReservation, LostWorkload, MoveRecord, PeerRow, Reply, Request, ReserveOutcome,
    ReserveParams, StatusReport, VolumeZone,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the hotspot-node daemon is not running (nothing listening on {}): start it with `hotspot-node run` \
         (see `hotspot-node run --help`), or point --socket / HOTSPOT_CONTROL_SOCKET at its control socket",
        .socket.display()
    )]
    NotRunning { socket: PathBuf },
    #[error("permission denied on {}: the control socket is root-only; run as root", .socket.display())]
    PermissionDenied { socket: PathBuf },
    #[error("control socket {}: {source}", .socket.display())]
    Io { socket: PathBuf, source: std::io::Error },
    #[error("daemon speaks control protocol version {got}, this CLI speaks {CONTROL_PROTOCOL_VERSION}; use matching versions")]
    Version { got: u16 },
    #[error("bad control message: {0}")]
    Malformed(String),
    #[error("another daemon is already serving {}", .socket.display())]
    InUse { socket: PathBuf },
}

fn connect(socket: &Path) -> Result<std::os::unix::net::UnixStream, ControlError> {
    use std::io::ErrorKind;
    std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ControlError::NotRunning { socket: socket.into() },
        ErrorKind::PermissionDenied => ControlError::PermissionDenied { socket: socket.into() },
        _ => ControlError::Io { socket: socket.into(), source: e },
    })
}

/// Sends one request to the daemon and waits (up to `timeout`) for its reply.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ControlError> {
    let io = |source: std::io::Error| ControlError::Io { socket: socket.into(), source };
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&Envelope { version: CONTROL_PROTOCOL_VERSION, body: request })
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream.take(MAX_LINE * 16)).read_line(&mut reply).map_err(io)?;
    let value: serde_json::Value = serde_json::from_str(&reply).map_err(|e| ControlError::Malformed(e.to_string()))?;
    let got = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u16;
    if got != CONTROL_PROTOCOL_VERSION {
        return Err(ControlError::Version { got });
    }
    let env: Envelope<Reply> = serde_json::from_value(value).map_err(|e| ControlError::Malformed(e.to_string()))?;
    Ok(env.body)
}

/// Sends one request and passes every reply line to `each` (progress, then the final reply,
/// which is also returned). `idle` bounds the wait for each line, not the whole exchange.
pub fn call_stream(socket: &Path, request: &Request, idle: Duration, mut each: impl FnMut(&Reply)) -> Result<Reply, ControlError> {
    let io = |source: std::io::Error| ControlError::Io { socket: socket.into(), source };
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(idle)).map_err(io)?;
    let mut line = serde_json::to_vec(&Envelope { version: CONTROL_PROTOCOL_VERSION, body: request })
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut last = None;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(io)?;
        let env: Envelope<Reply> = serde_json::from_str(&line).map_err(|e| ControlError::Malformed(e.to_string()))?;
        if env.version != CONTROL_PROTOCOL_VERSION {
            return Err(ControlError::Version { got: env.version });
        }
        each(&env.body);
        last = Some(env.body);
    }
    last.ok_or_else(|| ControlError::Malformed("daemon closed the connection without a reply".into()))
}

/// Answers control requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
    /// Answers a request whose reply is a stream of lines (`Migrate`); the stream ends when
    /// `out` is dropped. The default sends the one reply of [`Handler::handle`].
    fn handle_stream(&self, request: Request, out: tokio::sync::mpsc::Sender<Reply>) -> impl Future<Output = ()> + Send {
        async move {
            let _ = out.send(self.handle(request).await).await;
        }
    }
}

/// Binds the socket root-only. Refuses if a live daemon already serves it; replaces a stale one.
pub fn bind(socket: &Path) -> Result<UnixListener, ControlError> {
    let io = |source: std::io::Error| ControlError::Io { socket: socket.into(), source };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(ControlError::InUse { socket: socket.into() });
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(io)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves until `cancel` fires; connections in flight are finished (bounded) before returning.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>, cancel: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let stream = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_one(stream, &*handler).await {
                debug!(error = %e, "control connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

async fn serve_one<H: Handler>(stream: tokio::net::UnixStream, handler: &H) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_LINE)).read_line(&mut line).await?;
    let request = match serde_json::from_str::<serde_json::Value>(&line) {
        Err(e) => Err(Reply::Error { message: format!("request is not JSON: {e}") }),
        Ok(v) if v.get("version").and_then(|v| v.as_u64()) != Some(CONTROL_PROTOCOL_VERSION as u64) => Err(Reply::Error {
            message: format!("unsupported control protocol version (this daemon speaks {CONTROL_PROTOCOL_VERSION})"),
        }),
        Ok(v) => serde_json::from_value::<Envelope<Request>>(v)
            .map(|env| env.body)
            .map_err(|e| Reply::Error { message: format!("unknown or malformed request: {e}") }),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Reply>(64);
    let answer = async move {
        match request {
            Ok(request @ (Request::Migrate { .. } | Request::Drain { cancel: false } | Request::Notice { .. })) => {
                handler.handle_stream(request, tx).await
            }
            Ok(request) => {
                let _ = tx.send(handler.handle(request).await).await;
            }
            Err(reply) => {
                let _ = tx.send(reply).await;
            }
        }
    };
    let write_lines = async {
        while let Some(reply) = rx.recv().await {
            let mut out = serde_json::to_vec(&Envelope { version: CONTROL_PROTOCOL_VERSION, body: reply })?;
            out.push(b'\n');
            // A client that went away does not stop the work (a migration must finish or roll back).
            if write.write_all(&out).await.is_err() {
                while rx.recv().await.is_some() {}
                return Ok(());
            }
        }
        write.shutdown().await
    };
    let ((), written) = tokio::join!(answer, write_lines);
    written
}

#[cfg(test)]
mod tests {
    use hotspot_protocol::migration::MigrationMode;

    #[test]
    fn migrate_request_mode_is_optional_on_the_wire() {
        let old: Request = serde_json::from_str(r#"{"command":"migrate","workload":"redis","to":"node2"}"#).unwrap();
        assert_eq!(old, Request::Migrate { workload: "redis".into(), to: Some("node2".into()), mode: None });
        let new = Request::Migrate { workload: "redis".into(), to: None, mode: Some(MigrationMode::PostCopy) };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""mode":"post_copy""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), new);
    }

    use super::*;

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Reply {
            match request {
                Request::SetPrice { price_per_hour } => Reply::PriceSet { price_per_hour: price_per_hour.unwrap_or(0.0) },
                other => Reply::Error { message: format!("{other:?}") },
            }
        }
    }

    #[tokio::test]
    async fn round_trip_permissions_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ctl/control.sock");
        let missing = call(&socket, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(missing.to_string().contains("hotspot-node run"), "{missing}");
        let listener = bind(&socket).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&socket), Err(ControlError::InUse { .. })));
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(Echo), cancel.clone()));
        let s = socket.clone();
        let reply = tokio::task::spawn_blocking(move || {
            call(&s, &Request::SetPrice { price_per_hour: Some(0.25) }, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(reply, Reply::PriceSet { price_per_hour: 0.25 });
        // A raw client with a wrong version gets a clear error, not a hang.
        let s = socket.clone();
        let raw = tokio::task::spawn_blocking(move || {
            let mut c = std::os::unix::net::UnixStream::connect(&s).unwrap();
            c.write_all(b"{\"version\":99,\"command\":\"status\"}\n").unwrap();
            let mut out = String::new();
            BufReader::new(c).read_line(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(raw.contains("unsupported control protocol version"), "{raw}");
        cancel.cancel();
        server.await.unwrap();
    }
}
