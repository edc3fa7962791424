//! A spot interruption notice on "EC2" (see `ec2_lab`): the notice is switched on in node1's
//! IMDSv2 metadata server; node1's daemon sees it on its next poll, announces `leaving`, and
//! evacuates redis (with its live client) to node2 before the notice's deadline, moving the EBS
//! volume and the ENI in moto to node2's instance.

#[path = "ec2_lab/mod.rs"]
mod ec2_lab;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ec2_lab::Ec2Lab;
use hotspot_node::lab;
use hotspot_protocol::NodeState;

/// Seconds EC2 gives between the notice and the interruption.
const NOTICE_SECS: u64 = 120;

/// `unix` seconds as the RFC 3339 UTC time EC2 puts in `spot/instance-action`.
fn rfc3339(unix: u64) -> String {
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(1_795_327_200), "2026-11-22T06:00:00Z");
    assert_eq!(rfc3339(1_709_164_801), "2024-02-29T00:00:01Z");
}

#[test]
fn host_ec2_notice_evacuates_before_the_deadline() {
    let Some(mut lab) = Ec2Lab::new("host_ec2_notice_evacuates_before_the_deadline", None, None) else { return };
    lab.assert_cloud_on(0);
    let node1 = lab.daemons[0].status().unwrap().node;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let noticed = Instant::now();
    lab.imds[0].set_spot_action(Some(("terminate", &rfc3339(now + NOTICE_SECS))));

    // node1 says it is leaving: node2 drops it from its live peers (no more workloads for it)...
    lab::wait_until("node1 to announce leaving", Duration::from_secs(30), || {
        lab.daemons[0].status().is_ok_and(|s| s.state == NodeState::Leaving) && lab.daemons[1].peers().is_ok_and(|p| p.iter().all(|r| r.node != node1))
    })
    .unwrap();
    // ...and redis is on node2 before the deadline, with its volume and ENI.
    let moved = lab::wait_until("redis to run on node2", Duration::from_secs(NOTICE_SECS), || lab.runs_on(1) && !lab.runs_on(0));
    let took = moved.unwrap_or_else(|e| {
        lab.print_daemon_problems();
        panic!("{e}")
    });
    let since_notice = noticed.elapsed();
    eprintln!("evacuated {since_notice:?} after the notice (waited {took:?} after node1 left)");
    assert!(since_notice < Duration::from_secs(NOTICE_SECS), "moved before the interruption");
    lab.assert_cloud_on(1);
    lab.assert_host_prepared_on(1);
    assert_eq!(lab.daemons[0].status().unwrap().state, NodeState::Leaving, "node1 stays leaving");
    let client = lab.client.as_ref().unwrap();
    assert!(client.wait_batches(50, Duration::from_secs(20)), "served from node2");
    lab.check_client();
}
