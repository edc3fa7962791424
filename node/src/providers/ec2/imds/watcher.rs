//! Watches for EC2 taking the instance back: the spot interruption notice (two minutes' warning)
//! and the earlier, softer rebalance recommendation.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Imds, ImdsError, REBALANCE, SPOT_ACTION};

/// Default poll interval: AWS recommends checking every 5 seconds.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Something EC2 announced about this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The instance will be stopped, hibernated or terminated at `time` (RFC 3339, UTC).
    SpotInterruption { action: String, time: String },
    /// The instance is at elevated risk of interruption; moving early is cheaper than in two minutes.
    Rebalance { notice_time: String },
}

#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

#[derive(Deserialize)]
struct RebalanceRecommendation {
    #[serde(rename = "noticeTime")]
    notice_time: String,
}

/// Parses the body of `spot/instance-action`.
pub fn parse_instance_action(body: &str) -> Result<Notice, ImdsError> {
    let a: InstanceAction = serde_json::from_str(body)
        .map_err(|e| ImdsError::Malformed { path: SPOT_ACTION.into(), detail: e.to_string() })?;
    Ok(Notice::SpotInterruption { action: a.action, time: a.time })
}

/// Parses the body of `events/recommendations/rebalance`.
pub fn parse_rebalance(body: &str) -> Result<Notice, ImdsError> {
    let r: RebalanceRecommendation = serde_json::from_str(body)
        .map_err(|e| ImdsError::Malformed { path: REBALANCE.into(), detail: e.to_string() })?;
    Ok(Notice::Rebalance { notice_time: r.notice_time })
}

/// Polls both paths every `interval` and sends each distinct notice once on `notices` (bounded:
/// the node reacts to the first one; a full channel only delays the watcher). Ends when `cancel`
/// fires or the receiver is gone. Metadata errors are logged and polled again.
pub async fn watch(imds: Imds, interval: Duration, notices: mpsc::Sender<Notice>, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_spot: Option<Notice> = None;
    let mut last_rebalance: Option<Notice> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let polls = [
            (SPOT_ACTION, &mut last_spot, parse_instance_action as fn(&str) -> Result<Notice, ImdsError>),
            (REBALANCE, &mut last_rebalance, parse_rebalance),
        ];
        for (path, last, parse) in polls {
            let notice = match imds.get_optional(path).await {
                Ok(Some(body)) => match parse(&body) {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "ignoring malformed notice");
                        continue;
                    }
                },
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, path, "metadata poll failed; polling again");
                    continue;
                }
            };
            if last.as_ref() == Some(&notice) {
                continue;
            }
            info!(notice = ?notice, "EC2 notice");
            *last = Some(notice.clone());
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                sent = notices.send(notice) => if sent.is_err() { return },
            }
        }
    }
}

/// Spawns [`watch`]; the caller owns the handle and stops it with `cancel`.
pub fn spawn(
    imds: Imds,
    interval: Duration,
    notices: mpsc::Sender<Notice>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(watch(imds, interval, notices, cancel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notices_and_refuses_garbage() {
        let n = parse_instance_action(r#"{"action":"terminate","time":"2026-11-22T06:00:00Z"}"#).unwrap();
        assert_eq!(n, Notice::SpotInterruption { action: "terminate".into(), time: "2026-11-22T06:00:00Z".into() });
        let r = parse_rebalance(r#"{"noticeTime":"2026-11-22T05:58:00Z"}"#).unwrap();
        assert_eq!(r, Notice::Rebalance { notice_time: "2026-11-22T05:58:00Z".into() });
        assert!(matches!(parse_instance_action("<html>"), Err(ImdsError::Malformed { .. })));
    }
}
