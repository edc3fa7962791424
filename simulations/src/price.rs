//! Spot price paths: step functions of time with a running integral (for billing), and the
//! synthetic process that generates them.
//!
//! Synthetic process, per market (parameters in [`SyntheticPrices`], defaults documented there):
//! the log of price / (spot_ratio x on-demand) follows a mean-reverting Ornstein-Uhlenbeck process
//! sampled once per `tick` (AWS has moved spot prices smoothly and a few times a day since the
//! 2017 pricing change), clamped to [floor, on-demand]; on top, spikes arrive as a Poisson process
//! and lift the price above on-demand (`spike_low..spike_high` x on-demand) for an exponentially
//! distributed time. A spike above the bid revokes every instance of the market that bid less.

use crate::rng::Rng;

pub const HOUR_MS: u64 = 3_600_000;

/// Price in USD per hour as a step function: `points[i].1` holds from `points[i].0` until the
/// next point. The first point is at time 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PricePath {
    points: Vec<(u64, f64)>,
    /// USD per instance up to each point (integral of price over time).
    cumulative: Vec<f64>,
}

impl PricePath {
    /// Builds a path from (ms, price) points; sorted by time, the first point moved to time 0.
    /// Panics on an empty list.
    pub fn new(mut points: Vec<(u64, f64)>) -> Self {
        assert!(!points.is_empty(), "a price path needs at least one point");
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        points[0].0 = 0;
        let mut cumulative = Vec::with_capacity(points.len());
        let mut acc = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                let prev = points[i - 1];
                acc += prev.1 * (p.0 - prev.0) as f64 / HOUR_MS as f64;
            }
            cumulative.push(acc);
        }
        PricePath { points, cumulative }
    }

    pub fn constant(price: f64) -> Self {
        PricePath::new(vec![(0, price)])
    }

    pub fn points(&self) -> &[(u64, f64)] {
        &self.points
    }

    fn index_at(&self, t_ms: u64) -> usize {
        self.points.partition_point(|p| p.0 <= t_ms).saturating_sub(1)
    }

    pub fn at(&self, t_ms: u64) -> f64 {
        self.points[self.index_at(t_ms)].1
    }

    /// Price just before `t_ms` (the price a stale view may still show at a change).
    pub fn before(&self, t_ms: u64) -> f64 {
        self.at(t_ms.saturating_sub(1))
    }

    /// Lowest price in force at any time in [t0, t1].
    pub fn min_between(&self, t0_ms: u64, t1_ms: u64) -> f64 {
        let (i, j) = (self.index_at(t0_ms), self.index_at(t1_ms.max(t0_ms)));
        self.points[i..=j].iter().map(|p| p.1).fold(f64::INFINITY, f64::min)
    }

    /// USD one whole instance costs from time 0 to `t_ms`.
    pub fn integral_to(&self, t_ms: u64) -> f64 {
        let i = self.index_at(t_ms);
        self.cumulative[i] + self.points[i].1 * (t_ms - self.points[i].0) as f64 / HOUR_MS as f64
    }

    /// USD one whole instance costs over [t0, t1].
    pub fn cost_between(&self, t0_ms: u64, t1_ms: u64) -> f64 {
        self.integral_to(t1_ms) - self.integral_to(t0_ms.min(t1_ms))
    }

    pub fn mean_until(&self, t_ms: u64) -> f64 {
        if t_ms == 0 {
            return self.points[0].1;
        }
        self.integral_to(t_ms) * HOUR_MS as f64 / t_ms as f64
    }
}

/// Parameters of the synthetic spot price process.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticPrices {
    /// How often the smooth part moves. Default 1 h.
    pub tick_ms: u64,
    /// Half-life of a deviation from the long-run mean. Default 12 h.
    pub reversion_half_life_hours: f64,
    /// Volatility of log-price per sqrt(hour). Default 0.08: a stationary spread of about +/-24 %.
    pub volatility_per_sqrt_hour: f64,
    /// Smooth prices never fall below this fraction of on-demand. Default 0.10.
    pub floor_ratio: f64,
    /// Spikes per market per day. Default 0.05 (one per market every 20 days; with 32 markets,
    /// a mass revocation every ~0.6 days).
    pub spikes_per_day: f64,
    /// Spike price range as a multiple of on-demand. Default 1.05..2.5.
    pub spike_low: f64,
    pub spike_high: f64,
    /// Mean spike length. Default 40 min.
    pub spike_mean_minutes: f64,
}

impl Default for SyntheticPrices {
    fn default() -> Self {
        SyntheticPrices {
            tick_ms: HOUR_MS,
            reversion_half_life_hours: 12.0,
            volatility_per_sqrt_hour: 0.08,
            floor_ratio: 0.10,
            spikes_per_day: 0.05,
            spike_low: 1.05,
            spike_high: 2.5,
            spike_mean_minutes: 40.0,
        }
    }
}

impl SyntheticPrices {
    /// A path for a market with this on-demand price and mean spot ratio, over `horizon_ms`.
    pub fn generate(&self, on_demand: f64, spot_ratio: f64, horizon_ms: u64, rng: &mut Rng) -> PricePath {
        let mean = on_demand * spot_ratio;
        let dt_h = self.tick_ms as f64 / HOUR_MS as f64;
        let theta = std::f64::consts::LN_2 / self.reversion_half_life_hours.max(1e-6);
        let decay = (-theta * dt_h).exp();
        // Exact OU step: stationary variance sigma^2 / (2 theta).
        let step_sd = self.volatility_per_sqrt_hour * ((1.0 - decay * decay) / (2.0 * theta)).sqrt();
        let stationary_sd = self.volatility_per_sqrt_hour / (2.0 * theta).sqrt();
        let smooth = |x: f64| (mean * x.exp()).clamp(on_demand * self.floor_ratio, on_demand);
        let mut x = rng.normal() * stationary_sd;
        let mut points = vec![(0u64, smooth(x))];
        let mut t = self.tick_ms;
        while t < horizon_ms {
            x = x * decay + step_sd * rng.normal();
            points.push((t, smooth(x)));
            t += self.tick_ms;
        }
        // Spikes overwrite the smooth path over their interval.
        let mut spikes = Vec::new();
        if self.spikes_per_day > 0.0 {
            let mean_gap_ms = 86_400_000.0 / self.spikes_per_day;
            let mut at = rng.exp(mean_gap_ms);
            while (at as u64) < horizon_ms {
                let start = at as u64;
                let len = (rng.exp(self.spike_mean_minutes * 60_000.0) as u64).max(600_000);
                let price = on_demand * rng.range(self.spike_low, self.spike_high);
                spikes.push((start, start + len, price));
                at += len as f64 + rng.exp(mean_gap_ms);
            }
        }
        for (start, end, price) in spikes {
            let base = PricePath::new(points.clone());
            let resume = base.at(end);
            points.retain(|p| p.0 < start || p.0 > end);
            points.push((start, price));
            points.push((end, resume));
        }
        PricePath::new(points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_function_integrates_exactly() {
        let p = PricePath::new(vec![(HOUR_MS, 2.0), (0, 1.0)]);
        assert_eq!(p.at(0), 1.0);
        assert_eq!(p.at(HOUR_MS - 1), 1.0);
        assert_eq!(p.at(HOUR_MS), 2.0);
        assert!((p.integral_to(2 * HOUR_MS) - 3.0).abs() < 1e-12);
        assert!((p.cost_between(HOUR_MS / 2, HOUR_MS * 3 / 2) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn synthetic_prices_stay_near_their_calibrated_mean() {
        let params = SyntheticPrices { spikes_per_day: 0.0, ..SyntheticPrices::default() };
        let horizon = 200 * 24 * HOUR_MS;
        let path = params.generate(1.0, 0.35, horizon, &mut Rng::new(3));
        let mean = path.mean_until(horizon);
        // exp(N(0, 0.235^2)) has mean ~1.028 x the median 0.35.
        assert!((0.31..0.40).contains(&mean), "mean {mean}");
        assert!(path.points().iter().all(|p| p.1 <= 1.0 && p.1 >= 0.1));
    }

    #[test]
    fn spikes_cross_on_demand() {
        let params = SyntheticPrices { spikes_per_day: 1.0, ..SyntheticPrices::default() };
        let path = params.generate(1.0, 0.35, 30 * 24 * HOUR_MS, &mut Rng::new(5));
        let spiked = path.points().iter().filter(|p| p.1 > 1.0).count();
        assert!(spiked >= 10, "{spiked} spikes in 30 days at 1/day");
    }
}
