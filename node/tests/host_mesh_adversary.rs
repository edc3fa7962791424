//! A hostile peer on the advert topic. Topology on loopback (mDNS off, bootstrap only):
//!
//! ```text
//!   adversary ── node-b ── node-c
//!                  │
//!                node-a   (the victim whose identity the adversary forges)
//! ```
//!
//! The adversary is an in-process libp2p swarm built like a real node, so its messages are
//! correctly signed gossip; only their content is bad. node-b must reject forged, oversized and
//! malformed adverts, ban the sender, and never forward them: node-c must not even receive one.

mod mesh_support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use hotspot_node::mesh::behaviour::{advert_topic, build_swarm, Behaviour, BehaviourEvent};
use hotspot_node::mesh::{node_id_of, MeshOptions};
use hotspot_protocol::advert::WorkloadSummary;
use hotspot_protocol::{encode, NodeAdvert, NodeId};
use libp2p::{gossipsub, identity, swarm::SwarmEvent, Multiaddr, PeerId, Swarm};
use mesh_support::Node;

fn advert(node: NodeId, name: &str, price: f64) -> NodeAdvert {
    NodeAdvert {
        seq: 1 << 50,
        price_per_hour: price,
        arch: std::env::consts::ARCH.into(),
        zone: "local".into(),
        ..NodeAdvert::blank(node, name)
    }
}

/// Raw envelope bytes, bypassing encode()'s checks the way an attacker would.
fn raw_envelope(advert: &NodeAdvert) -> Vec<u8> {
    let mut bytes = b"HM\x00\x01".to_vec();
    serde_cbor::to_writer(&mut bytes, advert).unwrap();
    bytes
}

/// Drives the adversary's swarm for `d`, returning peers that subscribed meanwhile.
async fn pump(swarm: &mut Swarm<Behaviour>, d: Duration) -> Vec<PeerId> {
    let mut subscribed = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
        if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. })) = event {
            subscribed.push(peer_id);
        }
    }
    subscribed
}

async fn wait_until(swarm: &mut Swarm<Behaviour>, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        pump(swarm, Duration::from_millis(100)).await;
    }
}

fn rejected(node: &Node, kind: &str) -> u64 {
    node.status().mesh["adverts_rejected"][kind].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mesh_bad_adverts_are_rejected_and_never_reach_other_peers() {
    let root = tempfile::tempdir().unwrap();
    let local = ["--mdns", "false", "--listen", "/ip4/127.0.0.1/tcp/0", "--advert-interval-ms", "1000"];
    let b = Node::start(root.path(), "node-b", None, &local);
    let b_status = b.status();
    let b_addr = b_status.mesh["listen_addrs"][0].as_str().expect("node-b listens").to_string();
    let b_peer: PeerId = b_status.mesh["peer_id"].as_str().unwrap().parse().unwrap();
    let with_bootstrap: Vec<&str> = local.iter().copied().chain(["--bootstrap", b_addr.as_str()]).collect();
    let a = Node::start(root.path(), "node-a", None, &with_bootstrap);
    let c = Node::start(root.path(), "node-c", None, &with_bootstrap);
    let a_id: NodeId = a.status().node.parse().unwrap();

    // The adversary: a correctly keyed libp2p node that connects to node-b only.
    let seed = [0x5a; 32];
    let mut opts = MeshOptions::new(seed);
    opts.mdns = false;
    let mut swarm = build_swarm(&opts).unwrap();
    swarm.behaviour_mut().gossipsub.subscribe(&advert_topic()).unwrap();
    swarm.dial(b_addr.parse::<Multiaddr>().unwrap()).unwrap();
    let start = Instant::now();
    while !pump(&mut swarm, Duration::from_millis(100)).await.contains(&b_peer) {
        assert!(start.elapsed() < Duration::from_secs(20), "node-b never subscribed");
    }
    wait_until(&mut swarm, "node-c to see node-a via node-b", || c.peer_names().contains(&"node-a".to_string())).await;

    // Control: an honest advert from the adversary's own key crosses node-b to node-c, so the
    // path works and anything missing later was stopped on purpose.
    let key = identity::Keypair::ed25519_from_bytes(seed).unwrap();
    let own = advert(node_id_of(&key).unwrap(), "adversary", 0.5);
    swarm.behaviour_mut().gossipsub.publish(advert_topic(), encode(&own).unwrap()).unwrap();
    wait_until(&mut swarm, "node-c to see the honest advert", || c.peer_names().contains(&"adversary".to_string())).await;

    // 1. Forged: node-a's identity, price 0, signed by the adversary's key.
    let forged = advert(a_id, "forged", 0.0);
    swarm.behaviour_mut().gossipsub.publish(advert_topic(), encode(&forged).unwrap()).unwrap();
    // 2. Oversized: 256 long workload names, ~35 KB, over the 16 KiB advert limit.
    let mut big = advert(node_id_of(&key).unwrap(), "big", 0.5);
    big.seq += 1;
    big.workloads = (0..256).map(|i| WorkloadSummary { name: format!("{i:0>128}"), needs: Default::default() }).collect();
    let big = raw_envelope(&big);
    assert!(big.len() > 16 * 1024);
    swarm.behaviour_mut().gossipsub.publish(advert_topic(), big).unwrap();
    // 3. Malformed: a valid header and garbage CBOR.
    swarm.behaviour_mut().gossipsub.publish(advert_topic(), b"HM\x00\x01\xff\xfe garbage".to_vec()).unwrap();

    wait_until(&mut swarm, "node-b to reject all three", || {
        rejected(&b, "forged") >= 1 && rejected(&b, "too_large") >= 1 && rejected(&b, "malformed") >= 1
    })
    .await;
    wait_until(&mut swarm, "node-b to ban the adversary", || {
        b.status().mesh["banned_peers"].as_array().unwrap().iter().any(|p| p == &key.public().to_peer_id().to_string())
    })
    .await;
    // Give any forwarded copy ample time to arrive before asserting it never did.
    pump(&mut swarm, Duration::from_secs(2)).await;

    for n in [&a, &c] {
        let status = n.status();
        assert_eq!(status.mesh["adverts_rejected"], serde_json::json!({}), "{} received a bad advert", n.name);
        let peers = n.peers();
        assert!(!peers.iter().any(|p| p.name == "forged" || p.name == "big"), "{}: {peers:?}", n.name);
    }
    let a_seen_by_c = c.peers().into_iter().find(|p| p.node == a_id.to_string()).expect("node-a still listed");
    assert_eq!((a_seen_by_c.name.as_str(), a_seen_by_c.price_per_hour), ("node-a", 0.10));
}
