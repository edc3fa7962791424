//! Properties of the election the mesh relies on: no flapping between two nodes, the same ranking
//! whatever order the peer table is in, and no target ever lacking a CPU flag of the source.

use std::collections::BTreeSet;

use hotspot_protocol::election::{decide, rank, CurrentHost, HopDecision, HopPolicy, WorkloadProfile};
use hotspot_protocol::{Capacity, NodeAdvert, NodeId, Resources};
use proptest::prelude::*;

const FLAGS: [&str; 6] = ["sse4_2", "avx", "avx2", "avx512f", "aes", "sha_ni"];

fn res(cpu: u32, gib: u64) -> Resources {
    Resources { cpu_millis: cpu, memory_bytes: gib << 30, disk_bytes: 0 }
}

fn flags(mask: u8) -> BTreeSet<String> {
    FLAGS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, f)| f.to_string()).collect()
}

fn peer(n: u8, price: f64, mask: u8) -> NodeAdvert {
    NodeAdvert {
        price_per_hour: price,
        capacity: Capacity { total: res(4000, 16), free: res(4000, 16) },
        arch: "x86_64".into(),
        cpu_features: flags(mask),
        ..NodeAdvert::blank(NodeId([n; 32]), format!("n{n}"))
    }
}

fn profile(mask: u8) -> WorkloadProfile {
    WorkloadProfile { needs: res(1000, 4), arch: "x86_64".into(), cpu_features: flags(mask), volume_zone: None, image_bytes: 1 << 28 }
}

fn hops(d: &HopDecision) -> bool {
    matches!(d, HopDecision::Hop { candidates, .. } if !candidates.is_empty())
}

proptest! {
    /// With any positive margin, if moving A -> B pays, moving straight back B -> A does not.
    #[test]
    fn no_flapping_between_two_nodes(pa in 0.01f64..5.0, pb in 0.01f64..5.0, margin in 0.01f64..0.5, stay in 0.1f64..48.0) {
        let policy = HopPolicy { margin, expected_stay_hours: stay, ..HopPolicy::default() };
        let p = profile(0);
        let (a, b) = (peer(1, pa, 0), peer(2, pb, 0));
        let cost = |x: &NodeAdvert| hotspot_protocol::election::cost_per_hour(x.price_per_hour, &x.capacity.total, &p.needs);
        let a_to_b = decide(&p, &CurrentHost { node: a.node, cost_per_hour: cost(&a), must_leave: false }, [&b], &policy);
        let b_to_a = decide(&p, &CurrentHost { node: b.node, cost_per_hour: cost(&b), must_leave: false }, [&a], &policy);
        prop_assert!(!(hops(&a_to_b) && hops(&b_to_a)));
    }

    /// Ranking depends on the peers, not on the order the table lists them in.
    #[test]
    fn ranking_is_order_independent(prices in proptest::collection::vec(0u8..4, 2..12), rotate in 0usize..12) {
        // Few distinct prices, so ties are common.
        let peers: Vec<NodeAdvert> = prices.iter().enumerate().map(|(i, p)| peer(i as u8 + 1, 0.1 * (*p as f64 + 1.0), 0)).collect();
        let mut shuffled = peers.clone();
        shuffled.rotate_left(rotate % peers.len());
        shuffled.reverse();
        let policy = HopPolicy::default();
        let me = NodeId([0; 32]);
        prop_assert_eq!(rank(&profile(0), &me, 1.0, &peers, &policy), rank(&profile(0), &me, 1.0, &shuffled, &policy));
    }

    /// Every ranked target has every CPU flag the workload may use; the others are left out.
    #[test]
    fn targets_have_all_source_flags(source in 0u8..64, masks in proptest::collection::vec(0u8..64, 1..10)) {
        let peers: Vec<NodeAdvert> = masks.iter().enumerate().map(|(i, m)| peer(i as u8 + 1, 0.1, *m)).collect();
        let ranked = rank(&profile(source), &NodeId([0; 32]), 1.0, &peers, &HopPolicy::default());
        let need = flags(source);
        for c in &ranked {
            let p = peers.iter().find(|p| p.node == c.node).unwrap();
            prop_assert!(need.is_subset(&p.cpu_features));
        }
        let compatible = peers.iter().filter(|p| need.is_subset(&p.cpu_features)).count();
        prop_assert_eq!(ranked.len(), compatible);
    }
}
