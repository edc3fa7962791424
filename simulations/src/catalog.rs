//! Instance types and zones the synthetic scenario draws from.
//!
//! On-demand prices are AWS us-east-1 Linux list prices (USD per hour). `spot_ratio` is the
//! long-run mean spot price as a fraction of on-demand; the values sit in the 30-45 % band that
//! AWS Spot Advisor's "savings over on-demand" column (55-70 %) shows for these families.

use std::collections::BTreeSet;

use hotspot_protocol::Resources;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_gib: u64,
    pub on_demand_per_hour: f64,
    pub spot_ratio: f64,
}

impl InstanceType {
    pub fn total(&self) -> Resources {
        Resources { cpu_millis: self.vcpus * 1000, memory_bytes: self.memory_gib << 30, disk_bytes: 0 }
    }
}

const fn it(name: &'static str, vcpus: u32, memory_gib: u64, on_demand_per_hour: f64, spot_ratio: f64) -> InstanceType {
    InstanceType { name, vcpus, memory_gib, on_demand_per_hour, spot_ratio }
}

pub const INSTANCE_TYPES: &[InstanceType] = &[
    it("m5.large", 2, 8, 0.096, 0.40),
    it("m5.xlarge", 4, 16, 0.192, 0.38),
    it("m5.2xlarge", 8, 32, 0.384, 0.36),
    it("c5.xlarge", 4, 8, 0.170, 0.35),
    it("c5.2xlarge", 8, 16, 0.340, 0.37),
    it("r5.large", 2, 16, 0.126, 0.32),
    it("r5.xlarge", 4, 32, 0.252, 0.30),
    it("m6i.xlarge", 4, 16, 0.192, 0.42),
];

pub const ZONES: &[&str] = &["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"];

pub const ARCH: &str = "x86_64";

/// CPU flags every type above has (Skylake or newer): workloads need them, every host offers them.
pub fn cpu_features() -> BTreeSet<String> {
    ["sse4_2", "avx2", "avx512f"].iter().map(|s| s.to_string()).collect()
}

pub fn find_type(name: &str) -> Option<&'static InstanceType> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

/// One spot market: an instance type in a zone.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketKey {
    pub instance: &'static InstanceType,
    pub zone: String,
}

impl MarketKey {
    pub fn label(&self) -> String {
        format!("{}/{}", self.instance.name, self.zone)
    }
}
