//! Address moves: a whole ENI (detach/attach), or a secondary private IP / Elastic IP re-assigned
//! to the target's interface in one call (EC2 moves those atomically with "allow reassignment").

use tracing::{info, instrument};

use super::call::call;
use super::describe::wait_until;
use super::movable;
use super::resources::{describe_interface, InterfaceMove};
use super::Ec2Provider;
use crate::providers::ec2::{AddressPlan, MoveStep, ProviderError};

#[instrument(skip_all, fields(plan = ?plan, step = ?at))]
pub(super) async fn step(p: &Ec2Provider, plan: &AddressPlan, at: MoveStep) -> Result<MoveStep, ProviderError> {
    if let Some(eni) = interface_move(plan) {
        return movable::step(p, &eni, at).await;
    }
    let target = reassign_target(plan, false);
    if holder(p, plan).await?.as_deref() == Some(target) {
        return Ok(MoveStep::Attached);
    }
    match at {
        MoveStep::Planned => {
            validate(p, plan).await?;
            // Nothing to detach: the reassignment below takes it from the source in one call.
            Ok(MoveStep::Detached)
        }
        MoveStep::Detaching | MoveStep::Detached => {
            reassign(p, plan, target).await?;
            Ok(MoveStep::Attached)
        }
        MoveStep::Attached => Ok(MoveStep::Attached),
    }
}

#[instrument(skip_all, fields(plan = ?plan))]
pub(super) async fn roll_back(p: &Ec2Provider, plan: &AddressPlan) -> Result<(), ProviderError> {
    if let Some(eni) = interface_move(plan) {
        return movable::roll_back(p, &eni).await;
    }
    let source = reassign_target(plan, true);
    if holder(p, plan).await?.as_deref() != Some(source) {
        reassign(p, plan, source).await?;
    }
    Ok(())
}

fn interface_move(plan: &AddressPlan) -> Option<InterfaceMove<'_>> {
    match plan {
        AddressPlan::Interface { interface, source_host, target_host, device_index } => {
            Some(InterfaceMove { interface, source_host, target_host, device_index: *device_index })
        }
        _ => None,
    }
}

/// The interface a re-assignable address should end up on (`back`: the source's).
fn reassign_target(plan: &AddressPlan, back: bool) -> &str {
    match plan {
        AddressPlan::SecondaryIp { source_interface, target_interface, .. }
        | AddressPlan::ElasticIp { source_interface, target_interface, .. } => {
            if back {
                source_interface
            } else {
                target_interface
            }
        }
        AddressPlan::Interface { .. } => unreachable!("interfaces move by detach/attach"),
    }
}

/// The interface that holds the address now, if any.
async fn holder(p: &Ec2Provider, plan: &AddressPlan) -> Result<Option<String>, ProviderError> {
    match plan {
        AddressPlan::SecondaryIp { ip, source_interface, target_interface } => {
            for eni in [target_interface, source_interface] {
                if interface_ips(p, eni).await?.contains(ip) {
                    return Ok(Some(eni.clone()));
                }
            }
            Ok(None)
        }
        AddressPlan::ElasticIp { allocation, .. } => {
            let req = p.client.describe_addresses().allocation_ids(allocation);
            let out = call(&p.stats, "DescribeAddresses", req.send()).await?;
            let addr = out
                .addresses()
                .first()
                .ok_or_else(|| ProviderError::NotFound { what: "elastic IP", id: allocation.clone() })?;
            Ok(addr.network_interface_id().map(str::to_string))
        }
        AddressPlan::Interface { .. } => unreachable!("interfaces move by detach/attach"),
    }
}

/// A secondary IP can only move between interfaces of the same subnet.
async fn validate(p: &Ec2Provider, plan: &AddressPlan) -> Result<(), ProviderError> {
    let (AddressPlan::SecondaryIp { ip, source_interface, target_interface }
    | AddressPlan::ElasticIp { allocation: ip, source_interface, target_interface }) = plan
    else {
        return Ok(());
    };
    let src = describe_interface(p, source_interface).await?;
    let dst = describe_interface(p, target_interface).await?;
    if matches!(plan, AddressPlan::SecondaryIp { .. }) && src.subnet_id() != dst.subnet_id() {
        return Err(ProviderError::BadState {
            what: "secondary IP",
            id: ip.clone(),
            state: format!(
                "source subnet {}, target subnet {}",
                src.subnet_id().unwrap_or("?"),
                dst.subnet_id().unwrap_or("?")
            ),
            why: "a private IP can only move between interfaces in the same subnet",
        });
    }
    Ok(())
}

/// Assigns the address to `to`, taking it from wherever it is, and waits until it shows there.
async fn reassign(p: &Ec2Provider, plan: &AddressPlan, to: &str) -> Result<(), ProviderError> {
    match plan {
        AddressPlan::SecondaryIp { ip, .. } => {
            let req = p
                .client
                .assign_private_ip_addresses()
                .network_interface_id(to)
                .private_ip_addresses(ip)
                .allow_reassignment(true);
            call(&p.stats, "AssignPrivateIpAddresses", req.send()).await?;
        }
        AddressPlan::ElasticIp { allocation, .. } => {
            let req = p
                .client
                .associate_address()
                .allocation_id(allocation)
                .network_interface_id(to)
                .allow_reassociation(true);
            call(&p.stats, "AssociateAddress", req.send()).await?;
        }
        AddressPlan::Interface { .. } => unreachable!("interfaces move by detach/attach"),
    }
    info!(to, "address reassigned");
    match plan {
        AddressPlan::SecondaryIp { ip, source_interface, target_interface } => {
            let on = |eni: &str| {
                let eni = eni.to_string();
                async move { Ok::<_, ProviderError>(interface_ips(p, &eni).await?.contains(ip)) }
            };
            wait_until(p, "reassign", "secondary IP", ip, || on(to), |here| *here, |_| format!("not yet on {to}"))
                .await?;
            // EC2 takes the IP off the other interface itself; the emulator leaves it on both, and
            // a duplicate address would answer ARP from two hosts. Make sure, idempotently.
            let other = if to == source_interface.as_str() { target_interface } else { source_interface };
            if on(other).await? {
                let req = p.client.unassign_private_ip_addresses().network_interface_id(other).private_ip_addresses(ip);
                call(&p.stats, "UnassignPrivateIpAddresses", req.send()).await?;
            }
        }
        _ => {
            let done = |h: &Option<String>| h.as_deref() == Some(to);
            wait_until(p, "reassign", "elastic IP", to, || holder(p, plan), done, |h| format!("on {h:?}")).await?;
        }
    }
    Ok(())
}

async fn interface_ips(p: &Ec2Provider, eni: &str) -> Result<Vec<String>, ProviderError> {
    let desc = describe_interface(p, eni).await?;
    Ok(desc.private_ip_addresses().iter().filter_map(|a| a.private_ip_address()).map(str::to_string).collect())
}
