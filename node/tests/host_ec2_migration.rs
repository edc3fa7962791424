//! End-to-end migration on "EC2" (see `ec2_lab`): `hotspot-node migrate` moves redis with a
//! live client while the EC2 mover detaches the workload's EBS volume and ENI in moto from the
//! source instance and attaches them to the target's, and the target waits for the volume's
//! block device, mounts it and routes the ENI's address before the restore.

#[path = "ec2_lab/mod.rs"]
mod ec2_lab;

use std::time::Duration;

use ec2_lab::{Ec2Lab, ZONE};
use hotspot_node::lab;

#[test]
fn host_ec2_migration_moves_volume_and_eni_with_the_workload() {
    let Some(mut lab) = Ec2Lab::new("host_ec2_migration_moves_volume_and_eni_with_the_workload", None, None) else { return };
    // The advert carries the emulator's spot price (DescribeSpotPriceHistory), not a fixed one.
    let status = lab.daemons[0].status().unwrap();
    assert!(status.price_source.starts_with("ec2 spot t3.micro in us-east-1a"), "{}", status.price_source);
    assert_eq!(status.zone, ZONE, "zone from the metadata service");
    let seen = lab.daemons[1].peers().unwrap();
    assert!((seen[0].price_per_hour - 0.00001).abs() < 1e-9, "node2 sees node1's spot price: {}", seen[0].price_per_hour);
    lab.assert_cloud_on(0);

    let client = lab.client.as_ref().unwrap();
    lab.migrate(0, "node2").expect("hop to node2");
    assert!(lab.runs_on(1) && !lab.runs_on(0), "redis runs on node2 only");
    lab.assert_cloud_on(1);
    lab.assert_host_prepared_on(1);
    assert!(client.wait_batches(50, Duration::from_secs(10)), "served from node2");

    lab.migrate(1, "node1").expect("hop back to node1");
    assert!(lab.runs_on(0) && !lab.runs_on(1), "redis runs on node1 only");
    lab.assert_cloud_on(0);
    lab.assert_host_prepared_on(0);
    let client = lab.client.as_ref().unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(10)), "served from node1 again");
    lab.check_client();
}

#[test]
fn host_ec2_migration_source_crash_between_detach_and_attach_resumes() {
    let test = "host_ec2_migration_source_crash_between_detach_and_attach_resumes";
    let fault = "crash-after:ec2-detach";
    let Some(mut lab) = Ec2Lab::new(test, Some(fault), None) else { return };
    lab.assert_cloud_on(0);
    let err = lab.migrate(0, "node2").expect_err("node1 crashes in the middle");
    eprintln!("migrate failed as planned: {err}");
    let ((vstate, vols), (estate, eni)) = lab.cloud_state();
    assert_eq!((vstate.as_str(), vols.len(), estate.as_str(), eni), ("available", 0, "available", None), "detached, not attached");
    assert!(!lab.runs_on(0) && !lab.runs_on(1), "frozen: runs nowhere");

    // node1 comes back (without the fault) and its journal finishes the move.
    lab.flags[0].retain(|f| f != "--fault" && f != fault);
    lab.daemons[0].kill();
    lab.daemons[0] = lab.start_daemon(0);
    let took = lab::wait_until("recovery to bring redis up again", Duration::from_secs(120), || lab.runs_on(0) || lab.runs_on(1)).unwrap();
    let on = if lab.runs_on(1) { 1 } else { 0 };
    eprintln!("recovered in {took:?}: redis runs on node{}", on + 1);
    assert!(!lab.runs_on(1 - on), "runs on one node only");
    lab.assert_cloud_on(on);
    lab.assert_host_prepared_on(on);
    let client = lab.client.as_ref().unwrap();
    // TCP retransmission backoff after a long freeze: the next retry may be a minute away.
    assert!(client.wait_batches(50, Duration::from_secs(120)), "served again after the recovery");
    lab.check_client();
}

#[test]
fn host_ec2_migration_refuses_a_target_in_another_zone() {
    // node2's instance reports us-east-1b: redis's EBS volume (us-east-1a) cannot follow it.
    let Some(mut lab) = Ec2Lab::new("host_ec2_migration_refuses_a_target_in_another_zone", None, Some("us-east-1b")) else { return };
    assert_eq!(lab.daemons[1].status().unwrap().zone, "us-east-1b");
    let named = lab.migrate(0, "node2").expect_err("node2 is in another zone");
    for part in ["node2 is in zone us-east-1b", &format!("volume {} is in zone {ZONE}", lab.volume_id), "only to instances in its own zone"] {
        assert!(named.contains(part), "{part:?} missing from: {named}");
    }
    // Draining elects a target: none is left, and the evacuation says why.
    let out = lab.daemons[0].cli(&["drain", "--json"]).unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("drain:\n{report}");
    assert!(report.contains(&format!("node2: not eligible: zone us-east-1b, the volume is in {ZONE}")), "{report}");
    lab.daemons[0].cli(&["undrain"]).unwrap();
    assert!(lab.runs_on(0) && !lab.runs_on(1), "redis stays on node1");
    lab.assert_cloud_on(0);
    let client = lab.client.as_ref().unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(10)), "still served");
    lab.check_client();
}
