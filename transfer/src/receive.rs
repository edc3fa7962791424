//! The receiving side: accept trusted senders, register the offered manifest in the store,
//! ask for the chunks it lacks, verify and store each one as it arrives (writing it straight
//! into the image being rebuilt), ask again for any that failed, then finish the image from the
//! store and answer `Complete`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotspot_protocol::error::ErrorCode;
use hotspot_protocol::manifest::{max_compressed_len, ChunkHash, Compression, ImageManifest, TransferMessage};
use hotspot_protocol::NodeId;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::buffers::BufferPool;
use crate::rebuild::{ImageWriter, RebuildError};
use crate::store::{ManifestId, Store, StoreError};
use crate::tls;
use crate::framing::{self, FrameError};
use crate::wire::{self, MAX_CONTROL_FRAME, MAX_DATA_HEADER};

/// Largest payload of one batch on the wire.
const MAX_BATCH_WIRE: usize = 2 * TransferMessage::MAX_BATCH_BYTES as usize;

/// Finds, for a transfer's label, an earlier image on this node to rebuild the new one on top of
/// (see [`crate::parent`]): its directory and manifest id. Asked once every wanted chunk is in.
#[derive(Clone)]
pub struct ParentLookup(pub Arc<dyn Fn(&str) -> Option<(PathBuf, ManifestId)> + Send + Sync>);

impl std::fmt::Debug for ParentLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParentLookup(..)")
    }
}

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Rebuilt images go to `<images_dir>/<manifest id>`.
    pub images_dir: PathBuf,
    /// Most compressed bytes read off the network and not yet verified, across all streams.
    pub max_inflight_bytes: usize,
    /// fsync rebuilt image files before reporting `Complete`.
    pub sync: bool,
    /// Most hashes per `Want` message.
    pub want_piece: usize,
    /// Rebuild images that have an earlier image here as CRIU incremental images on it.
    pub parent: Option<ParentLookup>,
}

impl ReceiveOptions {
    pub fn new(images_dir: PathBuf) -> Self {
        ReceiveOptions { images_dir, max_inflight_bytes: 64 * 1024 * 1024, sync: true, want_piece: 65_536, parent: None }
    }
}

/// One finished (or failed) incoming transfer.
#[derive(Debug)]
pub struct Received {
    pub peer: NodeId,
    pub manifest_id: ManifestId,
    pub label: String,
    pub path: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub chunks_received: u64,
    pub bytes_received: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("handshake with {addr} failed (untrusted or incompatible peer): {detail}")]
    Handshake { addr: std::net::SocketAddr, detail: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("sender broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ReceiveError {
    fn code(&self) -> ErrorCode {
        match self {
            ReceiveError::Store(StoreError::DiskFull { .. }) | ReceiveError::Rebuild(RebuildError::DiskFull { .. }) => ErrorCode::DiskFull,
            ReceiveError::Frame(_) | ReceiveError::Protocol(_) => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }
}

fn task_err(e: tokio::task::JoinError) -> ReceiveError {
    ReceiveError::Task(e.to_string())
}

/// Accepts transfers until `shutdown`; each finished transfer is reported on `done` (bounded:
/// a slow consumer slows acceptance, it never grows a queue).
pub async fn serve(
    endpoint: quinn::Endpoint,
    store: Arc<Store>,
    opts: ReceiveOptions,
    done: mpsc::Sender<Result<Received, ReceiveError>>,
    shutdown: CancellationToken,
) {
    serve_dispatch(endpoint, store, opts, done, None, shutdown).await
}

/// [`serve`], handing connections that negotiated another ALPN than image transfer (migration
/// control) to `others` instead of refusing them.
pub async fn serve_dispatch(
    endpoint: quinn::Endpoint,
    store: Arc<Store>,
    opts: ReceiveOptions,
    done: mpsc::Sender<Result<Received, ReceiveError>>,
    others: Option<mpsc::Sender<quinn::Connection>>,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let limit = Arc::new(Semaphore::new(8));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let Ok(permit) = limit.clone().acquire_owned().await else { break };
                let (store, opts, done, shutdown, others) = (store.clone(), opts.clone(), done.clone(), shutdown.clone(), others.clone());
                conns.spawn(async move {
                    let addr = incoming.remote_address();
                    let result = match incoming.await {
                        Ok(conn) if tls::negotiated_alpn(&conn).as_deref() != Some(hotspot_protocol::ids::TRANSFER_ALPN) => {
                            drop(permit);
                            match others {
                                Some(others) => { let _ = others.send(conn).await; }
                                None => conn.close(ErrorCode::BadRequest.as_u16().into(), b"unsupported protocol"),
                            }
                            return;
                        }
                        Ok(conn) => tokio::select! {
                            r = receive_one(conn.clone(), store, opts) => r,
                            _ = shutdown.cancelled() => { conn.close(ErrorCode::Busy.as_u16().into(), b"receiver shutting down"); return; }
                        },
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "refused connection");
                            Err(ReceiveError::Handshake { addr, detail: e.to_string() })
                        }
                    };
                    drop(permit);
                    let _ = done.send(result).await;
                });
            }
        }
    }
    endpoint.close(0u32.into(), b"shutdown");
    conns.shutdown().await;
}

/// Events from the data streams to the transfer's control loop.
enum DataEvent {
    Stored { hashes: Vec<ChunkHash>, bytes: u64 },
    Rejected { hash: ChunkHash, reason: String },
    Failed(ReceiveError),
}

/// Runs one transfer on an established connection.
pub async fn receive_one(conn: quinn::Connection, store: Arc<Store>, opts: ReceiveOptions) -> Result<Received, ReceiveError> {
    let peer = tls::peer_node_id(&conn).ok_or_else(|| ReceiveError::Protocol("peer has no node key".into()))?;
    let span = tracing::info_span!("receive", peer = %peer.short(), remote = %conn.remote_address());
    let (mut ctl_tx, mut ctl_rx) = conn.accept_bi().instrument(span.clone()).await?;
    let result = run(&conn, peer, &mut ctl_tx, &mut ctl_rx, store.clone(), opts).instrument(span.clone()).await;
    if result.is_err() {
        // Index what arrived, so a resumed transfer only sends what is still missing.
        let st = store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.commit_pending()).await {
            span.in_scope(|| tracing::warn!(error = %e, "could not index the chunks stored before the failure"));
        }
    }
    match &result {
        Ok(_) => {
            // Let the sender read `Complete` and close first; don't hang on a vanished peer.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::warn!(error = %msg, "transfer failed");
            let _ = tokio::time::timeout(Duration::from_secs(1), framing::write_frame(&mut ctl_tx, &wire::error_msg(e.code(), &msg))).await;
            let _ = ctl_tx.finish();
            // As on success, the sender closes first once it read why: a close of ours could
            // reach it only as a stateless reset ("reset by peer") while its data is still in
            // flight, and the reason (disk full, corrupt chunk...) would be lost.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(e.code().as_u16().into(), msg.as_bytes());
        }
    }
    result
}

async fn run(
    conn: &quinn::Connection,
    peer: NodeId,
    ctl_tx: &mut quinn::SendStream,
    ctl_rx: &mut quinn::RecvStream,
    store: Arc<Store>,
    opts: ReceiveOptions,
) -> Result<Received, ReceiveError> {
    let start = Instant::now();
    let offer = framing::read_frame(ctl_rx, MAX_CONTROL_FRAME).await?.ok_or_else(|| ReceiveError::Protocol("no offer before end of stream".into()))?;
    let manifest = tokio::task::spawn_blocking(move || wire::offered_manifest(offer)).await.map_err(task_err)??;
    tracing::debug!(ms = start.elapsed().as_millis() as u64, "offer read");
    let (files, bytes, label) = (manifest.files.len(), manifest.total_bytes(), manifest.label.clone());
    let manifest = Arc::new(manifest);
    let (st, m, images) = (store.clone(), manifest.clone(), opts.images_dir.clone());
    // Registering (index writes) and laying out the image files are independent: one core each.
    let (registered, writer) = tokio::task::spawn_blocking(move || {
        let id = ManifestId::of(&m);
        std::thread::scope(|s| {
            let writer = s.spawn(|| ImageWriter::create(&m, &images.join(id.to_string())));
            let registered = st.register_as(&m, id);
            (registered, writer.join().unwrap_or_else(|_| Err(RebuildError::Io { path: images.clone(), source: std::io::Error::other("image layout thread panicked") })))
        })
    })
    .await
    .map_err(task_err)?;
    let (manifest_id, missing) = registered?;
    let writer = Arc::new(writer?);
    let dest = opts.images_dir.join(manifest_id.to_string());
    let _discard = DiscardOnDrop(writer.clone());
    tracing::info!(manifest = %manifest_id, files, bytes, missing = missing.len(), ms = start.elapsed().as_millis() as u64, "offer registered");

    let mut outstanding: HashSet<ChunkHash> = missing.iter().copied().collect();
    let expected = Arc::new(std::sync::Mutex::new(outstanding.clone()));
    for piece in missing.chunks(opts.want_piece.max(1)) {
        framing::write_frame(ctl_tx, &TransferMessage::Want { missing: piece.to_vec() }).await?;
    }

    let (events_tx, mut events) = mpsc::channel::<DataEvent>(256);
    let inflight_cap = opts.max_inflight_bytes.clamp(MAX_BATCH_WIRE, u32::MAX as usize);
    let data_task = DataStreams { conn: conn.clone(), store: store.clone(), writer: writer.clone(), expected: expected.clone(), events: events_tx, inflight: Arc::new(Semaphore::new(inflight_cap)), inflight_cap, verifiers: Arc::new(Semaphore::new(verifiers())) };
    let data_task = tokio::spawn(data_task.run().in_current_span());
    let data_guard = AbortOnDrop(data_task);

    let (mut chunks_received, mut bytes_received, mut rejected) = (0u64, 0u64, 0u64);
    // Tried once: a failed incremental rebuild falls back to the full one, which may loop to
    // fetch chunks the store lost.
    let (mut incremental, mut tried_parent) = (None, false);
    loop {
        while !outstanding.is_empty() {
            match events.recv().await {
                Some(DataEvent::Stored { hashes, bytes }) => {
                    chunks_received += hashes.len() as u64;
                    bytes_received += bytes;
                    hashes.iter().for_each(|h| {
                        outstanding.remove(h);
                    });
                }
                Some(DataEvent::Rejected { hash, reason }) => {
                    rejected += 1;
                    tracing::warn!(chunk = %hash, %reason, "chunk failed verification; asking again");
                    framing::write_frame(ctl_tx, &TransferMessage::Rejected { hash, reason }).await?;
                }
                Some(DataEvent::Failed(e)) => return Err(e),
                None => return Err(ReceiveError::Connection(conn.closed().await)),
            }
        }
        tracing::debug!(ms = start.elapsed().as_millis() as u64, "all wanted chunks stored");
        if !tried_parent {
            tried_parent = true;
            incremental = on_parent(&opts, &label, &store, &manifest, &dest).await;
            if incremental.is_some() {
                break;
            }
        }
        // Everything asked for is stored: fill the rest of the image from the store.
        let (w, st) = (writer.clone(), store.clone());
        match tokio::task::spawn_blocking(move || w.fill_from_store(&st)).await.map_err(task_err)? {
            Ok(()) => break,
            Err(RebuildError::Missing(again)) => {
                tracing::warn!(chunks = again.len(), "stored chunks failed verification; fetching them again");
                expected.lock().unwrap_or_else(|e| e.into_inner()).extend(again.iter().copied());
                outstanding.extend(again.iter().copied());
                framing::write_frame(ctl_tx, &TransferMessage::Want { missing: again }).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(data_guard); // every chunk asked for is in: stop accepting data
    let (st, sync) = (store.clone(), opts.sync);
    let path = tokio::task::spawn_blocking(move || -> Result<PathBuf, ReceiveError> {
        let path = match incremental {
            Some(built) => {
                writer.discard();
                if dest.exists() {
                    std::fs::remove_dir_all(&dest).map_err(|e| crate::rebuild::io_err(&dest, e))?;
                }
                std::fs::rename(&built, &dest).map_err(|e| crate::rebuild::io_err(&dest, e))?;
                dest
            }
            None => writer.commit(sync)?,
        };
        st.mark_complete(&manifest_id)?;
        Ok(path)
    })
    .await
    .map_err(task_err)??;
    framing::write_frame(ctl_tx, &TransferMessage::Complete { files: files as u32, bytes }).await?;
    let _ = ctl_tx.finish();
    let elapsed = start.elapsed();
    tracing::info!(path = %path.display(), chunks_received, bytes_received, rejected, ms = elapsed.as_millis() as u64, "image received");
    Ok(Received { peer, manifest_id, label, path, files, bytes, chunks_received, bytes_received, rejected, elapsed })
}

/// Builds the image as an incremental image on its parent (see [`crate::parent`]) next to
/// `dest`, when [`ReceiveOptions::parent`] names one. Any failure only costs the full rebuild,
/// which follows (and fetches again what the store lost), so it is logged, not returned.
async fn on_parent(opts: &ReceiveOptions, label: &str, store: &Arc<Store>, manifest: &Arc<ImageManifest>, dest: &Path) -> Option<PathBuf> {
    let (parent, parent_id) = (opts.parent.as_ref()?.0)(label)?;
    let (st, m, sync) = (store.clone(), manifest.clone(), opts.sync);
    let mut name = dest.file_name()?.to_os_string();
    name.push(".incremental");
    let at = dest.with_file_name(name);
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || -> Result<Option<crate::parent::ParentRebuild>, ReceiveError> {
        // Chunks of this transfer become readable from the store once their group is committed.
        st.commit_pending()?;
        let parent_manifest = st.manifest(&parent_id)?.ok_or(StoreError::UnknownManifest(parent_id))?;
        Ok(crate::parent::rebuild_on_parent(&st, &m, &parent, &parent_manifest, &at, sync)?)
    })
    .await;
    match built {
        Ok(Ok(Some(r))) => {
            tracing::info!(parent = %parent_id, parent_bytes = r.parent_bytes, written_bytes = r.written_bytes, ms = started.elapsed().as_millis() as u64, "image rebuilt on its parent");
            Some(r.path)
        }
        Ok(Ok(None)) => {
            tracing::debug!(parent = %parent_id, "parent shares no pages; full rebuild");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(parent = %parent_id, error = %e, "incremental rebuild failed; rebuilding in full");
            None
        }
        Err(e) => {
            tracing::warn!(parent = %parent_id, error = %e, "incremental rebuild task failed; rebuilding in full");
            None
        }
    }
}

/// Removes a failed transfer's partial image as soon as the transfer returns.
struct DiscardOnDrop(Arc<ImageWriter>);

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        self.0.discard();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts the sender's data streams and verifies, stores and places every chunk they carry.
struct DataStreams {
    conn: quinn::Connection,
    store: Arc<Store>,
    writer: Arc<ImageWriter>,
    /// Chunks this receiver asked for and has not stored yet: anything else is refused.
    expected: Arc<std::sync::Mutex<HashSet<ChunkHash>>>,
    events: mpsc::Sender<DataEvent>,
    inflight: Arc<Semaphore>,
    inflight_cap: usize,
    /// Batches verified at once: a few per core keeps every core busy; more only adds blocking
    /// threads (each with its own zstd context and allocator arena) fighting for the same cores.
    verifiers: Arc<Semaphore>,
}

fn verifiers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

impl DataStreams {
    async fn run(self) {
        let me = Arc::new(self);
        let mut streams = JoinSet::new();
        loop {
            let stream = tokio::select! {
                s = me.conn.accept_uni() => s,
                Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            };
            match stream {
                Ok(recv) => {
                    let me = me.clone();
                    streams.spawn(async move {
                        if let Err(e) = me.read_stream(recv).await {
                            let _ = me.events.send(DataEvent::Failed(e)).await;
                        }
                    });
                }
                Err(_) => break, // connection gone: the control loop sees the channel close
            }
        }
        streams.shutdown().await;
    }

    /// Reads batches off one stream and hands each to the blocking pool without waiting for
    /// it: the next batch is read while the last is verified and written (the in-flight
    /// semaphore bounds how much is outstanding).
    async fn read_stream(self: &Arc<Self>, mut recv: quinn::RecvStream) -> Result<(), ReceiveError> {
        let mut verifying = JoinSet::new();
        while let Some(msg) = framing::read_frame(&mut recv, MAX_DATA_HEADER).await? {
            let TransferMessage::ChunkBatch { chunks, compressed_len, compression } = msg else {
                return Err(ReceiveError::Protocol(format!("expected a chunk batch on a data stream, got {msg:?}")));
            };
            {
                let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = chunks.iter().find(|c| !expected.contains(&c.hash)) {
                    return Err(ReceiveError::Protocol(format!("sent chunk {} that was not asked for", c.hash)));
                }
            }
            let raw_len: u32 = chunks.iter().map(|c| c.len).sum();
            let permit = self.inflight.clone().acquire_many_owned((compressed_len as usize).min(self.inflight_cap) as u32).await;
            let permit = permit.map_err(|e| ReceiveError::Task(e.to_string()))?;
            let mut payload = RECV_BUFFERS.take(compressed_len as usize);
            AsyncReadExt::read_exact(&mut recv, &mut payload).await.map_err(FrameError::Io)?;
            let me = self.clone();
            verifying.spawn(async move {
                let (store, writer) = (me.store.clone(), me.writer.clone());
                let slot = me.verifiers.clone().acquire_owned().await.map_err(|e| ReceiveError::Task(e.to_string()))?;
                let outcome = tokio::task::spawn_blocking(move || {
                    let _permits = (permit, slot);
                    let outcome = verify_and_store(&store, &writer, &chunks, raw_len, compression, &payload);
                    RECV_BUFFERS.give(payload);
                    outcome
                })
                .await
                .map_err(task_err)??;
                me.report(outcome).await;
                Ok::<(), ReceiveError>(())
            });
            while let Some(done) = verifying.try_join_next() {
                done.map_err(task_err)??;
            }
        }
        while let Some(done) = verifying.join_next().await {
            done.map_err(task_err)??;
        }
        Ok(())
    }

    async fn report(&self, outcome: BatchOutcome) {
        for (hash, reason) in outcome.rejected {
            let _ = self.events.send(DataEvent::Rejected { hash, reason }).await;
        }
        if !outcome.stored.is_empty() {
            let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
            outcome.stored.iter().for_each(|h| {
                expected.remove(h);
            });
        }
        let _ = self.events.send(DataEvent::Stored { hashes: outcome.stored, bytes: outcome.bytes }).await;
    }
}

struct BatchOutcome {
    stored: Vec<ChunkHash>,
    bytes: u64,
    rejected: Vec<(ChunkHash, String)>,
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Batch buffers of the receiver (payloads read off the network, decompressed batches).
static RECV_BUFFERS: BufferPool = BufferPool::new(16);

/// Decompresses a batch, checks every chunk's blake3, stores the good ones and writes them
/// into the image. Runs on the blocking pool.
fn verify_and_store(
    store: &Store,
    writer: &ImageWriter,
    chunks: &[hotspot_protocol::manifest::ChunkRef],
    raw_len: u32,
    compression: Compression,
    payload: &[u8],
) -> Result<BatchOutcome, ReceiveError> {
    let reject_all = |why: String| BatchOutcome { stored: vec![], bytes: 0, rejected: chunks.iter().map(|c| (c.hash, why.clone())).collect() };
    match compression {
        Compression::None if payload.len() != raw_len as usize => Ok(reject_all(format!("batch is {} bytes, expected {raw_len}", payload.len()))),
        Compression::None => store_batch(store, writer, chunks, payload),
        Compression::Zstd => {
            if payload.len() as u32 > max_compressed_len(raw_len) {
                return Err(ReceiveError::Protocol("compressed batch larger than its bound".into()));
            }
            let mut raw = RECV_BUFFERS.take_empty(raw_len as usize);
            let out = DECOMPRESSOR.with(|cell| {
                let mut cell = cell.borrow_mut();
                if cell.is_none() {
                    *cell = Some(zstd::bulk::Decompressor::new()?);
                }
                cell.as_mut().expect("just set").decompress_to_buffer(payload, &mut raw)
            });
            let outcome = match out {
                Ok(n) if n == raw_len as usize => store_batch(store, writer, chunks, &raw),
                Ok(n) => Ok(reject_all(format!("batch decompressed to {n} bytes, expected {raw_len}"))),
                Err(e) => Ok(reject_all(format!("batch does not decompress: {e}"))),
            };
            RECV_BUFFERS.give(raw);
            outcome
        }
    }
}

/// Checks each chunk of a decompressed batch against its hash, stores the good ones and writes
/// them into the image.
fn store_batch(store: &Store, writer: &ImageWriter, chunks: &[hotspot_protocol::manifest::ChunkRef], raw: &[u8]) -> Result<BatchOutcome, ReceiveError> {
    let mut good: Vec<(ChunkHash, &[u8])> = Vec::with_capacity(chunks.len());
    let mut rejected = Vec::new();
    let mut at = 0usize;
    for c in chunks {
        let data = &raw[at..at + c.len as usize];
        at += c.len as usize;
        if blake3::hash(data).as_bytes() == &c.hash.0 {
            good.push((c.hash, data));
        } else {
            rejected.push((c.hash, "blake3 mismatch".to_string()));
        }
    }
    writer.write_chunks(&good)?;
    writer.store_written(store, &good)?;
    let bytes = good.iter().map(|(_, d)| d.len() as u64).sum();
    Ok(BatchOutcome { stored: good.into_iter().map(|(h, _)| h).collect(), bytes, rejected })
}
