//! Messages between source and target during a migration (over the transfer connection).
//! The target's answers are idempotent per `migration` id, so a source that lost a reply can ask
//! again after a reconnect.

use serde::{Deserialize, Serialize};

use crate::advert::Resources;
use crate::codec::{check_str, Limit, WireMessage};
use crate::error::WireError;
use crate::handoff::TargetReport;
use crate::reservation::ReservationId;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MigrationId(#[serde(with = "serde_bytes")] pub [u8; 16]);

crate::hex_id!(MigrationId, "migration id", debug = 8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// Dump rounds while running, then a short frozen final dump (default; safe if the source dies).
    PreCopy,
    /// Restore first, pages fault in from the source (shortest freeze; the workload is lost if
    /// the source dies mid-stream).
    PostCopy,
}

/// What the target must set up before restoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    pub needs: Resources,
    /// Service address with prefix ("10.0.0.5/24"): the stand-in for an ENI's IP.
    pub address: Option<String>,
    /// Provider-specific volume handle (loop image path, EBS volume id).
    pub volume: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMessage {
    Offer { migration: MigrationId, reservation: ReservationId, workload: WorkloadSpec, mode: MigrationMode },
    Accept { migration: MigrationId },
    Refuse { migration: MigrationId, error: WireError },
    /// Source -> target: the final image was transferred (transfer id) and resources moved; restore now.
    Restore { migration: MigrationId, transfer_id: [u8; 16] },
    Restored { migration: MigrationId, pid: u32 },
    /// Source -> target, post-copy: restore now with the memory left behind; the target's
    /// `criu lazy-pages` fetches it from `page_server` ("ip:port", CRIU's own TCP page protocol
    /// on the LAN, outside the authenticated QUIC connection) while the workload runs.
    RestoreLazy { migration: MigrationId, transfer_id: [u8; 16], page_server: String },
    RestoreFailed { migration: MigrationId, error: WireError },
    /// Source -> target: the source has cleaned up; the workload is the target's now.
    Commit { migration: MigrationId },
    Abort { migration: MigrationId, reason: String },
    /// Source -> target after a reconnect or a lost reply: where is this migration?
    Status { migration: MigrationId },
    StatusReply { migration: MigrationId, report: TargetReport },
    /// Target -> source: a Commit or Abort was applied.
    Ack { migration: MigrationId },
}

impl WireMessage for MigrationMessage {
    const LIMIT: Limit = Limit::CONTROL;
    fn validate(&self) -> Result<(), String> {
        match self {
            MigrationMessage::Offer { workload, .. } => {
                check_str("workload name", &workload.name, 128)?;
                if let Some(a) = &workload.address {
                    check_str("address", a, 64)?;
                }
                if let Some(v) = &workload.volume {
                    check_str("volume", v, 4096)?;
                }
                Ok(())
            }
            MigrationMessage::Refuse { error, .. } | MigrationMessage::RestoreFailed { error, .. } => {
                check_str("error", &error.message, 64 * 1024)
            }
            MigrationMessage::Abort { reason, .. } => check_str("reason", reason, 64 * 1024),
            MigrationMessage::RestoreLazy { page_server, .. } => {
                check_str("page server", page_server, 64)?;
                page_server.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|e| format!("page server {page_server:?}: {e}"))
            }
            _ => Ok(()),
        }
    }
}
