//! The target-host half of a resource move, on real kernel objects: a loop device stands in for an
//! attached EBS volume, a veth interface in a network namespace for an attached ENI.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hotspot_node::providers::ec2::host::{configure_route, ec2_device_candidates, mount, wait_for_block_device};
use hotspot_node::providers::ec2::{MountSpec, RouteSpec};
use hotspot_testkit::host::require_migration_host;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct LoopDevice(String);
impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn host_attached_device_is_found_and_mounted_once() {
    if !require_migration_host("host_attached_device_is_found_and_mounted_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vol.img");
    std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    sh(&["mkfs.ext4", "-q", "-F", image.to_str().unwrap()]);
    let dev = LoopDevice(sh(&["losetup", "--find", "--show", image.to_str().unwrap()]).trim().to_string());

    // The EC2 name never shows up here; the loop device stands in for the NVMe alias.
    let mut candidates = ec2_device_candidates("vol-0abc", "/dev/sdz");
    assert_eq!(candidates[1], PathBuf::from("/dev/xvdz"));
    assert!(candidates[2].ends_with("nvme-Amazon_Elastic_Block_Store_vol0abc"));
    let missing = wait_for_block_device(&candidates, Duration::from_millis(250)).await.unwrap_err();
    assert!(missing.to_string().contains("/dev/xvdz"), "{missing}");
    candidates.push(PathBuf::from(&dev.0));
    let found = wait_for_block_device(&candidates, Duration::from_secs(2)).await.unwrap();
    assert_eq!(found, PathBuf::from(&dev.0));

    let point = dir.path().join("data");
    let spec = MountSpec { mount_point: point.clone(), fstype: "ext4".into(), namespace_pid: None };
    mount(&found, &spec).await.unwrap();
    let _unmount = Unmount(point.clone());
    mount(&found, &spec).await.unwrap(); // already mounted: no second mount stacked on it
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = point.to_string_lossy();
    assert_eq!(mounts.lines().filter(|l| l.split(' ').nth(4) == Some(&*here)).count(), 1);
    assert!(point.join("lost+found").is_dir(), "the ext4 file system is what is mounted");

    // Into the workload's mount namespace: visible there, not on the host.
    let mut holder = KillOnDrop(
        Command::new("unshare").args(["--mount", "--propagation", "private", "sleep", "60"]).spawn().unwrap(),
    );
    let pid = holder.0.id();
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    while std::fs::read_link(format!("/proc/{pid}/ns/mnt")).map_or(true, |ns| ns == own_ns) {
        assert!(holder.0.try_wait().unwrap().is_none(), "unshare exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ns_point = dir.path().join("in-ns");
    let spec = MountSpec { mount_point: ns_point.clone(), fstype: "ext4".into(), namespace_pid: Some(pid) };
    mount(&found, &spec).await.unwrap();
    mount(&found, &spec).await.unwrap();
    let count = |mountinfo: &str| {
        let p = ns_point.to_string_lossy();
        mountinfo.lines().filter(|l| l.split(' ').nth(4) == Some(&*p)).count()
    };
    assert_eq!(count(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap()), 1);
    assert_eq!(count(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()), 0);

    let wrong = MountSpec { fstype: "xfs".into(), mount_point: dir.path().join("other"), namespace_pid: None };
    let err = mount(&found, &wrong).await.unwrap_err();
    assert!(err.to_string().contains("mount"), "{err}");
}

#[tokio::test]
async fn host_moved_address_is_policy_routed_idempotently() {
    if !require_migration_host("host_moved_address_is_policy_routed_idempotently") {
        return;
    }
    let ns = Netns(format!("hsec2-{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    // A veth end stands in for the ENI (this kernel has no dummy interfaces).
    sh(&["ip", "-n", &ns.0, "link", "add", "eni0", "type", "veth", "peer", "name", "eni0-peer"]);
    sh(&["ip", "-n", &ns.0, "link", "set", "eni0-peer", "up"]);
    let route = RouteSpec {
        interface: "eni0".into(),
        address: "10.77.71.25/24".into(),
        gateway: Some("10.77.71.1".into()),
        table: 171,
        netns: Some(ns.0.clone()),
    };
    configure_route(&route).await.unwrap();
    configure_route(&route).await.unwrap(); // a resumed migration runs it again

    let rules = sh(&["ip", "-n", &ns.0, "rule", "show"]);
    assert_eq!(rules.lines().filter(|l| l.contains("from 10.77.71.25 lookup 171")).count(), 1, "{rules}");
    let table = sh(&["ip", "-n", &ns.0, "route", "show", "table", "171"]);
    assert!(table.contains("default via 10.77.71.1 dev eni0"), "{table}");
    let addrs = sh(&["ip", "-n", &ns.0, "addr", "show", "eni0"]);
    assert!(addrs.contains("10.77.71.25/24") && addrs.contains("UP"), "{addrs}");

    let missing = RouteSpec { interface: "eni9".into(), ..route };
    let err = configure_route(&missing).await.unwrap_err();
    assert!(err.to_string().contains("eni9"), "{err}");
}
