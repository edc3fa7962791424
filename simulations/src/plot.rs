use crate::{RunReport, Scenario};
pub fn price_svg(_s: &Scenario, _n: usize) -> String { String::new() }
pub fn cost_over_time_svg(_r: &RunReport) -> String { String::new() }
pub fn cost_per_policy_svg(_r: &RunReport) -> String { String::new() }
