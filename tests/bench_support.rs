//! The benches' shared helpers (`benches/support/mod.rs`; the benches themselves run without a
//! test harness, so their helpers are tested here).

#[path = "../benches/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::{binary_beside, median};

#[test]
fn median_is_the_middle_value() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0, "upper middle of an even count");
    assert_eq!(median(vec![7.5]), 7.5);
    assert_eq!(median(vec![Duration::from_millis(9), Duration::from_millis(1), Duration::from_millis(5)]), Duration::from_millis(5));
    // NaN sorts last instead of breaking the sort.
    assert_eq!(median(vec![f64::NAN, 1.0, 2.0]), 2.0);
}

#[test]
#[should_panic(expected = "median of no measurements")]
fn median_of_nothing_panics() {
    median(Vec::<f64>::new());
}

#[test]
fn daemon_binary_sits_in_the_profile_directory() {
    let exe = Path::new("/t/release/deps/mesh-0123abcd");
    assert_eq!(binary_beside(exe, "hotspot-node"), Path::new("/t/release/hotspot-node"));
}
