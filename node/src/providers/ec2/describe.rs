//! Reading an instance's zone, and waiting for a state change.

use std::future::Future;
use std::time::Instant;

use aws_sdk_ec2::types::InstanceStateName;

use super::call::call;
use super::Ec2Provider;
use crate::providers::ec2::ProviderError;

/// Zone of a running (or pending) instance; other states are refused as move targets.
pub(super) async fn instance_zone(p: &Ec2Provider, id: &str) -> Result<String, ProviderError> {
    let out = call(&p.stats, "DescribeInstances", p.client.describe_instances().instance_ids(id).send()).await?;
    let inst = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| ProviderError::NotFound { what: "instance", id: id.into() })?;
    let state = inst.state().and_then(|s| s.name()).cloned().unwrap_or(InstanceStateName::Terminated);
    if !matches!(state, InstanceStateName::Running | InstanceStateName::Pending) {
        return Err(ProviderError::BadState {
            what: "instance",
            id: id.into(),
            state: state.as_str().into(),
            why: "only a running instance can receive a workload's resources",
        });
    }
    Ok(inst.placement().and_then(|pl| pl.availability_zone()).unwrap_or_default().to_string())
}

/// Polls `probe` until `done` holds, every `poll_interval`, for at most `state_timeout`.
pub(super) async fn wait_until<T, F, Fut>(
    p: &Ec2Provider,
    op: &'static str,
    what: &'static str,
    id: &str,
    mut probe: F,
    done: impl Fn(&T) -> bool,
    show: impl Fn(&T) -> String,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let started = Instant::now();
    loop {
        let seen = probe().await?;
        if done(&seen) {
            return Ok(seen);
        }
        if started.elapsed() >= p.state_timeout() {
            return Err(ProviderError::Timeout {
                op,
                what,
                id: id.into(),
                waited: started.elapsed(),
                last_state: show(&seen),
            });
        }
        tokio::time::sleep(p.poll_interval()).await;
    }
}
