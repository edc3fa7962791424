//! `hotspot-mesh`: the repository-level package. It exists so the top-level `tests/`,
//! `examples/` and `benches/` can exercise the workspace crates together; its one module of
//! its own, [`local_cluster`], is the scenario the demo and its integration test share.
pub mod local_cluster;
pub use hotspot_node as node;
pub use hotspot_protocol as protocol;
