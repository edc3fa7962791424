//! What makes a node move its workloads by itself.
//!
//! - the price trigger ([`super::hop`]): a peer cheaper by the margin after migration cost;
//! - a spot interruption notice: `hotspot-node notice`, a notice file (`triggers.notice_file`),
//!   or EC2's metadata service (`triggers.imds = true`), all ending in [`Triggers::notice`];
//! - `hotspot-node drain`.
//!
//! Settings: [`super::config::TriggerConfig`] (`[triggers]`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::evacuate::Triggers;
use crate::providers::ec2::imds::watcher::Notice;



/// Seconds from now until an RFC 3339 UTC time (`2026-11-22T06:00:00Z`, what EC2 sends).
pub fn secs_until(time: &str, now_unix_secs: u64) -> Option<u64> {
    let t = time.trim().trim_end_matches('Z');
    let (date, clock) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut c = clock.split(':');
    let (h, min) = (c.next()?.parse::<i64>().ok()?, c.next()?.parse::<i64>().ok()?);
    let s = c.next().map_or(Some(0.0), |s| s.parse::<f64>().ok())? as i64;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let unix = (era * 146_097 + doe - 719_468) * 86_400 + h * 3600 + min * 60 + s;
    Some((unix - now_unix_secs as i64).max(0) as u64)
}

fn now_unix_secs() -> u64 {
    crate::sys::clock::now_ms() / 1000
}

/// Notices that do not come through the control socket: a notice file and EC2's metadata
/// service. Each leads to [`Triggers::notice`] (a rebalance recommendation to a drain).
pub async fn watch_notices(triggers: Arc<Triggers>, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<Notice>(4);
    let mut watchers = tokio::task::JoinSet::new();
    if triggers.config.imds {
        let mut settings = crate::providers::ec2::imds::ImdsSettings::default();
        if let Some(e) = &triggers.config.imds_endpoint {
            settings.endpoint = e.clone();
        }
        match crate::providers::ec2::imds::Imds::new(&settings) {
            Ok(imds) => {
                info!(endpoint = %settings.endpoint, "watching the metadata service for spot notices");
                watchers.spawn(crate::providers::ec2::imds::watcher::watch(imds, crate::providers::ec2::imds::watcher::DEFAULT_POLL_INTERVAL, tx.clone(), cancel.clone()));
            }
            Err(e) => warn!(error = %e, "cannot watch the metadata service for spot notices"),
        }
    }
    let file = triggers.config.notice_file.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut file_seen = false;
    loop {
        let notice = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            n = rx.recv() => n,
            _ = tick.tick() => {
                let Some(path) = file.as_ref().filter(|p| !file_seen && p.exists()) else { continue };
                file_seen = true;
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let secs = text.trim().parse::<u64>().unwrap_or(triggers.config.notice_deadline_secs);
                info!(file = %path.display(), deadline_secs = secs, "notice file appeared");
                let t = triggers.clone();
                tokio::spawn(async move { t.notice("notice_file", Duration::from_secs(secs), None).await });
                continue;
            }
        };
        match notice {
            Some(Notice::SpotInterruption { action, time }) => {
                let secs = secs_until(&time, now_unix_secs()).unwrap_or(triggers.config.notice_deadline_secs);
                info!(%action, %time, deadline_secs = secs, "spot interruption notice from the metadata service");
                let t = triggers.clone();
                tokio::spawn(async move { t.notice("imds", Duration::from_secs(secs), None).await });
            }
            Some(Notice::Rebalance { notice_time }) => {
                info!(%notice_time, "rebalance recommendation: draining early");
                let t = triggers.clone();
                tokio::spawn(async move { t.drain(None).await });
            }
            None => break,
        }
    }
    watchers.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_from_ec2_time() {
        // 2026-11-22T06:00:00Z is 1795327200.
        assert_eq!(secs_until("2026-11-22T06:00:00Z", 1_795_327_200 - 120), Some(120));
        assert_eq!(secs_until("2026-11-22T06:00:00Z", 1_795_327_300), Some(0), "a past time means now");
        assert_eq!(secs_until("2024-02-29T00:00:01Z", 1_709_164_800), Some(1), "leap day");
        assert_eq!(secs_until("garbage", 0), None);
    }
}
