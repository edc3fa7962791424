//! Failures with real CRIU: a corrupt image rolls back to the source; bad input (unknown or
//! exited workloads, missing CRIU, images from a newer format, CLI misuse) gets a clear error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hotspot_node::criu::{Criu, CriuError};
use hotspot_node::sys::names::workload_netns;
use hotspot_node::sys::netns;
use hotspot_node::workload::{Checkpoint, CheckpointOptions, RestoreSpec, ServiceNet, StartOptions, WorkloadError, CHECKPOINT_META};
use hotspot_testkit::host::HostTest;
use hotspot_testkit::testbed;

const NODE: &str = env!("CARGO_BIN_EXE_hotspot-node");

fn counter(name: &str, volume: &Path, address: Option<&str>) -> StartOptions {
    StartOptions {
        name: name.into(),
        command: vec!["sh".into(), "-c".into(), "i=0; while :; do i=$((i+1)); echo $i >> count.log; sleep 0.02; done".into()],
        volume: Some(volume.into()),
        address: address.map(|a| a.parse().unwrap()),
        ..Default::default()
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect()
}

/// Damages an image the way a bad transfer would: the task's core image is cut short.
fn cut_core_image(dir: &Path) {
    let core = std::fs::read_dir(dir).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("core-")).unwrap().path();
    let len = std::fs::metadata(&core).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&core).unwrap().set_len(len / 2).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn host_corrupt_image_restore_rolls_back_to_the_source() {
    let Some(mut t) = HostTest::new("host_corrupt_image_restore_rolls_back_to_the_source") else { return };
    let (a, b) = (t.workload("rb-a"), t.workload("rb-b"));
    let (id, wls, volume) = (std::process::id(), t.workloads.clone(), t.dir("vol"));
    let addr = format!("10.77.{}.2/24", 100 + id % 100);
    wls.start(&counter(&a, &volume, Some(&addr))).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let criu = Criu::detect().unwrap();
    let (src_dir, dst_dir) = (t.tmp.path().join("source-images"), t.tmp.path().join("target-images"));
    wls.checkpoint(&criu, &a, &CheckpointOptions::new(&src_dir)).unwrap();
    let before = snapshot(&src_dir);
    let at_dump = testbed::read_counts(&volume.join("count.log"));
    // The "transferred" copy arrives damaged: the task's core image is cut short.
    copy_dir(&src_dir, &dst_dir);
    cut_core_image(&dst_dir);

    let source = Checkpoint::open(&src_dir, &criu).unwrap();
    let target = Checkpoint::open(&dst_dir, &criu).unwrap();
    let spec = RestoreSpec { name: b.clone(), netns: workload_netns(&b), service_net: ServiceNet::MoveFrom(workload_netns(&a)), timeout: Duration::from_secs(60) };
    let err = wls.restore_or_roll_back(&criu, &target, &spec, &source).unwrap_err();
    let WorkloadError::RolledBack { pid, cause } = &err else { panic!("expected a rollback, got {err}") };
    let WorkloadError::Criu(CriuError::Failed { log, last_errors, .. }) = cause.as_ref() else { panic!("cause: {cause}") };
    assert!(log.exists() && !last_errors.is_empty(), "the error carries CRIU's log {log:?} and its last lines");
    assert!(err.to_string().contains(&log.display().to_string()), "{err}");

    let w = wls.get(&a).unwrap();
    assert!(w.is_running() && w.pid() == Some(*pid), "the source workload runs again");
    assert!(netns::has_service_if(&workload_netns(&a)), "the address is back on the source");
    assert!(!netns::exists(&workload_netns(&b)), "the half-made target namespace is gone");
    assert!(wls.get(&b).is_err(), "no record for the failed target");
    std::thread::sleep(Duration::from_millis(300));
    let after = testbed::read_counts(&volume.join("count.log"));
    assert!(after.len() > at_dump.len() + 3);
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>(), "it resumed where it stopped");
    for (name, data) in &before {
        assert_eq!(std::fs::read(src_dir.join(name)).unwrap(), *data, "source image {name} is intact");
    }
}

/// A restore that fails where the service interface already is (the mover put it there) takes
/// the address down before it lifts the network lock: a client retransmit reaching an address
/// with no socket behind it would be answered with a reset (seen as a flaky CI failure).
#[test]
fn host_failed_restore_in_place_leaves_no_address_up() {
    let Some(mut t) = HostTest::new("host_failed_restore_in_place_leaves_no_address_up") else { return };
    let name = t.workload("rbp");
    let (id, ns, wls, volume) = (std::process::id(), workload_netns(&name), t.workloads.clone(), t.dir("vol"));
    let addr = format!("10.78.{}.2/24", 100 + id % 100);
    wls.start(&counter(&name, &volume, Some(&addr))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");
    wls.checkpoint(&criu, &name, &CheckpointOptions::new(&images)).unwrap();
    cut_core_image(&images);
    let cp = Checkpoint::open(&images, &criu).unwrap();
    let spec = RestoreSpec { name: name.clone(), netns: ns.clone(), service_net: ServiceNet::Present, timeout: Duration::from_secs(60) };
    let err = wls.restore(&criu, &cp, &spec).unwrap_err();
    assert!(matches!(err, WorkloadError::Criu(CriuError::Failed { .. })), "{err}");
    let link = netns::ip(&["-n", &ns, "addr", "show", "dev", netns::SERVICE_IF]).unwrap();
    let ip = addr.split('/').next().unwrap();
    assert!(!link.contains(ip), "the address stays off after the failed restore: {link}");
    assert!(!link.contains(",UP"), "the interface stays down after the failed restore: {link}");
}

#[test]
fn host_bad_input_gets_clear_errors() {
    let Some(mut t) = HostTest::new("host_bad_input_gets_clear_errors") else { return };
    let (live, gone, restored) = (t.workload("bad-live"), t.workload("bad-gone"), t.workload("bad-r"));
    let wls = t.workloads.clone();
    let criu = Criu::detect().unwrap();
    let images = t.tmp.path().join("images");

    // Unknown workload.
    let err = wls.checkpoint(&criu, "no-such-workload", &CheckpointOptions::new(&images)).unwrap_err();
    assert!(matches!(err, WorkloadError::Unknown(_)), "{err}");

    // A workload that already exited.
    wls.start(&StartOptions { name: gone.clone(), command: vec!["true".into()], ..Default::default() }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = wls.checkpoint(&criu, &gone, &CheckpointOptions::new(&images)).unwrap_err();
    assert!(matches!(err, WorkloadError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("exited"), "{err}");
    wls.stop(&gone).unwrap();

    // Missing criu, through the real binary with HOTSPOT_CRIU pointing nowhere.
    let volume = t.dir("vol");
    wls.start(&counter(&live, &volume, None)).unwrap();
    let out = Command::new(NODE)
        .env("HOTSPOT_CRIU", "/nonexistent/criu")
        .args(["workload", "--state-dir"])
        .arg(wls.state_dir())
        .args(["checkpoint", &live, "--images"])
        .arg(&images)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("criu not found") && stderr.contains("/nonexistent/criu"), "{stderr}");
    assert!(wls.get(&live).unwrap().is_running(), "a missing criu changes nothing");
    assert!(matches!(Criu::at("/nonexistent/criu".into()), Err(CriuError::NotFound { .. })));

    // Images from a newer format: our metadata, then CRIU's own inventory.
    wls.checkpoint(&criu, &live, &CheckpointOptions { leave_running: true, ..CheckpointOptions::new(&images) }).unwrap();
    assert!(wls.get(&live).unwrap().is_running(), "--leave-running keeps it running");
    Checkpoint::open(&images, &criu).unwrap();
    let meta_path = images.join(CHECKPOINT_META);
    let original = std::fs::read(&meta_path).unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&original).unwrap();
    meta["format"] = 7.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = Checkpoint::open(&images, &criu).unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
    std::fs::write(&meta_path, &original).unwrap();
    // A truncated page file is refused before CRIU runs (CRIU itself would spin on it).
    let pages = std::fs::read_dir(&images).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("pages-")).unwrap().path();
    let page_data = std::fs::read(&pages).unwrap();
    std::fs::write(&pages, &page_data[..page_data.len() / 2]).unwrap();
    let err = Checkpoint::open(&images, &criu).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::write(&pages, &page_data).unwrap();
    Checkpoint::open(&images, &criu).unwrap();
    // img_version = 3 appended to the inventory entry (the last occurrence of a field wins).
    let inventory = images.join("inventory.img");
    let mut inv = std::fs::read(&inventory).unwrap();
    // inventory.img: u32 magic, u32 entry length, entry.
    let len = u32::from_le_bytes(inv[4..8].try_into().unwrap());
    assert_eq!(inv.len(), 8 + len as usize, "one inventory entry");
    inv[4..8].copy_from_slice(&(len + 2).to_le_bytes());
    inv.extend([0x08, 0x03]);
    std::fs::write(&inventory, &inv).unwrap();
    let err = Checkpoint::open(&images, &criu).unwrap_err();
    assert!(matches!(err, WorkloadError::Criu(CriuError::NewerImages { found: 3, .. })), "{err}");
    // Restoring from them is refused before anything changes.
    let cp = Checkpoint { dir: images.clone(), meta: serde_json::from_slice(&original).unwrap(), stats: None };
    let spec = RestoreSpec { name: restored.clone(), netns: workload_netns(&restored), service_net: ServiceNet::Present, timeout: Duration::from_secs(30) };
    assert!(wls.restore(&criu, &cp, &spec).is_err());
    assert!(!netns::exists(&spec.netns));
}

#[test]
fn host_cli_explains_misuse() {
    let Some(mut t) = HostTest::new("host_cli_explains_misuse") else { return };
    let name = t.workload("cli");
    let state = t.workloads.state_dir().to_path_buf();
    let node = |args: &[&str]| {
        let out = Command::new(NODE).arg("workload").arg("--state-dir").arg(&state).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = node(&["start", &name, "--", "sleep", "60"]);
    assert!(ok, "{text}");
    let (ok, text) = node(&["list"]);
    assert!(ok && text.contains(&name) && text.contains("running"), "{text}");
    let (ok, text) = node(&["start", &name, "--", "sleep", "60"]);
    assert!(!ok && text.contains("already exists"), "name taken: {text}");
    let (ok, text) = node(&["start", "other", "--", "/no/such/program"]);
    assert!(!ok && text.contains("not found"), "command missing: {text}");
    let (ok, text) = node(&["start", "other"]);
    assert!(!ok && text.contains("CMD"), "no command: {text}");
    let (ok, text) = node(&["start", "x", "--address", "10.77.0.2", "--", "true"]);
    assert!(!ok && text.contains("prefix"), "bad address: {text}");
    let (ok, text) = node(&["stop", "never-started"]);
    assert!(!ok && text.contains("no workload named"), "{text}");
    // Not root: the same binary as nobody.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", NODE, "workload", "--state-dir", "/tmp", "start", "x", "--", "true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("root"), "not root: {text}");
    let (ok, text) = node(&["stop", &name]);
    assert!(ok, "{text}");
    assert!(!netns::exists(&workload_netns(&name)));
}
