//! `cargo bench --bench ec2`: the time the node adds around the cloud calls of a migration's
//! resource moves (its state checks' logic, journaling of step states, classification, polling
//! overhead), not the emulator's own latency.
//!
//! Each round is what a migration's resource step does on an EC2 node ([`CloudMoves`], the
//! cloud half of the daemon's mover): read the volume's zone (the election's input), find the
//! target's instance by its node tag, find the workload's volume and ENI by their tags, validate
//! both, detach both, attach both, with every step state encoded as the journal would persist
//! it; then what the target reads before its restore (the volume and ENI attached to it, the
//! ENI's subnet). The target's device wait, mount and routing are host work, not cloud calls. The provider times every SDK call
//! it makes; overhead = round wall time - sum of those call latencies, measured in the same run.
//! As a baseline the same round is also done with the bare minimum of raw SDK calls (detach,
//! attach, one describe each to confirm) - what a trusting script would do.

use std::time::{Duration, Instant};

use hotspot_node::providers::ec2::cloud_moves::{CloudMoves, WORKLOAD_TAG};
use hotspot_node::providers::ec2::discovery::DEFAULT_CLUSTER_TAG;
use hotspot_testkit::moto::{interface, run_instance, subnet_in, tag, volume, MotoServer};
use hotspot_node::providers::ec2::{build_client, Ec2ClientSettings, Ec2Provider, Ec2ProviderOptions};
use hotspot_node::providers::ec2::MoveStep;

#[path = "support/mod.rs"]
mod support;
use support::median;

const ROUNDS: usize = 15;
const ZONE: &str = "us-east-1a";
const RAW_DEVICE: &str = "/dev/sdg";
const RAW_INDEX: i32 = 2;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let moto = match MotoServer::start() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ec2 bench needs the EC2 emulator: {e}");
            std::process::exit(1);
        }
    };
    let settings = Ec2ClientSettings {
        endpoint_url: Some(moto.endpoint().to_string()),
        static_credentials: Some(("bench".into(), "bench".into())),
        ..Ec2ClientSettings::default()
    };
    let client = build_client(&settings).await;
    let options = Ec2ProviderOptions { poll_interval_ms: 20, ..Ec2ProviderOptions::default() };
    let provider = Ec2Provider::new(client.clone(), options);

    let a = run_instance(&client, ZONE, None).await;
    let b = run_instance(&client, ZONE, None).await;
    let subnet = subnet_in(&client, ZONE).await;
    let vol = volume(&client, ZONE, Some(a.as_str())).await;
    let eni = interface(&client, &subnet, Some(a.as_str())).await;
    // The baseline's own volume and ENI, on other device slots of the same instances.
    let raw_vol = volume(&client, ZONE, None).await;
    client.attach_volume().volume_id(&raw_vol).instance_id(&a).device(RAW_DEVICE).send().await.unwrap();
    let raw_eni = interface(&client, &subnet, None).await;
    let req = client.attach_network_interface().network_interface_id(&raw_eni).instance_id(&a).device_index(RAW_INDEX);
    req.send().await.unwrap();

    let mut totals = Vec::new();
    let mut sdk = Vec::new();
    let mut overheads = Vec::new();
    let mut baselines = Vec::new();
    let mut calls = 0;
    for (id, node) in [(&vol, "bench-workload"), (&eni, "bench-workload")] {
        tag(&client, id, WORKLOAD_TAG, node).await;
        tag(&client, id, DEFAULT_CLUSTER_TAG, "bench").await;
    }
    let node = |instance: &str| CloudMoves {
        provider: provider.clone(),
        instance_id: instance.into(),
        cluster_tag: DEFAULT_CLUSTER_TAG.into(),
        cluster: "bench".into(),
    };
    let (node_a, node_b) = (node(&a), node(&b));
    node_a.tag_self("node-a").await.unwrap();
    node_b.tag_self("node-b").await.unwrap();
    let (mut from, mut to) = ((&a, &node_a), (&b, &node_b));
    for round in 0..=ROUNDS {
        let mut journal: Vec<Vec<u8>> = Vec::new();
        let (calls0, sdk0) = (provider.call_stats().calls(), provider.call_stats().total());
        let started = Instant::now();
        let source = from.1;
        let zone = source.volume_zone("bench-workload").await.expect("volume zone");
        assert_eq!(zone.map(|(_, z)| z).as_deref(), Some(ZONE));
        let target = source.instance_of(if to.0 == &a { "node-a" } else { "node-b" }).await.expect("target instance");
        let mut st = source.plan("bench-workload", Some(&target)).await.expect("plan");
        for until in [MoveStep::Detached, MoveStep::Attached] {
            let persist = |s: &hotspot_node::providers::ec2::cloud_moves::CloudMoveState| journal.push(s.encode());
            source.advance(&mut st, until, persist).await.expect("move");
        }
        let on_target = to.1.attached_volume("bench-workload").await.expect("target sees the volume");
        let routed = to.1.attached_interface("bench-workload").await.expect("target sees the ENI");
        assert!(on_target.is_some() && routed.is_some());
        let total = started.elapsed();
        let in_sdk = provider.call_stats().total() - sdk0;
        assert_eq!(journal.len(), 6, "three steps for each of the two resources");
        assert_eq!(&target, to.0);

        let raw_started = Instant::now();
        raw_round(&client, &raw_vol, &raw_eni, from.0, to.0).await;
        let raw = raw_started.elapsed();

        if round > 0 {
            // round 0 warms connections and moto's code paths
            totals.push(total);
            sdk.push(in_sdk);
            overheads.push(total.saturating_sub(in_sdk));
            baselines.push(raw);
            calls = provider.call_stats().calls() - calls0;
        }
        std::mem::swap(&mut from, &mut to);
    }
    println!("rounds: {ROUNDS} (volume + ENI move per round, moto at {})", moto.endpoint());
    println!("provider round median: {:.2} ms ({calls} API calls)", ms(median(totals)));
    println!("  of which SDK calls:  {:.2} ms", ms(median(sdk)));
    println!("raw-call baseline:     {:.2} ms (6 API calls, no lookups, no checks, no journal)", ms(median(baselines)));
    println!("ec2 overhead_ms={:.3}", ms(median(overheads)));
}

/// The trusting minimum: detach, attach, and one describe each to see it landed.
async fn raw_round(c: &aws_sdk_ec2::Client, vol: &str, eni: &str, from: &str, to: &str) {
    c.detach_volume().volume_id(vol).instance_id(from).device(RAW_DEVICE).send().await.unwrap();
    c.attach_volume().volume_id(vol).instance_id(to).device(RAW_DEVICE).send().await.unwrap();
    c.describe_volumes().volume_ids(vol).send().await.unwrap();
    let d = c.describe_network_interfaces().network_interface_ids(eni).send().await.unwrap();
    let att = d.network_interfaces()[0].attachment().and_then(|x| x.attachment_id()).unwrap().to_string();
    c.detach_network_interface().attachment_id(att).send().await.unwrap();
    c.attach_network_interface().network_interface_id(eni).instance_id(to).device_index(RAW_INDEX).send().await.unwrap();
}
