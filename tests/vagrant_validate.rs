//! The Vagrantfile is valid for every provider (`vagrant validate --ignore-provider`), for the
//! default three nodes and a custom count, and its provisioning runs scripts/provision-node.
//! VMs are not booted here (no hardware virtualisation): see README "Try it on three VMs".

use std::path::Path;
use std::process::Command;

fn validate(envs: &[(&str, &str)]) -> Option<(bool, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Vagrant keeps per-project state in .vagrant/ and per-user state in VAGRANT_HOME: both go
    // to a temp dir so the checkout stays clean and parallel runs do not share a lock.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(root)
        .env("VAGRANT_HOME", home.path())
        .env("VAGRANT_DOTFILE_PATH", home.path().join("dotfile"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .envs(envs.iter().copied())
        .output();
    match out {
        Ok(o) => Some((o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running vagrant: {e}"),
    }
}

#[test]
fn vagrantfile_validates_and_provisions_with_the_shared_script() {
    let Some((ok, text)) = validate(&[]) else {
        assert!(std::env::var("CI").is_err(), "vagrant is not installed; scripts/install-deps installs it");
        eprintln!("SKIPPED: vagrant is not installed (scripts/install-deps installs it)");
        return;
    };
    assert!(ok, "vagrant validate failed:\n{text}");
    assert!(text.contains("node3") && !text.contains("node4"), "three nodes by default:\n{text}");

    let (ok, text) = validate(&[("NODES", "5")]).unwrap();
    assert!(ok && text.contains("node5"), "NODES=5 gives five nodes:\n{text}");

    let (ok, text) = validate(&[("HOTSPOT_NODE_BIN", "/nonexistent/hotspot-node")]).unwrap();
    assert!(!ok && text.contains("not an executable file"), "a wrong HOTSPOT_NODE_BIN is refused clearly:\n{text}");

    let vagrantfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Vagrantfile")).unwrap();
    assert!(vagrantfile.contains("/vagrant/scripts/provision-node"), "VMs are provisioned by the one shared script");
}
