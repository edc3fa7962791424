//! Bootstrap peers added after start (what EC2 discovery does when an instance boots later):
//! the mesh dials them at once, on loopback, with no mDNS.

use std::time::{Duration, Instant};

use hotspot_node::mesh::{self, MeshOptions};
use tokio_util::sync::CancellationToken;

fn options(seed: u8) -> MeshOptions {
    let mut o = MeshOptions::new([seed; 32]);
    o.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    o.mdns = false;
    o
}

#[tokio::test]
async fn bootstrap_peers_added_later_are_dialled() {
    let cancel = CancellationToken::new();
    let early = mesh::spawn(options(1), cancel.clone()).unwrap();
    let late = mesh::spawn(options(2), cancel.clone()).unwrap();
    let addr = loop {
        let stats = early.client.stats().await.unwrap();
        if let Some(a) = stats.listen_addrs.iter().find(|a| a.contains("/tcp/")) {
            break a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(late.client.stats().await.unwrap().connected_peers, 0, "no mDNS, no bootstrap: alone");

    let started = Instant::now();
    let addrs = vec![addr.parse().unwrap(), addr.parse().unwrap()]; // a repeat is ignored
    late.client.add_bootstrap(addrs.clone()).await.unwrap();
    while late.client.stats().await.unwrap().connected_peers == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the added peer was not dialled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(early.client.stats().await.unwrap().connected_peers, 1);
    late.client.add_bootstrap(addrs).await.unwrap(); // known already: nothing new to dial
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(late.client.stats().await.unwrap().connected_peers, 1);
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async { (early.task.await, late.task.await) }).await;
}
