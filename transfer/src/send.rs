//! The sending side: chunk an image directory, offer its manifest, stream what the receiver
//! wants over several data streams, re-send what it rejects, stop at `Complete`.
//!
//! Pipeline (every queue bounded): control reader -> wanted hashes -> producer (reads and
//! zstd-compresses batches in `spawn_blocking`, at most `streams` at once) -> frames -> one writer
//! task per data stream.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::manifest::{ChunkHash, ChunkRef, Compression, ImageManifest, TransferMessage};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::buffers::{BufferPool, Pooled};
use crate::chunker::{build_manifest, ChunkError, ChunkerConfig};
use crate::store::ManifestId;
use crate::tls;
use crate::framing::{self, FrameError};
use crate::wire::{self, MAX_CONTROL_FRAME};

#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Free-form label carried in the manifest (workload name, dump round).
    pub label: String,
    /// Parallel data streams.
    pub streams: usize,
    /// Uncompressed bytes per compressed batch.
    pub batch_bytes: usize,
    /// zstd level (1 is fastest; higher trades CPU for wire bytes).
    pub zstd_level: i32,
    pub chunker: ChunkerConfig,
    /// Fault injection for tests: flip a byte in the first N chunks sent (each only once), as a
    /// buggy or hostile sender would. The receiver must reject and re-fetch them.
    #[doc(hidden)]
    pub fault_corrupt_chunks: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions { label: String::new(), streams: 4, batch_bytes: 1024 * 1024, zstd_level: 1, chunker: ChunkerConfig::default(), fault_corrupt_chunks: 0 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SendProgress {
    pub image_bytes: u64,
    /// Bytes of the chunks the receiver asked for (grows when it asks again).
    pub wanted_bytes: u64,
    pub sent_bytes: u64,
    pub chunks_sent: u64,
}

#[derive(Debug, Clone)]
pub struct SendReport {
    pub manifest_id: ManifestId,
    pub files: usize,
    pub image_bytes: u64,
    pub distinct_chunks: usize,
    pub chunks_sent: u64,
    pub raw_bytes_sent: u64,
    pub compressed_bytes_sent: u64,
    pub rejected: u64,
    /// UDP payload bytes this connection sent (everything: handshake, manifest, chunks, acks).
    pub wire_bytes: u64,
    /// UDP payload bytes received from the receiver (wants, acks).
    pub wire_bytes_received: u64,
    /// Path MTU at the end and packets lost (diagnostics for slow links).
    pub path_mtu: u16,
    pub lost_packets: u64,
    pub chunking_time: Duration,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("connection to receiver lost: {0}")]
    Connection(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("receiver refused the transfer ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("receiver broke the protocol: {0}")]
    Protocol(String),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Where the sender reads each distinct chunk from.
struct Sources {
    files: Vec<(PathBuf, File)>,
    at: HashMap<ChunkHash, (u32, u64, u32)>,
}

impl Sources {
    fn open(dir: &Path, manifest: &ImageManifest) -> Result<Sources, SendError> {
        let mut files = Vec::new();
        let mut at = HashMap::with_capacity(manifest.files.iter().map(|f| f.chunks.len()).sum());
        for (i, f) in manifest.files.iter().enumerate() {
            let path = dir.join(&f.path);
            let file = File::open(&path).map_err(|source| SendError::Read { path: path.clone(), source })?;
            let mut offset = 0;
            for c in &f.chunks {
                at.entry(c.hash).or_insert((i as u32, offset, c.len));
                offset += c.len as u64;
            }
            files.push((path, file));
        }
        Ok(Sources { files, at })
    }
}

/// One batch ready to write: its framed header and its payload, handed to quinn without a copy.
struct Frame {
    parts: [Bytes; 2],
    chunks: u64,
    raw: u64,
}

#[derive(Default)]
struct Counters {
    chunks: AtomicU64,
    raw: AtomicU64,
    compressed: AtomicU64,
    corrupt_left: AtomicUsize,
}

fn task_err(e: tokio::task::JoinError) -> SendError {
    SendError::Task(e.to_string())
}

/// The receiver's reason when it closed the connection on purpose, else the transport error.
fn connection_error(e: quinn::ConnectionError) -> SendError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => SendError::Remote {
            code: ErrorCode::from_u16(close.error_code.into_inner().min(u16::MAX as u64) as u16),
            message: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        other => SendError::Connection(other.to_string()),
    }
}

/// Sends the image in `dir` to the receiver at `addr` over `endpoint` (see [`crate::endpoint::sender`]).
pub async fn send_dir(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    dir: &Path,
    opts: SendOptions,
    progress: Option<watch::Sender<SendProgress>>,
) -> Result<SendReport, SendError> {
    let start = Instant::now();
    let (d, label, cfg) = (dir.to_path_buf(), opts.label.clone(), opts.chunker.clone());
    let chunking = async {
        let manifest = tokio::task::spawn_blocking(move || build_manifest(&d, &label, &cfg)).await.map_err(task_err)??;
        Ok::<_, SendError>((manifest, start.elapsed()))
    };
    // The handshake runs while the image is hashed (it needs no manifest).
    let connect = |detail: String| SendError::Connect { addr, detail };
    let connecting = async { endpoint.connect(addr, tls::SERVER_NAME).map_err(|e| connect(e.to_string()))?.await.map_err(|e| connect(e.to_string())) };
    let ((manifest, chunking_time), conn) = tokio::try_join!(chunking, connecting)?;
    let manifest_id = ManifestId::of(&manifest);
    let image_bytes = manifest.total_bytes();
    let sources = Arc::new(Sources::open(dir, &manifest)?);
    tracing::info!(manifest = %manifest_id, files = manifest.files.len(), bytes = image_bytes, chunks = sources.at.len(), ms = chunking_time.as_millis() as u64, "image chunked");
    if let Some(p) = &progress {
        p.send_modify(|p| p.image_bytes = image_bytes);
    }

    let peer = tls::peer_node_id(&conn).map(|p| p.short()).unwrap_or_default();
    let span = tracing::info_span!("send", %peer, manifest = %manifest_id);
    let counters = Arc::new(Counters { corrupt_left: AtomicUsize::new(opts.fault_corrupt_chunks), ..Default::default() });
    let result = run(&conn, manifest, sources.clone(), &opts, counters.clone(), progress).instrument(span).await;
    let stats = conn.stats();
    tracing::debug!(path = ?stats.path, "connection path");
    let report = SendReport {
        manifest_id,
        files: sources.files.len(),
        image_bytes,
        distinct_chunks: sources.at.len(),
        chunks_sent: counters.chunks.load(Ordering::Relaxed),
        raw_bytes_sent: counters.raw.load(Ordering::Relaxed),
        compressed_bytes_sent: counters.compressed.load(Ordering::Relaxed),
        rejected: 0,
        wire_bytes: stats.udp_tx.bytes,
        wire_bytes_received: stats.udp_rx.bytes,
        path_mtu: stats.path.current_mtu,
        lost_packets: stats.path.lost_packets,
        chunking_time,
        elapsed: start.elapsed(),
    };
    match result {
        Ok(rejected) => {
            conn.close(0u32.into(), b"done");
            Ok(SendReport { rejected, ..report })
        }
        Err(e) => {
            conn.close(ErrorCode::Internal.as_u16().into(), b"sender failed");
            Err(e)
        }
    }
}

/// Drives one transfer on `conn`; returns how many chunks the receiver rejected.
async fn run(
    conn: &quinn::Connection,
    manifest: ImageManifest,
    sources: Arc<Sources>,
    opts: &SendOptions,
    counters: Arc<Counters>,
    progress: Option<watch::Sender<SendProgress>>,
) -> Result<u64, SendError> {
    let (mut ctl_tx, mut ctl_rx) = conn.open_bi().await.map_err(connection_error)?;
    let transfer_id = wire::TransferId::random().map_err(|e| SendError::Task(e.to_string()))?;
    let offer = tokio::task::spawn_blocking(move || wire::compressed_offer(transfer_id, &manifest)).await.map_err(task_err)??;
    if let Err(e) = framing::write_frame(&mut ctl_tx, &offer).await {
        return Err(match e {
            FrameError::Io(_) => connection_error(conn.closed().await),
            other => other.into(),
        });
    }

    let streams = opts.streams.clamp(1, 16);
    let (want_tx, want_rx) = mpsc::channel::<Vec<ChunkHash>>(1024);
    let (frame_tx, frame_rx) = mpsc::channel::<Frame>(streams * 2);
    let mut tasks = JoinSet::new();
    let producer_opts = (opts.batch_bytes.max(64 * 1024), opts.zstd_level);
    tasks.spawn(produce(want_rx, frame_tx, sources.clone(), producer_opts, counters.clone()).in_current_span());
    let frame_rx = Arc::new(tokio::sync::Mutex::new(frame_rx));
    for _ in 0..streams {
        tasks.spawn(write_stream(conn.clone(), frame_rx.clone(), counters.clone(), progress.clone()).in_current_span());
    }

    let mut rejected = 0u64;
    loop {
        tokio::select! {
            msg = framing::read_frame(&mut ctl_rx, MAX_CONTROL_FRAME) => match msg {
                Ok(Some(TransferMessage::Want { missing })) => {
                    let mut bytes = 0u64;
                    for h in &missing {
                        let (_, _, len) = sources.at.get(h).ok_or_else(|| SendError::Protocol(format!("asked for unknown chunk {h}")))?;
                        bytes += *len as u64;
                    }
                    tracing::debug!(chunks = missing.len(), bytes, "receiver wants");
                    if let Some(p) = &progress {
                        p.send_modify(|p| p.wanted_bytes += bytes);
                    }
                    if want_tx.send(missing).await.is_err() {
                        return Err(SendError::Task("producer stopped".into()));
                    }
                }
                Ok(Some(TransferMessage::Rejected { hash, reason })) => {
                    tracing::warn!(chunk = %hash, %reason, "receiver rejected a chunk; sending it again");
                    rejected += 1;
                    let len = sources.at.get(&hash).map(|s| s.2 as u64).ok_or_else(|| SendError::Protocol(format!("rejected unknown chunk {hash}")))?;
                    if let Some(p) = &progress {
                        p.send_modify(|p| p.wanted_bytes += len);
                    }
                    let _ = want_tx.send(vec![hash]).await;
                }
                Ok(Some(TransferMessage::Complete { files, bytes })) => {
                    tracing::info!(files, bytes, "receiver rebuilt the image");
                    drop(want_tx);
                    while let Some(r) = tasks.join_next().await {
                        r.map_err(task_err)??;
                    }
                    return Ok(rejected);
                }
                Ok(Some(TransferMessage::Error(e))) => return Err(SendError::Remote { code: e.code, message: e.message }),
                Ok(Some(other)) => return Err(SendError::Protocol(format!("unexpected message {other:?}"))),
                Ok(None) => return Err(SendError::Protocol("receiver closed the control stream early".into())),
                Err(FrameError::Io(_)) => return Err(conn.closed().await).map_err(connection_error),
                Err(e) => return Err(e.into()),
            },
            Some(done) = tasks.join_next() => {
                done.map_err(task_err)??;
            }
        }
    }
}

async fn produce(
    mut want_rx: mpsc::Receiver<Vec<ChunkHash>>,
    frame_tx: mpsc::Sender<Frame>,
    sources: Arc<Sources>,
    (batch_bytes, level): (usize, i32),
    counters: Arc<Counters>,
) -> Result<(), SendError> {
    let permits = Arc::new(Semaphore::new(frame_tx.max_capacity()));
    let mut jobs = JoinSet::new();
    while let Some(mut hashes) = want_rx.recv().await {
        // Read in file order: sequential I/O, and neighbouring pages compress together. (Cached
        // key: one map lookup per chunk, not two per comparison.)
        hashes.sort_by_cached_key(|h| sources.at.get(h).map(|s| (s.0, s.1)));
        let mut batch: Vec<ChunkRef> = Vec::new();
        let mut bytes = 0usize;
        let n = hashes.len();
        for (i, h) in hashes.into_iter().enumerate() {
            let len = sources.at[&h].2;
            batch.push(ChunkRef { hash: h, len });
            bytes += len as usize;
            if bytes >= batch_bytes || batch.len() >= 1024 || i + 1 == n {
                let chunks = std::mem::take(&mut batch);
                bytes = 0;
                let permit = permits.clone().acquire_owned().await.map_err(|e| SendError::Task(e.to_string()))?;
                let (sources, counters, tx) = (sources.clone(), counters.clone(), frame_tx.clone());
                jobs.spawn(async move {
                    let frame = tokio::task::spawn_blocking(move || build_frame(&sources, chunks, level, &counters)).await.map_err(task_err)??;
                    // The permit covers the frame until a stream writer took it: a slow network
                    // must stop the reading, not pile up built frames.
                    let sent = tx.send(frame).await.map_err(|_| SendError::Task("stream writers stopped".into()));
                    drop(permit);
                    sent
                });
            }
            while let Some(done) = jobs.try_join_next() {
                done.map_err(task_err)??;
            }
        }
    }
    while let Some(done) = jobs.join_next().await {
        done.map_err(task_err)??;
    }
    Ok(())
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
}

/// Batch buffers of the sender: read buffers and compressed payloads (a payload stays with
/// quinn until the receiver acknowledged it, then comes back here).
static SEND_BUFFERS: BufferPool = BufferPool::new(16);

/// Reads and compresses one batch (blocking: runs on the blocking pool).
fn build_frame(sources: &Sources, chunks: Vec<ChunkRef>, level: i32, counters: &Counters) -> Result<Frame, SendError> {
    let raw_len: usize = chunks.iter().map(|c| c.len as usize).sum();
    let mut raw = SEND_BUFFERS.take(raw_len);
    // Chunks adjacent in the same file are read with one pread (a batch is mostly one run).
    let mut at = 0;
    let mut i = 0;
    while i < chunks.len() {
        let (file, offset, len) = sources.at[&chunks[i].hash];
        let mut run = len as usize;
        let mut j = i + 1;
        while let Some(&(f2, o2, l2)) = chunks.get(j).map(|c| &sources.at[&c.hash]) {
            if f2 != file || o2 != offset + run as u64 {
                break;
            }
            run += l2 as usize;
            j += 1;
        }
        let (path, f) = &sources.files[file as usize];
        f.read_exact_at(&mut raw[at..at + run], offset).map_err(|source| SendError::Read { path: path.clone(), source })?;
        at += run;
        i = j;
    }
    let mut at = 0;
    for c in &chunks {
        if counters.corrupt_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            raw[at] ^= 0x5a;
        }
        at += c.len as usize;
    }
    let mut packed = SEND_BUFFERS.take_empty(zstd::zstd_safe::compress_bound(raw_len));
    let compressed = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        cell.as_mut().expect("just set").1.compress_to_buffer(&raw, &mut packed)
    });
    let (compression, payload) = match compressed {
        Ok(n) if n < raw.len() => {
            SEND_BUFFERS.give(raw);
            (Compression::Zstd, packed)
        }
        _ => {
            SEND_BUFFERS.give(packed);
            (Compression::None, raw)
        }
    };
    let header = TransferMessage::ChunkBatch { chunks, compressed_len: payload.len() as u32, compression };
    let mut head = Vec::new();
    framing::frame_into(&mut head, &header)?;
    let n = match &header {
        TransferMessage::ChunkBatch { chunks, .. } => chunks.len() as u64,
        _ => 0,
    };
    counters.compressed.fetch_add(payload.len() as u64, Ordering::Relaxed);
    let payload = Bytes::from_owner(Pooled { buf: payload, pool: &SEND_BUFFERS });
    Ok(Frame { parts: [Bytes::from(head), payload], chunks: n, raw: raw_len as u64 })
}

async fn write_stream(
    conn: quinn::Connection,
    frames: Arc<tokio::sync::Mutex<mpsc::Receiver<Frame>>>,
    counters: Arc<Counters>,
    progress: Option<watch::Sender<SendProgress>>,
) -> Result<(), SendError> {
    let mut stream = None;
    loop {
        let Some(frame) = frames.lock().await.recv().await else { break };
        if stream.is_none() {
            stream = Some(conn.open_uni().await.map_err(connection_error)?);
        }
        let s = stream.as_mut().expect("opened above");
        let mut parts = frame.parts;
        if s.write_all_chunks(&mut parts).await.is_err() {
            return Err(connection_error(conn.closed().await));
        }
        counters.chunks.fetch_add(frame.chunks, Ordering::Relaxed);
        counters.raw.fetch_add(frame.raw, Ordering::Relaxed);
        if let Some(p) = &progress {
            p.send_modify(|p| {
                p.sent_bytes += frame.raw;
                p.chunks_sent += frame.chunks;
            });
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
    }
    Ok(())
}
