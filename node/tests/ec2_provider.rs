//! The EC2 provider against moto's EC2 emulator: full volume and ENI moves between two instances,
//! the checks moto does not make (in-use, zone), crash-resume from persisted step state, address
//! re-assignment, discovery and the spot price.

mod common;

use std::time::Duration;

use common::{cluster, interface, interface_holder, provider, run_instance, volume, volume_state, MotoServer, ZONE_A};
use hotspot_node::providers::ec2::discovery::discover_peers;
use hotspot_node::providers::ec2::price::SpotPriceSource;
use hotspot_node::providers::ec2::{
    drive_or_roll_back, AddressPlan, MoveStep, PersistedStep, Provider, ProviderError, Resource, VolumePlan,
};

fn plan(volume: &str, source: &str, target: &str) -> VolumePlan {
    VolumePlan {
        volume: volume.into(),
        source_host: source.into(),
        target_host: target.into(),
        device: "/dev/sdf".into(),
    }
}

#[tokio::test]
async fn volume_moves_to_target_then_rolls_back_to_source() {
    let Some(moto) = MotoServer::for_test("volume_moves_to_target_then_rolls_back_to_source") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
    let plan = plan(&vol, &c.source, &c.target);

    let mut persisted = Vec::new();
    drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |s| persisted.push(s)).await.unwrap();
    assert_eq!(persisted, [MoveStep::Detaching, MoveStep::Detached, MoveStep::Attached]);
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.target.clone()]));
    // Every step is idempotent: asking again changes nothing.
    for step in [MoveStep::Planned, MoveStep::Detaching, MoveStep::Detached, MoveStep::Attached] {
        assert_eq!(p.volume_step(&plan, step).await.unwrap(), MoveStep::Attached);
    }
    assert_eq!(volume_state(p.client(), &vol).await.1, vec![c.target.clone()]);

    p.roll_back_volume(&plan).await.unwrap();
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.source.clone()]));
    p.roll_back_volume(&plan).await.unwrap(); // idempotent too
    assert_eq!(volume_state(p.client(), &vol).await.1, vec![c.source.clone()]);
}

#[tokio::test]
async fn volume_in_use_elsewhere_is_refused_without_touching_it() {
    let Some(moto) = MotoServer::for_test("volume_in_use_elsewhere_is_refused_without_touching_it") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let stranger = run_instance(p.client(), ZONE_A, None).await;
    let vol = volume(p.client(), ZONE_A, Some(stranger.as_str())).await;
    let plan = plan(&vol, &c.source, &c.target);

    let err = drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |_| {}).await.unwrap_err();
    assert!(matches!(&err.cause, ProviderError::InUse { attached_to, .. } if *attached_to == stranger), "{err}");
    assert!(!err.rolled_back && err.at == MoveStep::Planned);
    // Resumed at the attach step (e.g. someone grabbed it after our detach): still refused, and
    // moto, which would attach it twice, is never asked to.
    let err = p.volume_step(&plan, MoveStep::Detached).await.unwrap_err();
    assert!(matches!(err, ProviderError::InUse { .. }), "{err}");
    assert!(err.to_string().contains(&stranger), "{err}");
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![stranger]));
}

#[tokio::test]
async fn zone_mismatch_is_refused_before_anything_moves() {
    let Some(moto) = MotoServer::for_test("zone_mismatch_is_refused_before_anything_moves") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
    let plan = plan(&vol, &c.source, &c.far);

    let err = drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Planned, |_| {}).await.unwrap_err();
    match &err.cause {
        ProviderError::WrongZone { resource_zone, host_zone, .. } => {
            assert_eq!((resource_zone.as_str(), host_zone.as_str()), (ZONE_A, common::ZONE_B));
        }
        other => panic!("expected WrongZone, got {other}"),
    }
    assert!(err.to_string().contains("only move within its zone"), "{err}");
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.source.clone()]));

    // The same check guards the attach step when a journal resumes there.
    p.client().detach_volume().volume_id(&vol).instance_id(&c.source).send().await.unwrap();
    let err = p.volume_step(&plan, MoveStep::Detached).await.unwrap_err();
    assert!(matches!(err, ProviderError::WrongZone { .. }), "{err}");
    assert_eq!(volume_state(p.client(), &vol).await, ("available".into(), vec![]));

    // ENIs are zone-bound as well.
    let eni = interface(p.client(), &c.subnet_a, Some(c.source.as_str())).await;
    let addr = AddressPlan::Interface {
        interface: eni.clone(),
        source_host: c.source.clone(),
        target_host: c.far.clone(),
        device_index: 1,
    };
    let err = p.address_step(&addr, MoveStep::Planned).await.unwrap_err();
    assert!(matches!(err, ProviderError::WrongZone { .. }), "{err}");
    assert_eq!(interface_holder(p.client(), &eni).await.as_deref(), Some(c.source.as_str()));
    // A volume that does not exist is named in EC2's own words.
    let ghost = VolumePlan { volume: "vol-00000000000000000".into(), ..plan.clone() };
    let err = p.volume_step(&ghost, MoveStep::Planned).await.unwrap_err();
    assert!(err.to_string().contains("DescribeVolumes") && err.to_string().contains("NotFound"), "{err}");
}

#[tokio::test]
async fn crash_between_detach_and_attach_resumes_from_persisted_step() {
    let Some(moto) = MotoServer::for_test("crash_between_detach_and_attach_resumes_from_persisted_step") else {
        return;
    };
    let c;
    let vol;
    let journal: Vec<u8>;
    {
        let p = provider(moto.endpoint()).await;
        c = cluster(p.client()).await;
        vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
        let plan = plan(&vol, &c.source, &c.target);
        let mut at = MoveStep::Planned;
        let mut last = Vec::new();
        // The node runs the steps up to the detach, persisting each, then "crashes" (everything
        // in this scope is dropped; only the persisted bytes survive).
        while at != MoveStep::Detached {
            at = p.volume_step(&plan, at).await.unwrap();
            last = PersistedStep::encode(at);
        }
        journal = last;
    }
    let p = provider(moto.endpoint()).await; // a fresh process: new client, new provider
    assert_eq!(volume_state(p.client(), &vol).await, ("available".into(), vec![]));
    let resumed_at = PersistedStep::decode(&journal).unwrap();
    assert_eq!(resumed_at, MoveStep::Detached);
    let plan = plan(&vol, &c.source, &c.target);
    let mut persisted = Vec::new();
    drive_or_roll_back(&p, Resource::Volume(&plan), resumed_at, |s| persisted.push(s)).await.unwrap();
    assert_eq!(persisted, [MoveStep::Attached]);
    assert_eq!(volume_state(p.client(), &vol).await, ("in-use".into(), vec![c.target.clone()]));
}

#[tokio::test]
async fn crash_after_detach_request_before_persisting_resumes() {
    let Some(moto) = MotoServer::for_test("crash_after_detach_request_before_persisting_resumes") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let vol = volume(p.client(), ZONE_A, Some(c.source.as_str())).await;
    // The detach request went out but the node died before persisting `Detached`: the journal
    // still says `Detaching`, and resuming must neither fail nor detach twice.
    p.client().detach_volume().volume_id(&vol).instance_id(&c.source).send().await.unwrap();
    let plan = plan(&vol, &c.source, &c.target);
    let before = p.call_stats().calls();
    let mut persisted = Vec::new();
    drive_or_roll_back(&p, Resource::Volume(&plan), MoveStep::Detaching, |s| persisted.push(s)).await.unwrap();
    assert_eq!(persisted, [MoveStep::Detached, MoveStep::Attached]);
    assert_eq!(volume_state(p.client(), &vol).await.1, vec![c.target.clone()]);
    assert!(p.call_stats().calls() > before);
}

#[tokio::test]
async fn interface_moves_to_target_then_rolls_back() {
    let Some(moto) = MotoServer::for_test("interface_moves_to_target_then_rolls_back") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let eni = interface(p.client(), &c.subnet_a, Some(c.source.as_str())).await;
    let plan = AddressPlan::Interface {
        interface: eni.clone(),
        source_host: c.source.clone(),
        target_host: c.target.clone(),
        device_index: 1,
    };

    let mut persisted = Vec::new();
    drive_or_roll_back(&p, Resource::Address(&plan), MoveStep::Planned, |s| persisted.push(s)).await.unwrap();
    assert_eq!(persisted, [MoveStep::Detaching, MoveStep::Detached, MoveStep::Attached]);
    assert_eq!(interface_holder(p.client(), &eni).await.as_deref(), Some(c.target.as_str()));
    assert_eq!(p.address_step(&plan, MoveStep::Detaching).await.unwrap(), MoveStep::Attached);

    p.roll_back_address(&plan).await.unwrap();
    assert_eq!(interface_holder(p.client(), &eni).await.as_deref(), Some(c.source.as_str()));
}

#[tokio::test]
async fn primary_interface_is_refused() {
    let Some(moto) = MotoServer::for_test("primary_interface_is_refused") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let out = p.client().describe_instances().instance_ids(&c.source).send().await.unwrap();
    let inst = &out.reservations()[0].instances()[0];
    let primary = inst.network_interfaces()[0].network_interface_id().unwrap().to_string();
    let plan = AddressPlan::Interface {
        interface: primary.clone(),
        source_host: c.source.clone(),
        target_host: c.target.clone(),
        device_index: 1,
    };
    let err = p.address_step(&plan, MoveStep::Planned).await.unwrap_err();
    assert!(err.to_string().contains("primary interface"), "{err}");
    assert_eq!(interface_holder(p.client(), &primary).await.as_deref(), Some(c.source.as_str()));
}

#[tokio::test]
async fn secondary_ip_and_elastic_ip_move_to_target_interface() {
    let Some(moto) = MotoServer::for_test("secondary_ip_and_elastic_ip_move_to_target_interface") else { return };
    let p = provider(moto.endpoint()).await;
    let c = cluster(p.client()).await;
    let src = interface(p.client(), &c.subnet_a, Some(c.source.as_str())).await;
    let dst = interface(p.client(), &c.subnet_a, Some(c.target.as_str())).await;
    let assigned = p
        .client()
        .assign_private_ip_addresses()
        .network_interface_id(&src)
        .secondary_private_ip_address_count(1)
        .send()
        .await
        .unwrap();
    let ip = assigned.assigned_private_ip_addresses()[0].private_ip_address().unwrap().to_string();
    let plan =
        AddressPlan::SecondaryIp { ip: ip.clone(), source_interface: src.clone(), target_interface: dst.clone() };
    drive_or_roll_back(&p, Resource::Address(&plan), MoveStep::Planned, |_| {}).await.unwrap();
    assert!(interface_ips(p.client(), &dst).await.contains(&ip));
    assert!(!interface_ips(p.client(), &src).await.contains(&ip));
    p.roll_back_address(&plan).await.unwrap();
    assert!(interface_ips(p.client(), &src).await.contains(&ip));

    let alloc = p.client().allocate_address().domain(aws_sdk_ec2::types::DomainType::Vpc).send().await.unwrap();
    let alloc = alloc.allocation_id().unwrap().to_string();
    p.client().associate_address().allocation_id(&alloc).network_interface_id(&src).send().await.unwrap();
    let plan = AddressPlan::ElasticIp {
        allocation: alloc.clone(),
        source_interface: src.clone(),
        target_interface: dst.clone(),
    };
    drive_or_roll_back(&p, Resource::Address(&plan), MoveStep::Planned, |_| {}).await.unwrap();
    let out = p.client().describe_addresses().allocation_ids(&alloc).send().await.unwrap();
    assert_eq!(out.addresses()[0].network_interface_id(), Some(dst.as_str()));
}

async fn interface_ips(c: &aws_sdk_ec2::Client, eni: &str) -> Vec<String> {
    let out = c.describe_network_interfaces().network_interface_ids(eni).send().await.unwrap();
    out.network_interfaces()[0]
        .private_ip_addresses()
        .iter()
        .filter_map(|a| a.private_ip_address())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn discovery_returns_running_tagged_peers_private_ips() {
    let Some(moto) = MotoServer::for_test("discovery_returns_running_tagged_peers_private_ips") else { return };
    let p = provider(moto.endpoint()).await;
    let me = run_instance(p.client(), ZONE_A, Some("blue")).await;
    let peer_a = run_instance(p.client(), ZONE_A, Some("blue")).await;
    let peer_b = run_instance(p.client(), common::ZONE_B, Some("blue")).await;
    let _other_cluster = run_instance(p.client(), ZONE_A, Some("green")).await;
    let _untagged = run_instance(p.client(), ZONE_A, None).await;
    let stopped = run_instance(p.client(), ZONE_A, Some("blue")).await;
    p.client().stop_instances().instance_ids(&stopped).send().await.unwrap();

    let peers = discover_peers(p.client(), "hotspot-mesh:cluster", "blue", Some(me.as_str())).await.unwrap();
    let mut want = vec![peer_a.clone(), peer_b.clone()];
    want.sort();
    assert_eq!(peers.iter().map(|p| p.instance_id.clone()).collect::<Vec<_>>(), want);
    for peer in &peers {
        let out = p.client().describe_instances().instance_ids(&peer.instance_id).send().await.unwrap();
        let ip = out.reservations()[0].instances()[0].private_ip_address().unwrap();
        assert_eq!(peer.private_ip.to_string(), ip);
    }
    assert_eq!(peers.iter().find(|x| x.instance_id == peer_b).unwrap().zone, common::ZONE_B);
}

#[tokio::test]
async fn spot_price_is_read_cached_and_refreshed() {
    let Some(moto) = MotoServer::for_test("spot_price_is_read_cached_and_refreshed") else { return };
    let client = hotspot_node::providers::ec2::build_client(&common::settings(moto.endpoint())).await;
    let source = std::sync::Arc::new(SpotPriceSource::new(client.clone(), "t3.micro", ZONE_A, Duration::from_secs(60)));
    assert_eq!(source.latest(), None);
    let first = source.current_price().await.unwrap();
    assert!(first.usd_per_hour > 0.0 && first.usd_per_hour < 10.0, "{first:?}");
    assert_eq!(source.calls(), 1);
    assert_eq!(source.current_price().await.unwrap(), first); // cached: no second call
    assert_eq!(source.calls(), 1);

    let cancel = tokio_util::sync::CancellationToken::new();
    let mut updates = source.subscribe();
    updates.borrow_and_update();
    let task = tokio::spawn(source.clone().run_refresher(Duration::from_millis(50), cancel.clone()));
    tokio::time::timeout(Duration::from_secs(10), updates.changed()).await.unwrap().unwrap();
    cancel.cancel();
    task.await.unwrap();
    assert!(source.calls() >= 2);
    assert_eq!(source.latest().unwrap().usd_per_hour, first.usd_per_hour);

    let unknown = SpotPriceSource::new(client, "t3.micro", "us-east-1z", Duration::from_secs(60));
    let err = unknown.current_price().await.unwrap_err();
    assert!(err.to_string().contains("us-east-1z"), "{err}");
}
