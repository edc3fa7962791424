//! What happens in a run, independent of the policy: markets and their spot prices, the fleet,
//! the workloads (arrival, size, amount of work) and the revocations that do not come from price
//! (interruptions, an injected mass revocation). Every policy of a run replays the same scenario.

use hotspot_protocol::{NodeId, Resources};

use crate::catalog::{MarketKey, INSTANCE_TYPES, ZONES};
use crate::price::{PricePath, SyntheticPrices, HOUR_MS};
use crate::rng::{hash, Rng};
use crate::trace::PriceTrace;

pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Workload sizes. The image (what a hop moves) is the resident half of the memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadClass {
    pub name: &'static str,
    pub needs: Resources,
    pub image_bytes: u64,
    /// Relative frequency.
    pub weight: f64,
}

const fn class(name: &'static str, cpu_millis: u32, gib: u64, weight: f64) -> WorkloadClass {
    WorkloadClass {
        name,
        needs: Resources { cpu_millis, memory_bytes: gib << 30, disk_bytes: 0 },
        image_bytes: (gib << 30) / 2,
        weight,
    }
}

pub const CLASSES: [WorkloadClass; 4] =
    [class("small", 500, 2, 0.4), class("medium", 1000, 4, 0.3), class("large", 2000, 8, 0.2), class("xlarge", 4000, 16, 0.1)];

#[derive(Debug, Clone)]
pub struct Market {
    pub key: MarketKey,
    /// Index into [`Scenario::zones`].
    pub zone: u16,
    pub spot: PricePath,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeSpec {
    pub market: u16,
    /// Maximum spot price this node's request pays; above it the node is revoked.
    pub bid: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    pub arrival_ms: u64,
    pub class: u8,
    /// Milliseconds of useful work until the workload is done.
    pub work_ms: u64,
    /// Zone of its volume (index into `zones`), if it has one.
    pub volume_zone: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RevocationCause {
    /// The spot price rose above the bid (comes from the price path, not listed here).
    Price,
    /// Capacity reclaimed at random (AWS interrupts even below the bid).
    Interruption,
    /// The injected mass revocation of a scale test.
    Injected,
}

/// A revocation notice that does not come from price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Revocation {
    pub at_ms: u64,
    pub node: u32,
    pub cause: RevocationCause,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub horizon_ms: u64,
    pub zones: Vec<String>,
    pub markets: Vec<Market>,
    pub nodes: Vec<NodeSpec>,
    pub workloads: Vec<WorkloadSpec>,
    pub revocations: Vec<Revocation>,
}

/// Knobs of a generated scenario. Defaults are documented per field.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioConfig {
    pub nodes: u32,
    pub days: f64,
    pub seed: u64,
    /// Fraction of the fleet's CPU/memory the workloads need on average. Default 0.5.
    pub utilisation: f64,
    /// Mean useful work per workload (exponential). Default 24 h.
    pub mean_work_hours: f64,
    /// Fraction of workloads with a volume, pinned to its zone. Default 0.5.
    pub volume_fraction: f64,
    /// Random interruptions per node per day below the bid. Default 0.002 (~6 % a month, AWS
    /// Spot Advisor's "<5 %" to "5-10 %" buckets).
    pub interruptions_per_node_day: f64,
    /// Nodes given a notice at the same instant, and when. Default: none.
    pub mass_revocation: Option<(u64, u32)>,
    /// Bid as a fraction of on-demand. Default 1.0 (AWS's default maximum price).
    pub bid_ratio: f64,
    pub prices: SyntheticPrices,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            nodes: 1000,
            days: 2.0,
            seed: 1,
            utilisation: 0.5,
            mean_work_hours: 24.0,
            volume_fraction: 0.5,
            interruptions_per_node_day: 0.002,
            mass_revocation: None,
            bid_ratio: 1.0,
            prices: SyntheticPrices::default(),
        }
    }
}

/// Stream ids so each part of the scenario draws from its own sequence.
mod stream {
    pub const PRICES: u64 = 1;
    pub const FLEET: u64 = 2;
    pub const WORKLOADS: u64 = 3;
    pub const INTERRUPTIONS: u64 = 4;
    pub const MASS: u64 = 5;
}

impl Scenario {
    /// A synthetic scenario: every catalogue type in every zone, prices from `cfg.prices`.
    pub fn generate(cfg: &ScenarioConfig) -> Scenario {
        let horizon_ms = (cfg.days * DAY_MS as f64) as u64;
        let mut rng = Rng::fork(cfg.seed, stream::PRICES);
        let mut markets = Vec::new();
        for (z, zone) in ZONES.iter().enumerate() {
            for ty in INSTANCE_TYPES {
                let spot = cfg.prices.generate(ty.on_demand_per_hour, ty.spot_ratio, horizon_ms, &mut rng);
                markets.push(Market { key: MarketKey { instance: ty, zone: zone.to_string() }, zone: z as u16, spot });
            }
        }
        let zones = ZONES.iter().map(|z| z.to_string()).collect();
        Self::populate(cfg, horizon_ms, zones, markets)
    }

    /// A scenario on a real price trace: its markets, the configured fleet and workloads.
    pub fn from_trace(cfg: &ScenarioConfig, trace: &PriceTrace) -> Scenario {
        let horizon_ms = (cfg.days * DAY_MS as f64) as u64;
        let mut zones: Vec<String> = trace.markets.iter().map(|m| m.key.zone.clone()).collect();
        zones.sort();
        zones.dedup();
        let markets = trace
            .markets
            .iter()
            .map(|m| Market {
                key: m.key.clone(),
                zone: zones.iter().position(|z| *z == m.key.zone).expect("collected above") as u16,
                spot: m.path.clone(),
            })
            .collect();
        Self::populate(cfg, horizon_ms, zones, markets)
    }

    fn populate(cfg: &ScenarioConfig, horizon_ms: u64, zones: Vec<String>, markets: Vec<Market>) -> Scenario {
        let mut rng = Rng::fork(cfg.seed, stream::FLEET);
        let nodes: Vec<NodeSpec> = (0..cfg.nodes)
            .map(|_| {
                let market = rng.below(markets.len() as u64) as u16;
                NodeSpec { market, bid: markets[market as usize].key.instance.on_demand_per_hour * cfg.bid_ratio }
            })
            .collect();

        // Enough workload "slots" to fill `utilisation` of the scarcer of CPU and memory; each slot
        // runs one workload after another for the whole horizon.
        let (cpu, mem) = nodes.iter().fold((0f64, 0f64), |(c, m), n| {
            let t = markets[n.market as usize].key.instance.total();
            (c + t.cpu_millis as f64, m + t.memory_bytes as f64)
        });
        // Only sizes some instance type of the fleet can host (a trace may cover small types only).
        let weights: Vec<f64> = CLASSES
            .iter()
            .map(|c| {
                let hostable = nodes.iter().any(|n| c.needs.fits_in(&markets[n.market as usize].key.instance.total()));
                if hostable {
                    c.weight
                } else {
                    0.0
                }
            })
            .collect();
        let weight: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let mean_cpu: f64 = CLASSES.iter().zip(&weights).map(|(c, w)| w * c.needs.cpu_millis as f64).sum::<f64>() / weight;
        let mean_mem: f64 = CLASSES.iter().zip(&weights).map(|(c, w)| w * c.needs.memory_bytes as f64).sum::<f64>() / weight;
        let slots = if weights.iter().any(|w| *w > 0.0) {
            (cfg.utilisation * (cpu / mean_cpu).min(mem / mean_mem)).round() as u64
        } else {
            0
        };
        let mut rng = Rng::fork(cfg.seed, stream::WORKLOADS);
        let mut workloads = Vec::new();
        let mean_work_ms = cfg.mean_work_hours * HOUR_MS as f64;
        for _ in 0..slots {
            let mut at = 0u64;
            while at < horizon_ms.max(1) {
                let mut pick = rng.f64() * weight;
                let class = weights.iter().position(|w| {
                    pick -= w;
                    pick < 0.0 && *w > 0.0
                });
                let work_ms = (rng.exp(mean_work_ms) as u64).max(600_000);
                let volume_zone = rng.chance(cfg.volume_fraction).then(|| rng.below(zones.len() as u64) as u16);
                let class = class.or_else(|| weights.iter().rposition(|w| *w > 0.0)).unwrap_or(0) as u8;
                workloads.push(WorkloadSpec { arrival_ms: at, class, work_ms, volume_zone });
                at += work_ms;
            }
        }
        workloads.sort_by_key(|w| w.arrival_ms);

        let mut rng = Rng::fork(cfg.seed, stream::INTERRUPTIONS);
        let mut revocations = Vec::new();
        if cfg.interruptions_per_node_day > 0.0 {
            let mean_gap = DAY_MS as f64 / cfg.interruptions_per_node_day;
            for node in 0..cfg.nodes {
                let mut at = rng.exp(mean_gap);
                while (at as u64) < horizon_ms {
                    revocations.push(Revocation { at_ms: at as u64, node, cause: RevocationCause::Interruption });
                    at += rng.exp(mean_gap);
                }
            }
        }
        if let Some((at_ms, count)) = cfg.mass_revocation {
            let mut rng = Rng::fork(cfg.seed, stream::MASS);
            let mut ids: Vec<u32> = (0..cfg.nodes).collect();
            let count = count.min(cfg.nodes) as usize;
            for i in 0..count {
                let j = i + rng.below((ids.len() - i) as u64) as usize;
                ids.swap(i, j);
                revocations.push(Revocation { at_ms, node: ids[i], cause: RevocationCause::Injected });
            }
        }
        revocations.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then(a.node.cmp(&b.node)));
        Scenario { seed: cfg.seed, horizon_ms, zones, markets, nodes, workloads, revocations }
    }

    /// The node's identity: its index in the first four bytes (big-endian) so identities sort
    /// like indices, and the election's tie-break on node id is the index order.
    pub fn node_id(&self, idx: u32) -> NodeId {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&idx.to_be_bytes());
        for (i, chunk) in id[4..].chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&hash(&[self.seed, idx as u64, i as u64]).to_le_bytes()[..chunk.len()]);
        }
        NodeId(id)
    }
}

/// Inverse of [`Scenario::node_id`].
pub fn node_index(id: &NodeId) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}
