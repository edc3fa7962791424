//! Running every policy of a scenario, in parallel threads.

use std::sync::atomic::AtomicU64;

use crate::engine::{Sim, SimError};
use crate::metrics::RunReport;
use crate::params::{EngineParams, Policy};
use crate::scenario::{RevocationCause, Scenario, DAY_MS};

/// Simulated time (ms) reached by each policy's run, for a progress display.
pub struct Progress {
    pub per_policy: Vec<AtomicU64>,
    pub horizon_ms: u64,
}

impl Progress {
    pub fn new(policies: usize, horizon_ms: u64) -> Self {
        Progress { per_policy: (0..policies).map(|_| AtomicU64::new(0)).collect(), horizon_ms }
    }

    /// 0.0..=1.0 over all policies.
    pub fn fraction(&self) -> f64 {
        let done: u64 = self.per_policy.iter().map(|a| a.load(std::sync::atomic::Ordering::Relaxed)).sum();
        done as f64 / (self.horizon_ms.max(1) as f64 * self.per_policy.len().max(1) as f64)
    }
}

/// Runs `policies` on `scenario`, at most `jobs` at a time. Results come back in `policies` order.
pub fn run_policies(
    scenario: &Scenario,
    params: &EngineParams,
    policies: &[Policy],
    jobs: usize,
    progress: Option<&Progress>,
) -> Result<RunReport, SimError> {
    let mut slots: Vec<Option<Result<_, SimError>>> = (0..policies.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, policies.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&policy) = policies.get(i) else { break };
                let sim = Sim::new(scenario, policy, params);
                let out = sim.run(progress.map(|p| &p.per_policy[i]));
                results.lock().expect("a simulation thread panicked")[i] = Some(out);
            });
        }
    });
    let results = slots.into_iter().map(|r| r.expect("every policy ran")).collect::<Result<Vec<_>, _>>()?;
    Ok(RunReport {
        nodes: scenario.nodes.len(),
        days: scenario.horizon_ms as f64 / DAY_MS as f64,
        seed: scenario.seed,
        workloads: scenario.workloads.len(),
        markets: scenario.markets.len(),
        injected_revocations: scenario.revocations.iter().filter(|r| r.cause == RevocationCause::Injected).count(),
        results,
    })
}
