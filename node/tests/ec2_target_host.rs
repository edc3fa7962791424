//! The EC2 node's view of what is attached to it, against moto: which volume and ENI of a
//! workload this instance holds (and the clear errors when they are elsewhere), the volume's
//! zone for the election, the device wait's timeout, and discovery of instances that boot later.
//! (Mounting and routing run as root in host_ec2_migration.)

mod common;

use std::time::Duration;

use common::{cluster, provider, volume, MotoServer, ZONE_A};
use hotspot_node::providers::ec2::cloud_moves::{CloudMoves, WORKLOAD_TAG};
use hotspot_node::providers::ec2::discovery::{watch_peers, DEFAULT_CLUSTER_TAG};
use hotspot_testkit::moto::{self, tag};
use hotspot_node::providers::ec2::target_host::HostSetup;
use hotspot_node::providers::ec2::Ec2Provider;
use tokio_util::sync::CancellationToken;

fn moves(p: &Ec2Provider, instance: &str) -> CloudMoves {
    CloudMoves { provider: p.clone(), instance_id: instance.into(), cluster_tag: DEFAULT_CLUSTER_TAG.into(), cluster: "t".into() }
}

async fn tag_workload(c: &aws_sdk_ec2::Client, id: &str, workload: &str) {
    tag(c, id, WORKLOAD_TAG, workload).await;
    tag(c, id, DEFAULT_CLUSTER_TAG, "t").await;
}

#[tokio::test]
async fn attached_resources_are_read_from_the_cloud_with_clear_errors() {
    let Some(moto) = MotoServer::for_test("attached_resources_are_read_from_the_cloud_with_clear_errors") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
    tag_workload(p.client(), &vol, "db").await;
    let (eni, mac) = moto::interface_at(p.client(), &c.subnet_a, "172.31.0.77", &c.source).await;
    tag_workload(p.client(), &eni, "db").await;
    let (source, target) = (moves(&p, &c.source), moves(&p, &c.target));

    assert_eq!(source.volume_zone("db").await.unwrap(), Some((vol.clone(), ZONE_A.to_string())));
    assert_eq!(source.volume_zone("other").await.unwrap(), None, "no volume: no zone constraint");
    let v = source.attached_volume("db").await.unwrap().unwrap();
    assert_eq!((v.volume.as_str(), v.device.as_str(), v.zone.as_str()), (vol.as_str(), "/dev/sdf", ZONE_A));
    let e = source.attached_interface("db").await.unwrap().unwrap();
    assert_eq!((e.interface.as_str(), e.mac.as_str()), (eni.as_str(), mac.as_str()));
    // moto's default subnet in us-east-1a is 172.31.0.0/20: its router is the first address.
    assert_eq!((e.address.as_str(), e.gateway.to_string().as_str()), ("172.31.0.77/20", "172.31.0.1"));

    // On another instance, before the source attached them there: refused, saying where they are.
    let err = target.attached_volume("db").await.unwrap_err().to_string();
    assert!(err.contains(&vol) && err.contains(&format!("attached to {}, not to this instance {}", c.source, c.target)), "{err}");
    let err = target.attached_interface("db").await.unwrap_err().to_string();
    assert!(err.contains(&eni) && err.contains(&c.source), "{err}");
    let setup_dir = tempfile::tempdir().unwrap();
    let setup = HostSetup { workload: "db", netns: "hs-db-none", mount_dir: &setup_dir.path().join("mnt") };
    assert!(target.prepare_host(&setup).await.is_err(), "nothing is prepared for resources attached elsewhere");
    // A workload with nothing in the cloud needs nothing here.
    let nothing = HostSetup { workload: "stateless", ..setup };
    target.prepare_host(&nothing).await.unwrap();
}

#[tokio::test]
async fn a_device_that_never_appears_times_out_with_the_volume_named() {
    let Some(moto) = MotoServer::for_test("a_device_that_never_appears_times_out_with_the_volume_named") else { return };
    let mut p = provider(moto.endpoint()).await;
    let dev = tempfile::tempdir().unwrap();
    let mut options = common::fast_options();
    options.device_dir = dev.path().to_path_buf();
    options.device_timeout_ms = 300;
    p = Ec2Provider::new(p.client().clone(), options);
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.target.as_str())).await;
    tag_workload(p.client(), &vol, "db").await;
    let mount_dir = dev.path().join("mnt");
    let setup = HostSetup { workload: "db", netns: "hs-db-none", mount_dir: &mount_dir };
    let started = std::time::Instant::now();
    let err = moves(&p, &c.target).prepare_host(&setup).await.unwrap_err().to_string();
    eprintln!("{err}");
    assert!(started.elapsed() >= Duration::from_millis(300), "waited for the device");
    let by_id = format!("disk/by-id/nvme-Amazon_Elastic_Block_Store_{}", vol.replace('-', ""));
    for part in [vol.as_str(), "/dev/sdf", "xvdf", by_id.as_str(), "300ms", "device_timeout_ms"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!mount_dir.exists(), "nothing mounted");
}

#[tokio::test]
async fn discovery_finds_instances_that_boot_later() {
    let Some(moto) = MotoServer::for_test("discovery_finds_instances_that_boot_later") else { return };
    let p = provider(moto.endpoint()).await;
    let me = moto::run_instance(p.client(), ZONE_A, Some("late")).await;
    let early = moto::run_instance(p.client(), ZONE_A, Some("late")).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(watch_peers(
        p.client().clone(),
        DEFAULT_CLUSTER_TAG.into(),
        "late".into(),
        Some(me.clone()),
        Duration::from_millis(100),
        tx,
        cancel.clone(),
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), vec![early.as_str()], "this node is left out");

    let late = moto::run_instance(p.client(), ZONE_A, Some("late")).await;
    let _other_cluster = moto::run_instance(p.client(), ZONE_A, Some("elsewhere")).await;
    let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    assert_eq!(next.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), vec![late.as_str()], "only the new one");
    assert!(next[0].private_ip.is_ipv4());
    // Nothing new: nothing sent.
    assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv()).await.is_err());
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the watcher ends when cancelled").unwrap();
}
