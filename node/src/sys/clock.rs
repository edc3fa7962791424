//! The one wall clock of the node. Persisted times (journal, ledger, adverts) are Unix
//! milliseconds, so they compare across restarts and across nodes.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it, which no persisted record
/// can then be older than).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
