//! `hotspot-mesh`: the repository-level package. It owns nothing of its own; it exists so the
//! top-level `tests/`, `examples/` and `benches/` can exercise the workspace crates together.
pub use hotspot_node as node;
pub use hotspot_protocol as protocol;
