//! One place every EC2 API call goes through: timing, a span, and error classification.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tracing::{debug, Instrument};

use crate::providers::ec2::ProviderError;

/// Count and summed latency of API calls (including the SDK's retries), so a benchmark can tell
/// the node's own time from the cloud's.
#[derive(Debug, Default)]
pub struct CallStats {
    calls: AtomicU64,
    total_micros: AtomicU64,
}

impl CallStats {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> Duration {
        Duration::from_micros(self.total_micros.load(Ordering::Relaxed))
    }

    fn record(&self, elapsed: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Sends one API request (`send` is the SDK's `.send()` future) and classifies its error.
pub(super) async fn call<T, E, F>(stats: &CallStats, op: &'static str, send: F) -> Result<T, ProviderError>
where
    F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let result = send.instrument(tracing::debug_span!("ec2_call", op)).await;
    let elapsed = started.elapsed();
    stats.record(elapsed);
    debug!(op, ms = elapsed.as_millis() as u64, ok = result.is_ok(), "ec2 call");
    result.map_err(|e| classify(op, e))
}

/// Error codes EC2 uses for throttling and for missing permissions.
const THROTTLING: &[&str] = &["RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"];
const PERMISSION: &[&str] =
    &["UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure", "Blocked"];

pub(super) fn classify<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => {
            return ProviderError::Transport { op, detail: "the call timed out (operation_timeout_ms)".into() }
        }
        SdkError::DispatchFailure(_) => {
            return ProviderError::Transport { op, detail: aws_sdk_ec2::error::DisplayErrorContext(&err).to_string() }
        }
        _ => {}
    }
    let code = err.code().unwrap_or("").to_string();
    let message = err.message().unwrap_or("").to_string();
    if code.is_empty() {
        // No AWS error document: a response the SDK could not parse, or a construction failure.
        let detail = match err.raw_response() {
            Some(raw) => format!("HTTP {} without an AWS error code", raw.status().as_u16()),
            None => aws_sdk_ec2::error::DisplayErrorContext(&err).to_string(),
        };
        return ProviderError::Api { op, code: "Unknown".into(), message: detail };
    }
    if THROTTLING.contains(&code.as_str()) {
        ProviderError::Throttled { op, code, message }
    } else if PERMISSION.contains(&code.as_str()) {
        ProviderError::PermissionDenied { op, code, message }
    } else {
        ProviderError::Api { op, code, message }
    }
}
