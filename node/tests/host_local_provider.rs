//! The local resource provider with real loop devices, real namespaces and real CRIU: redis
//! keeps its append-only file on a loop-device volume mounted only inside its own mount
//! namespace and its address on a veth bridged onto a lab LAN; a live client pipelines
//! through every move.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hotspot_node::criu::Criu;
use hotspot_node::lab::Lan;
use hotspot_node::sys::loopdev::{self, VolumeCleanup};
use hotspot_node::providers::local::{ClusterDir, LocalProvider, NodeEntry};
use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_node::migrate::ResourceMover;
use hotspot_testkit::testbed::{self, Cleanup, PipeliningClient};
use hotspot_node::sys::netns;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, StartOptions};
use hotspot_testkit::host;
use hotspot_protocol::migration::WorkloadSpec;
use hotspot_protocol::NodeId;

/// Everything one test made. Fields drop in order: client, workloads, volume, lab, files.
struct Setup {
    client: Option<PipeliningClient>,
    _guards: Vec<Cleanup>,
    _volume: VolumeCleanup,
    _lan: Lan,
    name: String,
    images: std::path::PathBuf,
    spec: WorkloadSpec,
    server: SocketAddr,
    a: LocalProvider,
    node_a: NodeEntry,
    node_b: NodeEntry,
    b_id: NodeId,
    client_ns: String,
    criu: Criu,
    _tmp: tempfile::TempDir,
}

/// Text of `file` as the workload with host PID `pid` sees it (inside its mount namespace).
fn read_inside(pid: i32, file: &Path) -> String {
    let out = Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "cat"]).arg(file).output().unwrap();
    assert!(out.status.success(), "reading {} inside {pid}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_id(byte: u8) -> NodeId {
    NodeId([byte; 32])
}

/// Two nodes registered in a cluster dir, redis on node a with a loop-device volume and a
/// bridged service address, a live client from a client namespace; then the final dump.
fn set_up(tag: &str) -> Setup {
    let tmp_dir = tempfile::tempdir().unwrap();
    let tmp = tmp_dir.path();
    let mut lan = Lan::new(0).unwrap();
    let mut guards = Vec::new();
    let name = format!("lp{tag}{}", std::process::id());
    let cluster = ClusterDir::new(tmp.join("cluster"));
    let (a_id, b_id) = (node_id(1), node_id(2));
    let node_a = NodeEntry::new(&a_id, &format!("{name}a"), &tmp.join("a"));
    let node_b = NodeEntry::new(&b_id, &format!("{name}b"), &tmp.join("b"));
    cluster.register(&node_a).unwrap();
    cluster.register(&node_b).unwrap();
    for node in [&node_a, &node_b] {
        let mut g = Cleanup::new(node.workloads());
        g.names.push(name.clone());
        g.netns.push(restore_netns(&name, &node.node_id));
        guards.push(g);
    }
    guards[0].netns.push(workload_netns(&name));

    let image = tmp.join("disks").join(format!("{name}.img"));
    loopdev::create_image(&image, 64).unwrap();
    loopdev::create_image(&image, 64).unwrap(); // idempotent
    let volume = VolumeCleanup {
        image: image.clone(),
        mount_dirs: vec![node_a.workloads().volume_mount_dir(&name), node_b.workloads().volume_mount_dir(&name)],
    };
    let device = loopdev::attach(&image).unwrap();
    assert_eq!(loopdev::attach(&image).unwrap(), device, "attaching twice returns the same device");
    let mount_point = tmp.join("data");
    std::fs::create_dir(&mount_point).unwrap();

    let client_ns = lan.add_client().unwrap();
    let address = lan.service_address(1);
    let server = SocketAddr::new(address.ip, 6379);
    let wls = node_a.workloads();
    let dir = mount_point.display().to_string();
    let w = wls
        .start(&StartOptions {
            name: name.clone(),
            command: hotspot_testkit::testbed::redis_command(&["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir]),
            address: Some(address),
            uplink_netns: Some(lan.hub.clone()),
            uplink_address: None,
            volume: Some(mount_point.clone()),
            volume_device: Some(device),
            volume_handle: Some(image.display().to_string()),
            ..Default::default()
        })
        .unwrap();
    lan.bridge_port(&w.record.uplink.as_ref().unwrap().interface).unwrap();
    assert!(!hotspot_node::sys::mounts::is_mount_point(&mount_point), "the volume is mounted only inside the workload");
    assert!(testbed::wait_listening(Some(&client_ns), server, Duration::from_secs(10)), "redis came up");
    let pid = w.pid().unwrap();
    Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "sh", "-c"]).arg(format!("echo written-before-the-move > {dir}/marker")).status().unwrap();
    let client = PipeliningClient::start(Some(&client_ns), server, Duration::from_millis(2), "vol").unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(10)));
    let spec = WorkloadSpec {
        name: name.clone(),
        needs: Default::default(),
        address: Some(address.to_string()),
        volume: Some(image.display().to_string()),
    };
    let a = LocalProvider::new(cluster, node_a.clone());
    let criu = Criu::detect().unwrap();
    let images = tmp.join("images");
    node_a.workloads().checkpoint(&criu, &name, &CheckpointOptions::new(&images)).unwrap();
    Setup {
        client: Some(client),
        _guards: guards,
        _volume: volume,
        _lan: lan,
        name,
        images,
        spec,
        server,
        a,
        node_a,
        node_b,
        b_id,
        client_ns,
        criu,
        _tmp: tmp_dir,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Restores `cp` on `node` into the provider's namespace for it (address already moved there).
fn restore_on(s: &Setup, node: &NodeEntry, netns_name: String) -> i32 {
    let cp = Checkpoint::open(&s.images, &s.criu).unwrap();
    let spec = RestoreSpec { name: s.name.clone(), netns: netns_name, service_net: ServiceNet::Present, timeout: Duration::from_secs(60) };
    let (w, _) = node.workloads().restore(&s.criu, &cp, &spec).unwrap();
    w.pid().unwrap()
}

fn finish_client(s: &mut Setup) {
    let client = s.client.take().unwrap();
    assert!(client.wait_batches(100, Duration::from_secs(15)), "the client keeps being answered");
    let report = client.finish();
    assert_eq!(report.error, None, "the client saw no error and needed no reconnect");
    report.incr_sequence_ok().unwrap();
    assert_eq!(report.dbsize, Some(report.sets_acked as i64 + 1), "DBSIZE: every acknowledged key plus the counter");
    eprintln!("client: {} batches, longest stall {:?}", report.incrs.len(), report.max_stall);
}

#[test]
fn host_local_provider_moves_volume_and_address_to_the_target() {
    if !host::require_migration_host("host_local_provider_moves_volume_and_address_to_the_target") {
        return;
    }
    let mut s = set_up("m");

    let rt = runtime();
    let mut state = Vec::new();
    rt.block_on(s.a.move_to_target(&s.spec, &s.b_id, &mut state)).unwrap();
    let after_first = state.clone();
    // Every step repeated is harmless: same state, resources stay where they are.
    rt.block_on(s.a.move_to_target(&s.spec, &s.b_id, &mut state)).unwrap();
    assert_eq!(state, after_first);
    let b_ns = restore_netns(&s.name, &s.node_b.node_id);
    assert!(netns::has_service_if(&b_ns) && !netns::has_service_if(&workload_netns(&s.name)), "the address moved");
    let b_mount = s.node_b.workloads().volume_mount_dir(&s.name);
    assert!(hotspot_node::sys::mounts::is_mount_point(&b_mount), "the volume is mounted on the target");
    assert_eq!(std::fs::read_to_string(b_mount.join("marker")).unwrap(), "written-before-the-move\n");

    let pid = restore_on(&s, &s.node_b, b_ns);
    // The source forgets its stopped copy; on one machine that must not touch the restored one.
    s.node_a.workloads().retire(&s.name).unwrap();
    let inside = s.node_b.workloads().get(&s.name).unwrap().volume().unwrap().to_path_buf();
    assert_eq!(read_inside(pid, &inside.join("marker")), "written-before-the-move\n", "the restored workload sees its volume");
    assert!(testbed::wait_listening(Some(&s.client_ns), s.server, Duration::from_secs(5)));
    // Written after the move on the target's mount, through the workload: one filesystem.
    Command::new("nsenter").args(["-t", &pid.to_string(), "-m", "sh", "-c"]).arg(format!("echo after > {}/marker2", inside.display())).status().unwrap();
    assert_eq!(std::fs::read_to_string(b_mount.join("marker2")).unwrap(), "after\n");
    finish_client(&mut s);
}

#[test]
fn host_local_provider_move_back_restores_the_source() {
    if !host::require_migration_host("host_local_provider_move_back_restores_the_source") {
        return;
    }
    let mut s = set_up("b");

    let rt = runtime();
    let mut state = Vec::new();
    // No handle in the spec: the provider takes the image from the workload's record.
    s.spec.volume = None;
    rt.block_on(s.a.move_back(&s.spec, &mut state)).unwrap(); // nothing moved yet: nothing to do
    rt.block_on(s.a.move_to_target(&s.spec, &s.b_id, &mut state)).unwrap();
    // The source crashed before the journal kept the provider state: the move back finds the
    // resources by looking at the nodes. Then the journaled state again: harmless.
    rt.block_on(s.a.move_back(&s.spec, &mut Vec::new())).unwrap();
    rt.block_on(s.a.move_back(&s.spec, &mut state)).unwrap();
    rt.block_on(s.a.move_back(&s.spec, &mut state)).unwrap();
    let src_ns = workload_netns(&s.name);
    assert!(netns::has_service_if(&src_ns), "the address is back on the source");
    assert!(!netns::exists(&restore_netns(&s.name, &s.node_b.node_id)), "the target's namespace is gone");
    assert!(!hotspot_node::sys::mounts::is_mount_point(&s.node_b.workloads().volume_mount_dir(&s.name)));
    assert!(hotspot_node::sys::mounts::is_mount_point(&s.node_a.workloads().volume_mount_dir(&s.name)), "the volume is on the source");

    let pid = restore_on(&s, &s.node_a, src_ns);
    let inside = s.node_a.workloads().get(&s.name).unwrap().volume().unwrap().to_path_buf();
    assert_eq!(read_inside(pid, &inside.join("marker")), "written-before-the-move\n");
    finish_client(&mut s);
}

#[test]
fn host_loop_volume_steps_are_idempotent() {
    if !host::require_migration_host("host_loop_volume_steps_are_idempotent") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("v.img");
    let mnt = tmp.path().join("mnt");
    let _guard = VolumeCleanup { image: image.clone(), mount_dirs: vec![mnt.clone()] };
    assert!(loopdev::devices_of(&image).unwrap_err().to_string().contains("does not exist"));
    loopdev::create_image(&image, 32).unwrap();
    let dev = loopdev::attach(&image).unwrap();
    loopdev::mount(&dev, &mnt).unwrap();
    loopdev::mount(&dev, &mnt).unwrap();
    std::fs::write(mnt.join("f"), b"x").unwrap();
    loopdev::unmount(&mnt).unwrap();
    loopdev::unmount(&mnt).unwrap();
    loopdev::detach(&image, Duration::from_secs(5)).unwrap();
    loopdev::detach(&image, Duration::from_secs(5)).unwrap();
    assert!(loopdev::devices_of(&image).unwrap().is_empty());
    let dev = loopdev::attach(&image).unwrap();
    loopdev::mount(&dev, &mnt).unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x", "data survives detach and re-attach");
}
