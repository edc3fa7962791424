//! What the migration's parts report when they fail, one enum per trait, and [`StepError`], the
//! cause a [`super::MigrateError`] carries: which part broke and how, so a caller can tell a
//! refused offer from a lost connection, a CRIU failure from a provider's.
//!
//! Errors of the layers below (CRIU, workloads, the transfer crate) are kept whole (`#[from]`).
//! Providers live above this module: they hand their own errors over as the `source` of a
//! `Provider` variant ([`MoveError::Provider`], [`RestoreError::Provider`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::migration::MigrationMessage;
use hotspot_transfer::endpoint::EndpointError;
use hotspot_transfer::framing::FrameError;
use hotspot_transfer::SendError;

use super::journal::JournalError;
use crate::criu::CriuError;
use crate::mesh::MeshError;
use crate::sys::netns::NetError;
use crate::workload::WorkloadError;

/// A provider's own error, handed over whole (its type lives above this module).
pub type ProviderSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its causes on one line: quinn says only "connection lost" and keeps the reason
/// (timed out, closed by the peer with a code, handshake refused) in the source chain.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// A frame's I/O error is the stream's (with its causes); the others are the peer's doing.
fn frame_text(e: &FrameError) -> String {
    match e {
        FrameError::Io(io) => format!("migration control stream: {}", Chain(io)),
        other => other.to_string(),
    }
}

/// A failure of the [`super::Checkpointer`]: CRIU dumps, local restores, post-copy's lazy dump.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Bringing the service interface of a resumed workload back up.
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, #[source] source: std::io::Error },
    #[error(transparent)]
    LazyPages(#[from] LazyPagesError),
    /// This checkpointer cannot do `what` at all.
    #[error("{what} is not supported by this part: {reason}")]
    Unsupported { what: &'static str, reason: &'static str },
    /// The blocking worker running CRIU panicked or was cancelled.
    #[error("worker task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl CheckpointError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CheckpointError {
        let path = path.into();
        move |source| CheckpointError::Io { op, path, source }
    }
}

/// Post-copy's own failures: the lazy dump's page relay and stream, and the resume of a frozen
/// tree on rollback.
#[derive(Debug, thiserror::Error)]
pub enum LazyPagesError {
    #[error("{workload} has no PID")]
    NoPid { workload: String },
    #[error("finding a free page-server port in {netns}: {source}")]
    Port { netns: PathBuf, #[source] source: std::io::Error },
    #[error("page relay on {ip}: {source}")]
    Relay { ip: IpAddr, #[source] source: std::io::Error },
    /// The relay failed to start and the frozen workload could not be resumed either.
    #[error("{cause}; resuming the workload failed too: {resume}")]
    ResumeFailed { cause: Box<LazyPagesError>, resume: Box<CheckpointError> },
    /// The page relay broke or timed out while the target fetched pages.
    #[error(transparent)]
    Stream(std::io::Error),
    #[error("no post-copy dump of {workload} in flight")]
    NotInFlight { workload: String },
    #[error("the target's lazy-pages daemon went away after {served_bytes} bytes, before every page was fetched")]
    Incomplete { served_bytes: u64 },
    /// A rollback came too late: the target already has every page.
    #[error("the page stream had already completed: the source tree is gone")]
    AlreadyStreamed,
    #[error("{dir}: no lazy-dump marker")]
    NoMarker { dir: PathBuf },
    #[error("the frozen workload (pid {pid}) is gone; its memory cannot be recovered")]
    TreeGone { pid: i32 },
    #[error("{dir}: not a post-copy image (its memory is in the directory)")]
    NotLazyImage { dir: PathBuf },
    #[error("starting the page-stream watcher: {0}")]
    Watcher(#[source] std::io::Error),
}

/// A failure of the [`super::TargetLink`]: the connection, the target's answers, the image.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The control connection's TLS configuration could not be made.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, #[source] source: quinn::ConnectError },
    #[error("connecting to {addr}: {source}")]
    Handshake { addr: SocketAddr, #[source] source: quinn::ConnectionError },
    #[error("migration control stream: {}", Chain(.0))]
    Stream(#[source] quinn::ConnectionError),
    #[error("{}", frame_text(.0))]
    Frame(#[from] FrameError),
    #[error("migration control stream: stream ended before a message")]
    Closed,
    /// The target said no (or tried and failed: [`ErrorCode::RestoreFailed`]).
    #[error("target refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// The target answered something that is no answer to the request.
    #[error("target answered the {request} request with {answer:?}")]
    Unexpected { request: &'static str, answer: Box<MigrationMessage> },
    #[error("{request} request timed out after {after:?}")]
    Timeout { request: &'static str, after: Duration },
    /// Shipping an image failed.
    #[error(transparent)]
    Transfer(#[from] SendError),
    /// Giving the reservation back through the mesh failed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("{what} is not supported by this part: {reason}")]
    Unsupported { what: &'static str, reason: &'static str },
}

/// A failure of the [`super::ResourceMover`] (volume and service address).
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The provider's own error (cloud API, cluster directory, LAN), as it reported it.
    #[error("{provider} provider, {op}: {source}")]
    Provider { provider: &'static str, op: &'static str, #[source] source: ProviderSource },
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// This provider cannot do `what` at all.
    #[error("{what} is not supported by this provider: {reason}")]
    Unsupported { what: &'static str, reason: &'static str },
    /// The blocking worker of a move panicked or was cancelled.
    #[error("resource move task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl MoveError {
    /// Wraps a provider's error: `.map_err(MoveError::provider("ec2", "detaching"))`.
    pub fn provider<E: std::error::Error + Send + Sync + 'static>(provider: &'static str, op: &'static str) -> impl FnOnce(E) -> MoveError {
        move |e| MoveError::Provider { provider, op, source: Box::new(e) }
    }
}

/// A failure of the target's [`super::target::Restorer`].
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// CRIU or the workload layer failed (the plain restore of this host).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The provider could not prepare this host for the workload (volume, interface).
    #[error("{provider} provider, {op}: {source}")]
    Provider { provider: &'static str, op: &'static str, #[source] source: ProviderSource },
    #[error("{what} is not supported on this node: {reason}")]
    Unsupported { what: &'static str, reason: &'static str },
    #[error("restore task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

impl RestoreError {
    /// Wraps a provider's error: `.map_err(RestoreError::provider("lan", "preparing"))`.
    pub fn provider<E: std::error::Error + Send + Sync + 'static>(provider: &'static str, op: &'static str) -> impl FnOnce(E) -> RestoreError {
        move |e| RestoreError::Provider { provider, op, source: Box::new(e) }
    }
}

/// Why a step of a migration failed: the cause inside [`super::MigrateError`].
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Move(#[from] MoveError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Preparing the local image directory of a dump.
    #[error("{op} {path}: {source}")]
    Images { op: &'static str, path: PathBuf, #[source] source: std::io::Error },
    /// The migration was cancelled before the freeze.
    #[error("cancelled")]
    Cancelled,
    /// The restore request failed and the status query that should have told why failed too.
    #[error("{restore}; status query: {status}")]
    StatusUnknown { restore: Box<LinkError>, status: Box<LinkError> },
    /// A restarted source found no image directory in the journal to restore from.
    #[error("no image directory journaled")]
    NoImageDir,
    #[error("target does not answer")]
    TargetSilent,
    /// No rollback was tried (recovery is the rollback; its failure is the cause).
    #[error("not attempted")]
    NotAttempted,
}
