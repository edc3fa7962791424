//! Spot-market simulations that run hotspot-mesh's own decision code.
//!
//! A deterministic, seeded discrete-event simulator. Nodes of several instance types in several
//! zones follow each market's spot price; workloads arrive with sizes and amounts of work; nodes
//! are revoked with a two-minute notice when the price crosses their bid, at a random
//! interruption rate, or all at once in a scale test. Four policies replay the same scenario:
//! on-demand only, spot-and-stay, HotSpot's central greedy controller, and the decentralised
//! mesh. Hopping policies decide with `hotspot_protocol::election::decide` and reserve with
//! `hotspot_protocol::reservation::Ledger`, unchanged; the mesh decides on the stale, lossy view
//! gossip gave each node (see [`gossip`] for what a node sees and why that is faithful).
//!
//! Layout: [`scenario`] (what happens), [`price`] and [`trace`] (spot prices), [`gossip`] (who
//! knows what), `engine`/`moves` (the simulation), [`metrics`] (the table), [`plot`] (SVG).

mod accounts;
pub mod catalog;
mod engine;
pub mod gossip;
pub mod metrics;
mod moves;
pub mod params;
pub mod plot;
pub mod price;
pub mod rng;
pub mod run;
pub mod scenario;
mod state;
pub mod trace;

pub use engine::{Sim, SimError};
pub use metrics::{PolicyResult, RunReport};
pub use params::{EngineParams, Policy};
pub use run::{run_policies, Progress};
pub use scenario::{Scenario, ScenarioConfig};
