//! `[triggers]`: what makes a node move its workloads by itself (see [`crate::daemon::triggers`]).
//!
//! ```toml
//! [triggers]
//! price = true                    # default; move to a peer cheaper by `margin` after move cost
//! check_interval_ms = 5000        # default; also checked at once when a peer's advert changes
//! cooldown_ms = 60000             # default; a workload is left alone this long after it arrived
//!                                 # or this node last tried to move it (no flapping)
//! margin = 0.10                   # default; see hotspot_protocol::election::HopPolicy
//! expected_stay_hours = 1.0       # default
//! bandwidth_bytes_per_sec = 100000000   # default; assumed for the move's cost
//! fixed_move_secs = 30.0          # default; volume and address move
//! move_penalty = 0.0              # default; USD per move
//! notice_deadline_secs = 120      # default; deadline of `hotspot-node notice` without --deadline-secs
//! notice_file = "/run/hotspot-mesh/notice"   # default: none; its appearance is a notice
//!                                 # (content: optional deadline in seconds)
//! imds = false                    # default (true when [ec2] is set); poll the metadata service for spot notices
//! imds_endpoint = "http://169.254.169.254"   # default
//! ```

use std::path::PathBuf;

use hotspot_protocol::election::HopPolicy;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggerConfig {
    pub price: bool,
    pub check_interval_ms: u64,
    pub cooldown_ms: u64,
    pub margin: f64,
    pub expected_stay_hours: f64,
    pub bandwidth_bytes_per_sec: f64,
    pub fixed_move_secs: f64,
    pub move_penalty: f64,
    pub notice_deadline_secs: u64,
    pub notice_file: Option<PathBuf>,
    pub imds: bool,
    pub imds_endpoint: Option<String>,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        let p = HopPolicy::default();
        TriggerConfig {
            price: true,
            check_interval_ms: 5_000,
            cooldown_ms: 60_000,
            margin: p.margin,
            expected_stay_hours: p.expected_stay_hours,
            bandwidth_bytes_per_sec: p.bandwidth_bytes_per_sec,
            fixed_move_secs: p.fixed_move_secs,
            move_penalty: p.move_penalty,
            notice_deadline_secs: 120,
            notice_file: None,
            imds: false,
            imds_endpoint: None,
        }
    }
}

impl TriggerConfig {
    pub fn policy(&self) -> HopPolicy {
        HopPolicy {
            margin: self.margin,
            expected_stay_hours: self.expected_stay_hours,
            bandwidth_bytes_per_sec: self.bandwidth_bytes_per_sec,
            fixed_move_secs: self.fixed_move_secs,
            move_penalty: self.move_penalty,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let finite = [self.margin, self.expected_stay_hours, self.bandwidth_bytes_per_sec, self.fixed_move_secs, self.move_penalty];
        if finite.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err("triggers.margin, expected_stay_hours, bandwidth_bytes_per_sec, fixed_move_secs and move_penalty must be finite and >= 0".into());
        }
        if self.check_interval_ms == 0 || self.notice_deadline_secs == 0 {
            return Err("triggers.check_interval_ms and notice_deadline_secs must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c: TriggerConfig = toml::from_str("price = false\ncooldown_ms = 5\n").unwrap();
        assert!(!c.price);
        assert_eq!(c.cooldown_ms, 5);
        assert_eq!(c.policy(), HopPolicy::default());
        c.validate().unwrap();
        let bad = TriggerConfig { margin: f64::NAN, ..TriggerConfig::default() };
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<TriggerConfig>("prcie = true").is_err());
    }
}
