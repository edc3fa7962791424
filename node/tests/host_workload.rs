//! Real CRIU, real namespaces: workloads checkpointed in one network namespace and restored in
//! another, with and without live TCP clients.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_node::criu::Criu;
use hotspot_testkit::host::HostTest;
use hotspot_testkit::testbed::PipeliningClient;
use hotspot_node::sys::netns;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, StartOptions};
use hotspot_testkit::testbed;

fn ns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// PID inside its own namespace, from the innermost NSpid entry.
fn inner_pid(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("NSpid:")).and_then(|l| l.split_whitespace().last()).unwrap().to_string()
}

#[test]
fn host_counter_continues_in_a_new_namespace() {
    let Some(mut t) = HostTest::new("host_counter_continues_in_a_new_namespace") else { return };
    let wls = t.workloads.clone();
    let (a, b) = (format!("cnt-a-{}", std::process::id()), format!("cnt-b-{}", std::process::id()));
    t.guard.names.extend([a.clone(), b.clone()]);
    t.guard.netns.extend([workload_netns(&a), workload_netns(&b)]);
    let volume = t.tmp.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    let w = wls
        .start(&StartOptions {
            name: a.clone(),
            // Holds an flock for its whole life: CRIU must carry it (--file-locks).
            command: vec!["sh".into(), "-c".into(), "exec 9>>lock; flock -x 9; i=0; while :; do i=$((i+1)); echo $i >> count.log; sleep 0.02; done".into()],
            volume: Some(volume.clone()),
            ..Default::default()
        })
        .unwrap();
    let pid = w.pid().unwrap();
    let lock_is_held = || !Command::new("flock").args(["-n", "-x"]).arg(volume.join("lock")).arg("true").status().unwrap().success();
    assert_eq!(inner_pid(pid), "1", "the workload is PID 1 of its own namespace");
    assert_ne!(ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))), ns_inode(Path::new("/proc/self/ns/net")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(lock_is_held(), "the workload holds its lock");

    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");
    let cp = wls.checkpoint(&criu, &a, &CheckpointOptions::new(&images)).unwrap();
    let stats = cp.stats.as_ref().unwrap();
    assert!(stats.image_bytes > 0 && stats.criu.is_some(), "{stats:?}");
    let at_dump = testbed::read_counts(&volume.join("count.log"));
    assert!(!wls.get(&a).unwrap().is_running(), "a final dump stops the source");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(testbed::read_counts(&volume.join("count.log")), at_dump, "nothing counts while checkpointed");

    let cp = Checkpoint::open(&images, &criu).unwrap();
    let spec = RestoreSpec { name: b.clone(), netns: workload_netns(&b), service_net: ServiceNet::Present, timeout: Duration::from_secs(60) };
    let (restored, outcome) = wls.restore(&criu, &cp, &spec).unwrap();
    assert!(restored.is_running());
    assert!(lock_is_held(), "the restored workload holds its lock again");
    assert_eq!(inner_pid(outcome.pid), "1");
    assert_eq!(ns_inode(Path::new(&format!("/proc/{}/ns/net", outcome.pid))), ns_inode(&netns::path(&workload_netns(&b))), "restored into namespace B");
    std::thread::sleep(Duration::from_millis(300));
    let after = testbed::read_counts(&volume.join("count.log"));
    assert!(after.len() > at_dump.len() + 3, "it keeps counting: {} -> {}", at_dump.len(), after.len());
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(after, expected, "the count continues where it stopped: no restart, gap or repeat");
    wls.retire(&a).unwrap();
    assert!(!netns::exists(&workload_netns(&a)));
    wls.stop(&b).unwrap();
    assert!(!netns::exists(&workload_netns(&b)));
}

#[test]
fn host_redis_keeps_its_live_client_across_namespaces() {
    let Some(mut t) = HostTest::new("host_redis_keeps_its_live_client_across_namespaces") else { return };
    let id = std::process::id();
    let wls = t.workloads.clone();
    let (a, b, client_ns) = (format!("redis-a-{id}"), format!("redis-b-{id}"), format!("hsc-{id}"));
    t.guard.names.extend([a.clone(), b.clone()]);
    t.guard.netns.extend([workload_netns(&a), workload_netns(&b), client_ns.clone()]);
    netns::create(&client_ns).unwrap();
    let subnet = 100 + id % 100;
    let server: SocketAddr = format!("10.77.{subnet}.2:6379").parse().unwrap();
    wls.start(&StartOptions {
        name: a.clone(),
        command: hotspot_testkit::testbed::redis_command(&["--appendonly", "no"]),
        address: Some(format!("10.77.{subnet}.2/24").parse().unwrap()),
        uplink_netns: Some(client_ns.clone()),
        uplink_address: Some(format!("10.77.{subnet}.1/24").parse().unwrap()),
        ..Default::default()
    })
    .unwrap();
    assert!(testbed::wait_listening(Some(&client_ns), server, Duration::from_secs(10)), "redis came up");

    let client = PipeliningClient::start(Some(&client_ns), server, Duration::from_millis(3), "live").unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(10)));
    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");
    let cp = wls.checkpoint(&criu, &a, &CheckpointOptions::new(&images)).unwrap();
    assert_eq!(cp.stats.as_ref().unwrap().locked_connections, 1, "the client's connection was locked");
    let spec = RestoreSpec {
        name: b.clone(),
        netns: workload_netns(&b),
        service_net: ServiceNet::MoveFrom(workload_netns(&a)),
        timeout: Duration::from_secs(60),
    };
    let cp = Checkpoint::open(&images, &criu).unwrap();
    wls.restore(&criu, &cp, &spec).unwrap();
    assert!(netns::has_service_if(&workload_netns(&b)) && !netns::has_service_if(&workload_netns(&a)), "the address moved");
    let left = hotspot_node::criu::netlock::capture(&netns::path(&workload_netns(&b))).unwrap();
    assert!(left.is_empty(), "CRIU's restore removed the pre-installed lock: {left:?}");
    assert!(client.wait_batches(100, Duration::from_secs(10)), "the client keeps being answered");
    let report = client.finish();
    assert_eq!(report.error, None, "the client saw no error and needed no reconnect");
    report.incr_sequence_ok().unwrap();
    assert!(report.incrs.len() > 150);
    assert_eq!(report.dbsize, Some(report.sets_acked as i64 + 1), "DBSIZE: every acknowledged key plus the counter");
    eprintln!("client: {} batches, longest stall {:?}", report.incrs.len(), report.max_stall);
    wls.retire(&a).unwrap();
}

#[test]
fn host_rootfs_workload_with_volume_moves() {
    let Some(mut t) = HostTest::new("host_rootfs_workload_with_volume_moves") else { return };
    let busybox = hotspot_node::sys::program::find_program("busybox").expect("busybox-static is installed by scripts/install-deps");
    let id = std::process::id();
    let rootfs = t.tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("proc")).unwrap();
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let volume = t.tmp.path().join("vol");
    std::fs::create_dir(&volume).unwrap();
    let wls = t.workloads.clone();
    let name = format!("rootfs-{id}");
    t.guard.names.push(name.clone());
    t.guard.netns.extend([workload_netns(&name), restore_netns(&name, &"b")]);
    let w = wls
        .start(&StartOptions {
            name: name.clone(),
            command: vec!["/bin/sh".into(), "-c".into(), "i=0; while :; do i=$((i+1)); echo $i >> /volume/count.log; sleep 0.02; done".into()],
            rootfs: Some(rootfs.clone()),
            volume: Some(volume.clone()),
            address: Some(format!("10.77.{}.2/24", 100 + id % 100).parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    let root_link = std::fs::read_link(format!("/proc/{}/root", w.pid().unwrap())).unwrap();
    assert_eq!(root_link, Path::new("/"), "pivot_root'ed: its root is its own mount");
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::read_to_string(rootfs.join(".hotspot-console.log")).is_ok(), "console inside the rootfs");

    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");
    wls.checkpoint(&criu, &name, &CheckpointOptions::new(&images)).unwrap();
    let at_dump = testbed::read_counts(&volume.join("count.log"));
    let cp = Checkpoint::open(&images, &criu).unwrap();
    let spec = RestoreSpec { name: name.clone(), netns: restore_netns(&name, &"b"), service_net: ServiceNet::MoveFrom(workload_netns(&name)), timeout: Duration::from_secs(60) };
    let (restored, _) = wls.restore(&criu, &cp, &spec).unwrap();
    assert!(restored.is_running() && netns::has_service_if(&restore_netns(&name, &"b")));
    assert!(!netns::exists(&workload_netns(&name)), "same workload, new home: the old namespace is gone");
    std::thread::sleep(Duration::from_millis(300));
    let after = testbed::read_counts(&volume.join("count.log"));
    assert!(after.len() > at_dump.len() + 3);
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>());
    wls.stop(&name).unwrap();
}

/// Another workload's volume mounted on the host (on this node, or another node sharing the
/// host) when a workload starts must not end up in its mount namespace: CRIU cannot dump a
/// mount it cannot recreate, so the new workload would be stuck where it is.
#[test]
fn host_foreign_volume_mounts_do_not_make_a_workload_undumpable() {
    use hotspot_node::sys::loopdev;
    let Some(mut t) = HostTest::new("host_foreign_volume_mounts_do_not_make_a_workload_undumpable") else { return };
    let wls = t.workloads.clone();
    let state = wls.state_dir().to_path_buf();
    let name = format!("fvm-{}", std::process::id());
    t.guard.names.push(name.clone());
    t.guard.netns.push(workload_netns(&name));
    // Two foreign volumes: one staged for another workload of this node, one of another node.
    let image = t.tmp.path().join("other.img");
    loopdev::create_image(&image, 64).unwrap();
    let device = loopdev::attach(&image).unwrap();
    let staged = state.join("volumes").join("other-workload");
    let elsewhere = t.tmp.path().join("node9-volume");
    for dir in [&staged, &elsewhere] {
        std::fs::create_dir_all(dir).unwrap();
        loopdev::mount(&device, dir).unwrap();
    }
    struct Unmount(Vec<std::path::PathBuf>, std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            self.0.iter().for_each(|d| drop(loopdev::unmount(d)));
            let _ = loopdev::detach(&self.1, Duration::from_secs(5));
        }
    }
    let _unmount = Unmount(vec![staged.clone(), elsewhere.clone()], image.clone());

    let w = wls.start(&StartOptions { name: name.clone(), command: vec!["sleep".into(), "600".into()], ..Default::default() }).unwrap();
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", w.pid().unwrap())).unwrap();
    assert!(!mounts.contains("other-workload") && !mounts.contains("node9-volume"), "foreign volumes detached:\n{mounts}");
    let criu = Criu::detect().unwrap();
    let mut opts = CheckpointOptions::new(t.tmp.path().join("images"));
    opts.leave_running = true;
    wls.checkpoint(&criu, &name, &opts).expect("the workload is dumpable with foreign volumes on the host");
}

/// A workload sharing the host's filesystem still gets its own /dev/shm: CRIU archives every
/// tmpfs of the workload's mount namespace into the image, and the host's shared-memory files
/// are not the workload's to carry to another node.
#[test]
fn host_workload_has_its_own_dev_shm() {
    let Some(mut t) = HostTest::new("host_workload_has_its_own_dev_shm") else { return };
    let wls = t.workloads.clone();
    let name = format!("shm-{}", std::process::id());
    t.guard.names.push(name.clone());
    t.guard.netns.push(workload_netns(&name));
    let host_file = format!("/dev/shm/hotspot-host-{}", std::process::id());
    let mut noise = vec![0u8; 4 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut noise).unwrap();
    std::fs::write(&host_file, noise).unwrap();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(host_file.clone());
    let own = format!("hotspot-own-{}", std::process::id());
    let script = format!("echo mine > /dev/shm/{own}; exec sleep 600");
    let w = wls.start(&StartOptions { name: name.clone(), command: vec!["sh".into(), "-c".into(), script], ..Default::default() }).unwrap();
    let root = format!("/proc/{}/root", w.pid().unwrap());
    hotspot_node::lab::wait_until("the workload to write its /dev/shm", Duration::from_secs(5), || Path::new(&format!("{root}/dev/shm/{own}")).exists()).unwrap();
    assert!(!Path::new(&format!("{root}{host_file}")).exists(), "the host's shared-memory files are not visible inside");
    assert!(!Path::new(&format!("/dev/shm/{own}")).exists(), "the workload's files stay out of the host's /dev/shm");
    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");
    let mut opts = CheckpointOptions::new(&images);
    opts.leave_running = true;
    wls.checkpoint(&criu, &name, &opts).unwrap();
    let tmpfs_bytes: u64 = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmpfs-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(tmpfs_bytes < 1 << 20, "the host's 4 MiB of random shm data is not archived into the image ({tmpfs_bytes} tmpfs bytes)");
}
