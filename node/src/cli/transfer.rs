//! `hotspot-node send` / `hotspot-node receive`: move a CRIU image directory between two nodes
//! by hand, over the same authenticated, deduplicating QUIC transfer migrations use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hotspot_protocol::NodeId;
use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{endpoint, SendOptions, SendProgress, Store, StoreOptions, TrustSet};
use indicatif::{ProgressBar, ProgressStyle};

const DEFAULT_DATA_DIR: &str = "/var/lib/hotspot-mesh";
const DEFAULT_PORT: u16 = 7790;

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Directory holding this node's key (`node.key`, created if absent) [default: /var/lib/hotspot-mesh].
    #[arg(long, env = "HOTSPOT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl KeyArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| DEFAULT_DATA_DIR.into())
    }
    fn load(&self) -> Result<NodeKey> {
        let path = self.dir().join("node.key");
        let key = NodeKey::load_or_create(&path).with_context(|| format!("loading node key {}", path.display()))?;
        eprintln!("this node: {}", key.node_id());
        Ok(key)
    }
}

/// Send a CRIU image directory to a receiving node.
#[derive(Debug, clap::Args)]
#[command(after_help = "Only chunks the receiver lacks travel; an interrupted send resumes when run again.\n\
Example: hotspot-node send /var/lib/imgs/web-1 --to 10.0.0.7:7790 --peer 3f2a...e1")]
pub struct SendArgs {
    /// Image directory (the -D directory of `criu dump`).
    pub dir: PathBuf,
    /// Receiver address, HOST:PORT (port defaults to 7790).
    #[arg(long)]
    pub to: String,
    /// The receiver's node id (64 hex digits, printed by `hotspot-node receive`); the connection is
    /// refused unless the receiver proves this key.
    #[arg(long)]
    pub peer: NodeId,
    /// Label stored with the image (workload name, dump round).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Parallel QUIC streams.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// zstd level: 1 is fastest, higher trades CPU for fewer bytes on slow links.
    #[arg(long, default_value_t = 1)]
    pub zstd_level: i32,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Receive images from trusted nodes into the local chunk store.
#[derive(Debug, clap::Args)]
#[command(after_help = "Rebuilt images land in DATA_DIR/images/<manifest id>; chunks stay in DATA_DIR/chunks \
so later images of the same workload only transfer what changed.")]
pub struct ReceiveArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// Node id allowed to send (repeatable). Everyone else is refused during the handshake.
    #[arg(long = "trust", required = true)]
    pub trust: Vec<NodeId>,
    /// Most bytes the chunk store may use (default: until the disk is full).
    #[arg(long)]
    pub max_store_bytes: Option<u64>,
    /// Exit after the first transfer (exit code 1 if it failed).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn resolve(to: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let with_port = if to.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) { to.to_string() } else { format!("{to}:{DEFAULT_PORT}") };
    with_port.to_socket_addrs().with_context(|| format!("resolving {to}"))?.next().with_context(|| format!("{to} has no address"))
}

pub fn send(args: &SendArgs) -> Result<i32> {
    if !args.dir.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    let key = args.key.load()?;
    let addr = resolve(&args.to)?;
    runtime()?.block_on(async {
        let ep = endpoint::sender(&key, TrustSet::new([args.peer]), Some(args.peer), addr)?;
        let opts = SendOptions { label: args.label.clone(), streams: args.streams, zstd_level: args.zstd_level, ..Default::default() };
        let (tx, mut rx) = tokio::sync::watch::channel(SendProgress::default());
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")?.progress_chars("=> "));
        bar.set_message("chunking");
        bar.enable_steady_tick(Duration::from_millis(200));
        let send = hotspot_transfer::send_dir(&ep, addr, &args.dir, opts, Some(tx));
        tokio::pin!(send);
        let result = loop {
            tokio::select! {
                r = &mut send => break r,
                Ok(()) = rx.changed() => {
                    let p = rx.borrow().clone();
                    if p.wanted_bytes > 0 || p.image_bytes > 0 { bar.set_message("sending"); }
                    bar.set_length(p.wanted_bytes);
                    bar.set_position(p.sent_bytes);
                }
            }
        };
        bar.finish_and_clear();
        ep.wait_idle().await;
        let r = result?;
        println!(
            "sent {} ({} files, {:.1} MiB): {} of {} chunks needed, {:.1} MiB on the wire, {} rejected and re-sent, {:.2} s",
            r.manifest_id,
            r.files,
            r.image_bytes as f64 / 1048576.0,
            r.chunks_sent,
            r.distinct_chunks,
            r.wire_bytes as f64 / 1048576.0,
            r.rejected,
            r.elapsed.as_secs_f64()
        );
        Ok(0)
    })
}

pub fn receive(args: &ReceiveArgs) -> Result<i32> {
    let key = args.key.load()?;
    let dir = args.key.dir();
    let store = Store::open(&dir.join("chunks"), StoreOptions { max_bytes: args.max_store_bytes, ..Default::default() })
        .with_context(|| format!("opening chunk store in {}", dir.display()))?;
    runtime()?.block_on(async {
        let ep = endpoint::receiver(&key, TrustSet::new(args.trust.iter().copied()), args.listen)?;
        eprintln!("listening on {} (trusting {} node(s))", ep.local_addr()?, args.trust.len());
        let (tx, mut done) = tokio::sync::mpsc::channel(4);
        let stop = tokio_util::sync::CancellationToken::new();
        let opts = hotspot_transfer::ReceiveOptions::new(dir.join("images"));
        let server = tokio::spawn(hotspot_transfer::serve(ep, Arc::new(store), opts, tx, stop.clone()));
        let mut code = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                r = done.recv() => match r {
                    Some(Ok(r)) => {
                        println!(
                            "received {} from {} -> {} ({} files, {:.1} MiB; {} chunks fetched, {} rejected, {:.2} s)",
                            r.manifest_id, r.peer.short(), r.path.display(), r.files, r.bytes as f64 / 1048576.0, r.chunks_received, r.rejected, r.elapsed.as_secs_f64()
                        );
                        if args.once { break; }
                    }
                    Some(Err(e)) => {
                        eprintln!("transfer failed: {e}");
                        if args.once { code = 1; break; }
                    }
                    None => break,
                }
            }
        }
        stop.cancel();
        server.await?;
        Ok(code)
    })
}
