//! Sends an image directory to an in-process receiver on loopback and logs each phase:
//! `RUST_LOG=info cargo run --release -p hotspot-transfer --example loopback -- DIR [DIR2...]`

use std::sync::Arc;
use std::time::Instant;

use hotspot_transfer::identity::NodeKey;
use hotspot_transfer::{endpoint, send_dir, ReceiveOptions, SendOptions, Store, StoreOptions, TrustSet};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    let root = tempfile::tempdir().unwrap();
    let (rk, sk) = (NodeKey::from_seed([1; 32]), NodeKey::from_seed([2; 32]));
    let store = Arc::new(Store::open(&root.path().join("store"), StoreOptions { sync: false, ..Default::default() }).unwrap());
    let ep = endpoint::receiver(&rk, TrustSet::new([sk.node_id()]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let (tx, mut done) = tokio::sync::mpsc::channel(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut opts = ReceiveOptions::new(root.path().join("images"));
    opts.sync = false;
    let server = tokio::spawn(hotspot_transfer::serve(ep, store, opts, tx, stop.clone()));
    let sender = endpoint::sender(&sk, TrustSet::new([rk.node_id()]), Some(rk.node_id()), addr).unwrap();
    for dir in dirs {
        let start = Instant::now();
        let r = send_dir(&sender, addr, dir.as_ref(), SendOptions::default(), None).await.unwrap();
        let got = done.recv().await.unwrap().unwrap();
        println!("{dir}: {:.3} s total, chunking {:.3} s, receiver {:.3} s; {r:?}", start.elapsed().as_secs_f64(), r.chunking_time.as_secs_f64(), got.elapsed.as_secs_f64());
    }
    stop.cancel();
    server.await.unwrap();
}
