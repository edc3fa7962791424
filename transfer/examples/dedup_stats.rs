//! Compares two CRIU image directories chunk by chunk, for several page-chunk sizes: how many
//! bytes of the second would have to travel given the first, and what the manifest costs.
//!
//! `cargo run --release -p hotspot-transfer --example dedup_stats -- OLD_DIR NEW_DIR`

use std::collections::HashSet;

use hotspot_transfer::{build_manifest, ChunkerConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old, new] = &args[..] else {
        eprintln!("usage: dedup_stats OLD_DIR NEW_DIR");
        std::process::exit(2);
    };
    println!("{:>9} {:>9} {:>12} {:>10} {:>14}", "chunk_kib", "chunks", "unshared_b", "unshared%", "manifest_cbor");
    for kib in [4u64, 8, 16, 32, 64] {
        let cfg = ChunkerConfig { page_chunk_bytes: kib * 1024, ..Default::default() };
        let a = build_manifest(old.as_ref(), "a", &cfg).expect("chunk old");
        let b = build_manifest(new.as_ref(), "b", &cfg).expect("chunk new");
        let have: HashSet<_> = a.chunks().map(|c| c.hash).collect();
        let mut seen = HashSet::new();
        let unshared: u64 = b.chunks().filter(|c| !have.contains(&c.hash) && seen.insert(c.hash)).map(|c| c.len as u64).sum();
        let manifest = serde_cbor::to_vec(&b).expect("encodes").len();
        println!(
            "{kib:>9} {:>9} {unshared:>12} {:>10.2} {manifest:>14}",
            b.chunks().count(),
            100.0 * unshared as f64 / b.total_bytes() as f64
        );
        if kib == 4 {
            for f in &b.files {
                let u: u64 = f.chunks.iter().filter(|c| !have.contains(&c.hash)).map(|c| c.len as u64).sum();
                if u > 0 {
                    println!("    {:<28} {u:>10} of {:>10}", f.path, f.size);
                }
            }
        }
    }
}
