//! The current spot price of this node's own instance type in its own zone, refreshed on a
//! schedule, for the node's advert and the hop policy.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::InstanceType;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::call::{call, CallStats};
use crate::providers::ec2::ProviderError;

/// A spot price quote.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub usd_per_hour: f64,
    /// When EC2 set this price (RFC 3339).
    pub since: Option<String>,
}

/// Product whose price is quoted (the node runs Linux).
const PRODUCT: &str = "Linux/UNIX";

/// Reads DescribeSpotPriceHistory for one instance type and zone and keeps the latest answer.
#[derive(Debug)]
pub struct SpotPriceSource {
    client: aws_sdk_ec2::Client,
    instance_type: String,
    zone: String,
    /// A cached price older than this is fetched again by [`SpotPriceSource::current_price`].
    max_age: Duration,
    latest: watch::Sender<Option<(SpotPrice, Instant)>>,
    stats: CallStats,
}

impl SpotPriceSource {
    pub fn new(client: aws_sdk_ec2::Client, instance_type: &str, zone: &str, max_age: Duration) -> Self {
        SpotPriceSource {
            client,
            instance_type: instance_type.into(),
            zone: zone.into(),
            max_age,
            latest: watch::channel(None).0,
            stats: CallStats::default(),
        }
    }

    /// Asks EC2 for the price in effect now and remembers it.
    pub async fn refresh(&self) -> Result<SpotPrice, ProviderError> {
        let req = self
            .client
            .describe_spot_price_history()
            .instance_types(InstanceType::from(self.instance_type.as_str()))
            .availability_zone(&self.zone)
            .product_descriptions(PRODUCT)
            // With the start time at now, EC2 returns the price in effect now.
            .start_time(DateTime::from(SystemTime::now()));
        let out = call(&self.stats, "DescribeSpotPriceHistory", req.send()).await?;
        let newest = out
            .spot_price_history()
            .iter()
            .filter(|p| p.availability_zone() == Some(self.zone.as_str()))
            .max_by_key(|p| p.timestamp().map(|t| (t.secs(), t.subsec_nanos())))
            .ok_or_else(|| ProviderError::Malformed {
                op: "DescribeSpotPriceHistory",
                detail: format!("no {PRODUCT} spot price for {} in {}", self.instance_type, self.zone),
            })?;
        let raw = newest.spot_price().unwrap_or_default();
        let usd_per_hour =
            raw.parse::<f64>().ok().filter(|p| p.is_finite() && *p >= 0.0).ok_or_else(|| ProviderError::Malformed {
                op: "DescribeSpotPriceHistory",
                detail: format!("spot price {raw:?} is not a price"),
            })?;
        let price =
            SpotPrice { usd_per_hour, since: newest.timestamp().and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()) };
        self.latest.send_replace(Some((price.clone(), Instant::now())));
        Ok(price)
    }

    /// The current price: the cached one while younger than `max_age`, else a fresh one.
    pub async fn current_price(&self) -> Result<SpotPrice, ProviderError> {
        if let Some((price, at)) = self.latest.borrow().clone() {
            if at.elapsed() < self.max_age {
                return Ok(price);
            }
        }
        self.refresh().await
    }

    /// The last price fetched, without asking EC2.
    pub fn latest(&self) -> Option<SpotPrice> {
        self.latest.borrow().as_ref().map(|(p, _)| p.clone())
    }

    /// Notified on every refresh (for the advert).
    pub fn subscribe(&self) -> watch::Receiver<Option<(SpotPrice, Instant)>> {
        self.latest.subscribe()
    }

    /// API calls made so far.
    pub fn calls(&self) -> u64 {
        self.stats.calls()
    }

    /// Refreshes every `interval` until `cancel` fires. Failures keep the last price and are
    /// retried at the next tick.
    pub async fn run_refresher(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.refresh().await {
                Ok(p) => {
                    info!(usd_per_hour = p.usd_per_hour, instance_type = %self.instance_type, zone = %self.zone, "spot price")
                }
                Err(e) => warn!(error = %e, "spot price refresh failed; keeping the last price"),
            }
        }
    }
}
