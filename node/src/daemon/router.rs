//! The one control-API router: every [`Request`] of the control socket is answered here, by the
//! part of the daemon that owns it. Streamed requests (migrate, drain, notice) run to their end
//! even if the CLI goes away.

use std::sync::Arc;
use std::time::Duration;

use hotspot_protocol::migration::MigrationMode;
use tokio::sync::mpsc;

use super::api::{ReserveOutcome, ReserveParams, Reply, Request};
use super::control::Handler;
use super::evacuate::Triggers;
use super::migration::Migrations;
use super::service::NodeService;

pub struct Router {
    pub service: Arc<NodeService>,
    /// `None` when this host cannot checkpoint (no usable CRIU).
    pub migrations: Option<Arc<Migrations>>,
    pub triggers: Arc<Triggers>,
}

const NO_MIGRATION: &str = "migration is not available on this node (see the daemon log: CRIU missing?)";

impl Router {
    async fn reserve(&self, params: ReserveParams) -> Reply {
        match self.service.reserve(params).await {
            Ok(r) => Reply::Reserve(ReserveOutcome { granted: r.granted.map(|g| g.held), attempts: r.attempts }),
            Err(e) => error(e),
        }
    }

    fn notice_deadline(&self, deadline_secs: Option<u64>) -> Duration {
        deadline_secs.map_or_else(|| self.triggers.default_notice_deadline(), Duration::from_secs)
    }
}

fn error(e: impl std::fmt::Display) -> Reply {
    Reply::Error { message: e.to_string() }
}

impl Handler for Router {
    async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Status => self.service.status().await.map_or_else(error, |s| Reply::Status(Box::new(s))),
            Request::Peers => self.service.peer_rows().await.map_or_else(error, |peers| Reply::Peers { peers }),
            Request::Reserve(params) => self.reserve(params).await,
            Request::Release { peer, id } => self.service.release_named(&peer, &id).await.map_or_else(error, |()| Reply::Released { released: true }),
            Request::SetPrice { price_per_hour } => self.service.set_price(price_per_hour).map_or_else(error, |price_per_hour| Reply::PriceSet { price_per_hour }),
            Request::Drain { cancel: true } => self.triggers.undrain(),
            Request::Drain { cancel: false } => self.triggers.drain(None).await,
            Request::Notice { deadline_secs } => self.triggers.notice("notice", self.notice_deadline(deadline_secs), None).await,
            Request::Migrate { .. } => Reply::Error { message: "migrate streams its progress: send it as a streamed request".into() },
        }
    }

    async fn handle_stream(&self, request: Request, out: mpsc::Sender<Reply>) {
        let triggers = self.triggers.clone();
        let _ = match request {
            Request::Migrate { workload, to, mode } => {
                let Some(m) = self.migrations.clone() else {
                    let _ = out.send(Reply::Error { message: NO_MIGRATION.into() }).await;
                    return;
                };
                let mode = mode.unwrap_or(MigrationMode::PreCopy);
                tokio::spawn(async move { m.migrate_mode(workload, to, mode, out).await }).await
            }
            Request::Drain { cancel: false } => {
                tokio::spawn(async move {
                    let reply = triggers.drain(Some(&out)).await;
                    let _ = out.send(reply).await;
                })
                .await
            }
            Request::Notice { deadline_secs } => {
                let deadline = self.notice_deadline(deadline_secs);
                tokio::spawn(async move {
                    let reply = triggers.notice("notice", deadline, Some(&out)).await;
                    let _ = out.send(reply).await;
                })
                .await
            }
            other => {
                let _ = out.send(self.handle(other).await).await;
                Ok(())
            }
        };
    }
}
