//! How the node names the network namespaces of its workloads. Everything a node creates starts
//! with `hs-`, so a clean-up (or an operator) can find what is ours.

use std::fmt::Display;

/// Prefix of every namespace the node creates.
pub const PREFIX: &str = "hs-";

/// The namespace a workload started on this node runs in: `hs-NAME`.
pub fn workload_netns(workload: &str) -> String {
    format!("{PREFIX}{workload}")
}

/// The namespace node `node` restores an incoming `workload` into: `hs-NAME-<first 8 of the
/// node id>`. Nodes sharing one host (the lab) need distinct names, and the source computes the
/// target's name from the target's id, so both sides agree without asking.
pub fn restore_netns(workload: &str, node: &impl Display) -> String {
    let id = node.to_string();
    format!("{PREFIX}{workload}-{}", &id[..8.min(id.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_the_prefix_and_keep_nodes_apart() {
        assert_eq!(workload_netns("web"), "hs-web");
        assert_eq!(restore_netns("web", &"0123456789abcdef"), "hs-web-01234567");
        assert_eq!(restore_netns("web", &"ab"), "hs-web-ab");
        assert_ne!(restore_netns("web", &"11111111x"), restore_netns("web", &"22222222x"));
    }
}
