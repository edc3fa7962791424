//! What can go wrong moving a resource, in words an operator can act on.

use std::time::Duration;

/// Errors of resource providers. Cloud API errors are classified by their AWS error code so the
/// migration can tell "retry later" (throttled) from "fix the IAM policy" (permission denied).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{op}: throttled by the cloud API ({code}: {message}); retries exhausted, try again later")]
    Throttled { op: &'static str, code: String, message: String },

    #[error("{op}: permission denied ({code}: {message}); the node's IAM role needs {op} (see README, IAM policy)")]
    PermissionDenied { op: &'static str, code: String, message: String },

    #[error(
        "{what} {id} is in zone {resource_zone} but host {host} is in {host_zone}: it can only move within its zone"
    )]
    WrongZone { what: &'static str, id: String, resource_zone: String, host: String, host_zone: String },

    #[error(
        "{what} {id} is attached to {attached_to}, which is neither the source nor the target; refusing to take it"
    )]
    InUse { what: &'static str, id: String, attached_to: String },

    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },

    #[error("{what} {id} is {state}: {why}")]
    BadState { what: &'static str, id: String, state: String, why: &'static str },

    #[error("{op}: timed out after {waited:?} waiting for {what} {id}; last seen: {last_state}")]
    Timeout { op: &'static str, what: &'static str, id: String, waited: Duration, last_state: String },

    #[error("{op}: unusable answer: {detail}")]
    Malformed { op: &'static str, detail: String },

    #[error("{op}: cloud API error {code}: {message}")]
    Api { op: &'static str, code: String, message: String },

    #[error("{op}: could not reach the cloud API: {detail}")]
    Transport { op: &'static str, detail: String },

    #[error("{op} on this host failed: {detail}")]
    Host { op: &'static str, detail: String },
}

impl ProviderError {
    /// True when trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled { .. } | ProviderError::Timeout { .. } | ProviderError::Transport { .. }
        )
    }
}
