//! AWS errors moto cannot produce (throttling, missing permissions), injected by a loopback proxy
//! that answers chosen actions with EC2's error document: they surface as clear, typed errors and
//! leave the resource on the source.

mod common;

use common::fault_proxy::FaultProxy;
use common::{cluster, provider, volume, volume_state, Cluster, MotoServer, ZONE_A};
use hotspot_node::providers::ec2::Ec2Provider;
use hotspot_node::providers::ec2::{drive_or_roll_back, MoveStep, ProviderError, Resource, VolumePlan};

const DENIED: &str = "You are not authorized to perform this operation.";

/// moto behind the fault proxy, two instances, and a volume on the source to move.
struct Fixture {
    _moto: MotoServer,
    proxy: FaultProxy,
    p: Ec2Provider,
    c: Cluster,
    vol: String,
    plan: VolumePlan,
}

async fn fixture(test: &str) -> Option<Fixture> {
    let moto = MotoServer::for_test(test)?;
    let proxy = FaultProxy::start(moto.endpoint()).await;
    let p = provider(&proxy.endpoint).await;
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
    let plan = VolumePlan {
        volume: vol.clone(),
        source_host: c.source.clone(),
        target_host: c.target.clone(),
        device: "/dev/sdf".into(),
    };
    Some(Fixture { _moto: moto, proxy, p, c, vol, plan })
}

#[tokio::test]
async fn permission_denied_on_attach_rolls_back_to_source() {
    let Some(Fixture { _moto, proxy, p, c, vol, plan }) =
        fixture("permission_denied_on_attach_rolls_back_to_source").await
    else {
        return;
    };

    // The role may not attach to the target; the rollback's attach (to the source) then works.
    proxy.fail("AttachVolume", 403, "UnauthorizedOperation", DENIED, 1);
    let attaches_before = proxy.seen("AttachVolume"); // the seeding attached it to the source
    let mut persisted = Vec::new();
    let err =
        drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |s| persisted.push(s)).await.unwrap_err();
    assert_eq!(persisted, [MoveStep::Detaching, MoveStep::Detached]);
    assert_eq!(err.at, MoveStep::Detached);
    match &err.cause {
        ProviderError::PermissionDenied { op, code, .. } => {
            assert_eq!((*op, code.as_str()), ("AttachVolume", "UnauthorizedOperation"))
        }
        other => panic!("expected PermissionDenied, got {other}"),
    }
    assert!(err.rolled_back, "{err}");
    let text = err.to_string();
    assert!(text.contains("permission denied") && text.contains("IAM") && text.contains("rolled back"), "{text}");
    assert!(!err.cause.is_transient());
    assert_eq!(proxy.seen("AttachVolume") - attaches_before, 2, "one refused attach, one rollback attach");
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.source.clone()]));
}

#[tokio::test]
async fn throttling_is_retried_then_surfaces_clearly() {
    let Some(Fixture { _moto, proxy, p, c, vol, plan }) = fixture("throttling_is_retried_then_surfaces_clearly").await
    else {
        return;
    };

    // Throttled once: the SDK's retry absorbs it and the move completes.
    proxy.fail("DetachVolume", 503, "RequestLimitExceeded", "Request limit exceeded.", 1);
    drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |_| {}).await.unwrap();
    assert_eq!(proxy.seen("DetachVolume"), 2);
    assert_eq!(volume_state(p.client(), &vol).await.1, vec![c.target.clone()]);

    // Throttled on every attempt (3, the default): a typed, transient error naming the call, and
    // the volume stays where it was.
    let back = VolumePlan { source_host: c.target.clone(), target_host: c.source.clone(), ..plan };
    proxy.fail("DetachVolume", 503, "RequestLimitExceeded", "Request limit exceeded.", 100);
    let err = drive_or_roll_back(&p, Resource::Volume(&back), MoveStep::Planned, |_| {}).await.unwrap_err();
    match &err.cause {
        ProviderError::Throttled { op, code, .. } => {
            assert_eq!((*op, code.as_str()), ("DetachVolume", "RequestLimitExceeded"))
        }
        other => panic!("expected Throttled, got {other}"),
    }
    assert!(err.cause.is_transient());
    assert!(err.to_string().contains("try again later"), "{err}");
    assert_eq!(proxy.seen("DetachVolume"), 2 + 3);
    assert!(err.rolled_back);
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.target.clone()]));
}

#[tokio::test]
async fn permission_denied_on_describe_refuses_before_any_change() {
    let Some(Fixture { _moto, proxy, p, c, vol, plan }) =
        fixture("permission_denied_on_describe_refuses_before_any_change").await
    else {
        return;
    };

    proxy.fail("DescribeInstances", 403, "UnauthorizedOperation", DENIED, 1);
    let err = drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |_| {}).await.unwrap_err();
    assert!(matches!(err.cause, ProviderError::PermissionDenied { op: "DescribeInstances", .. }), "{err}");
    assert!(!err.rolled_back && err.rollback_error.is_none());
    assert_eq!(proxy.seen("DetachVolume"), 0);
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.source.clone()]));
}

#[tokio::test]
async fn unreachable_api_is_a_transient_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = provider(&format!("http://127.0.0.1:{port}")).await;
    let plan = VolumePlan { volume: "vol-1".into(), source_host: "i-1".into(), target_host: "i-2".into(), device: "/dev/sdf".into() };
    let err = drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |_| {}).await.unwrap_err();
    assert!(matches!(err.cause, ProviderError::Transport { op: "DescribeVolumes", .. }), "{err}");
    assert!(err.cause.is_transient());
    let text = err.to_string();
    assert!(text.contains("could not reach the cloud API") && text.contains("onnection refused"), "{text}");
}
