//! Auto-join on EC2, where there is no multicast for mDNS: peers are the running instances that
//! carry the cluster's tag.

use std::net::IpAddr;

use aws_sdk_ec2::types::Filter;

use super::call::{call, CallStats};
use crate::providers::ec2::ProviderError;

/// Default tag key naming an instance's cluster.
pub const DEFAULT_CLUSTER_TAG: &str = "hotspot-mesh:cluster";

/// A running instance of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInstance {
    pub instance_id: String,
    pub private_ip: IpAddr,
    pub zone: String,
}

/// Running instances tagged `tag_key=cluster`, except `exclude` (this node), sorted by id.
pub async fn discover_peers(
    client: &aws_sdk_ec2::Client,
    tag_key: &str,
    cluster: &str,
    exclude: Option<&str>,
) -> Result<Vec<PeerInstance>, ProviderError> {
    let stats = CallStats::default();
    let mut peers = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let req = client
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{tag_key}")).values(cluster).build())
            .filters(Filter::builder().name("instance-state-name").values("running").build())
            .set_next_token(next.take());
        let out = call(&stats, "DescribeInstances", req.send()).await?;
        for inst in out.reservations().iter().flat_map(|r| r.instances()) {
            let Some(id) = inst.instance_id() else { continue };
            if Some(id) == exclude {
                continue;
            }
            // An instance still without a private address cannot be dialled yet; next round.
            let Some(ip) = inst.private_ip_address().and_then(|ip| ip.parse().ok()) else { continue };
            let zone = inst.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string();
            peers.push(PeerInstance { instance_id: id.to_string(), private_ip: ip, zone });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    peers.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(peers)
}

/// Looks for the cluster's running instances every `every` until `cancel` fires, and sends
/// those not seen before (not `exclude`) to `found`: nodes that boot after this one. Errors of
/// one round are logged and the next round tries again. Ends when `found`'s receiver is gone.
pub async fn watch_peers(
    client: aws_sdk_ec2::Client,
    tag_key: String,
    cluster: String,
    exclude: Option<String>,
    every: std::time::Duration,
    found: tokio::sync::mpsc::Sender<Vec<PeerInstance>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut seen = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = discover_peers(&client, &tag_key, &cluster, exclude.as_deref()) => r,
        };
        match round {
            Ok(peers) => {
                let new: Vec<PeerInstance> = peers.into_iter().filter(|p| seen.insert(p.instance_id.clone())).collect();
                if new.is_empty() {
                    continue;
                }
                tracing::info!(count = new.len(), ids = ?new.iter().map(|p| &p.instance_id).collect::<Vec<_>>(), "new cluster instances");
                if found.send(new).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster discovery failed; trying again next round"),
        }
    }
}
