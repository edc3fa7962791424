//! Adopting a runc container (busybox rootfs) and moving it with CRIU through runc.

use std::process::{Command, Stdio};
use std::time::Duration;

use hotspot_node::sys::names::{restore_netns, workload_netns};
use hotspot_node::criu::Criu;
use hotspot_testkit::testbed::{self, Cleanup};
use hotspot_testkit::host;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, WorkloadKind, Workloads};

#[test]
fn host_runc_container_is_adopted_checkpointed_and_restored() {
    if !host::require_migration_host("host_runc_container_is_adopted_checkpointed_and_restored") {
        return;
    }
    let (Some(_), Ok(busybox)) = (hotspot_node::sys::program::find_program("runc"), which_busybox()) else {
        panic!("runc and busybox are installed by scripts/install-deps");
    };
    let id = std::process::id();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let bundle = tmp.path().join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    assert!(Command::new("runc").arg("spec").current_dir(&bundle).status().unwrap().success());
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i >> /count.log; sleep 0.02; done"]);
    config["root"]["readonly"] = false.into();
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();

    let wls = Workloads::new(tmp.path().join("state"));
    let (container, name) = (format!("hs-test-{id}"), format!("runc-{id}"));
    let mut guard = Cleanup::new(wls.clone());
    guard.names.push(name.clone());
    guard.netns.extend([workload_netns(&name), restore_netns(&name, &"r")]);
    let _container_guard = RuncGuard(container.clone());
    let started = Command::new("runc")
        .args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .arg(&container)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    std::thread::sleep(Duration::from_millis(300));

    let w = wls.adopt_runc(&container, &name).unwrap();
    assert!(matches!(w.record.kind, WorkloadKind::Runc { .. }) && w.is_running());
    assert!(wls.adopt_runc("no-such-container", "other").is_err(), "unknown containers are refused");

    let criu = Criu::detect().unwrap();
    let images = tmp.path().join("images");
    wls.checkpoint(&criu, &name, &CheckpointOptions::new(&images)).unwrap();
    let count_file = bundle.join("rootfs/count.log");
    let at_dump = testbed::read_counts(&count_file);
    let cp = Checkpoint::open(&images, &criu).unwrap();
    let spec = RestoreSpec { name: name.clone(), netns: restore_netns(&name, &"r"), service_net: ServiceNet::Present, timeout: Duration::from_secs(60) };
    let (restored, _) = wls.restore(&criu, &cp, &spec).unwrap();
    assert!(restored.is_running());
    std::thread::sleep(Duration::from_millis(300));
    let after = testbed::read_counts(&count_file);
    assert!(after.len() > at_dump.len() + 3, "the container keeps counting");
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>(), "from where it stopped");
    wls.stop(&name).unwrap();
}

fn which_busybox() -> Result<std::path::PathBuf, ()> {
    hotspot_node::sys::program::find_program("busybox").ok_or(())
}

/// Deletes the runc container even if the test fails half-way.
struct RuncGuard(String);

impl Drop for RuncGuard {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "--force", &self.0]).stderr(Stdio::null()).status();
    }
}
