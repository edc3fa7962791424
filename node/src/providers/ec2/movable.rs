//! The detach/attach state machine shared by EBS volumes and ENIs: validate, detach from the
//! source, attach to the target, and roll back, each step checking the real state first.

use std::future::Future;

use tracing::info;

use super::describe::{self, wait_until};
use super::Ec2Provider;
use crate::providers::ec2::{MoveStep, ProviderError};

/// Who holds a resource, as the API reports it.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub instance: String,
    /// The attachment is complete (`attached`).
    pub attached: bool,
    /// A detach is already under way.
    pub detaching: bool,
    /// ENIs are detached by attachment id.
    pub attachment_id: Option<String>,
    pub device_index: Option<i32>,
}

/// A resource's state, reduced to what the move needs.
#[derive(Debug, Clone)]
pub(super) struct AttachView {
    pub zone: String,
    pub holder: Option<Holder>,
    /// Attached nowhere and usable (`available`).
    pub free: bool,
    /// The raw states, for messages.
    pub summary: String,
}

impl AttachView {
    pub fn attached_to(&self, instance: &str) -> bool {
        self.holder.as_ref().is_some_and(|h| h.instance == instance && h.attached)
    }

    fn held_by(&self) -> Option<&str> {
        self.holder.as_ref().map(|h| h.instance.as_str())
    }
}

/// One kind of attachable resource (EBS volume, ENI) and the API calls that move it.
pub(super) trait Attachable: Sync {
    /// "volume" or "network interface", for messages.
    const WHAT: &'static str;
    fn id(&self) -> &str;
    fn source(&self) -> &str;
    fn target(&self) -> &str;
    fn describe(&self, p: &Ec2Provider) -> impl Future<Output = Result<AttachView, ProviderError>> + Send;
    fn request_detach(
        &self,
        p: &Ec2Provider,
        holder: &Holder,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    fn request_attach(&self, p: &Ec2Provider, to: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Resource-specific refusals (e.g. an instance's primary interface cannot move).
    fn check_movable(&self, _view: &AttachView) -> Result<(), ProviderError> {
        Ok(())
    }
}

pub(super) async fn step<A: Attachable>(p: &Ec2Provider, r: &A, at: MoveStep) -> Result<MoveStep, ProviderError> {
    let view = r.describe(p).await?;
    // Already on the target (e.g. the crash came after the attach): every step agrees it is done.
    if view.attached_to(r.target()) {
        return Ok(MoveStep::Attached);
    }
    match at {
        MoveStep::Planned => {
            check_zone(p, r, &view).await?;
            check_holder(r, &view)?;
            r.check_movable(&view)?;
            Ok(MoveStep::Detaching)
        }
        MoveStep::Detaching => {
            check_holder(r, &view)?;
            detach(p, r, view, r.source()).await?;
            Ok(MoveStep::Detached)
        }
        MoveStep::Detached => {
            // Re-checked: the journal may be resuming much later.
            check_zone(p, r, &view).await?;
            attach(p, r, &view, r.target()).await?;
            Ok(MoveStep::Attached)
        }
        MoveStep::Attached => Ok(MoveStep::Attached),
    }
}

/// Puts the resource back on the source, from wherever the move left it.
pub(super) async fn roll_back<A: Attachable>(p: &Ec2Provider, r: &A) -> Result<(), ProviderError> {
    let view = r.describe(p).await?;
    if view.attached_to(r.source()) {
        return Ok(());
    }
    let view = match view.held_by() {
        Some(h) if h == r.target() => detach(p, r, view, r.target()).await?,
        Some(h) if h == r.source() => view, // our attach is in flight: attach() waits for it
        Some(other) => return Err(in_use::<A>(r, other)),
        None => view,
    };
    attach(p, r, &view, r.source()).await?;
    info!(what = A::WHAT, id = r.id(), "rolled back to the source");
    Ok(())
}

fn in_use<A: Attachable>(r: &A, holder: &str) -> ProviderError {
    ProviderError::InUse { what: A::WHAT, id: r.id().into(), attached_to: holder.into() }
}

/// Only the source (or nobody) may hold it; anyone else means it is not ours to move. EC2 would
/// refuse the attach later; the emulator would silently attach it twice.
fn check_holder<A: Attachable>(r: &A, view: &AttachView) -> Result<(), ProviderError> {
    match view.held_by() {
        Some(h) if h != r.source() && h != r.target() => Err(in_use(r, h)),
        _ => Ok(()),
    }
}

/// Volumes and interfaces live in one availability zone; the emulator does not check it.
async fn check_zone<A: Attachable>(p: &Ec2Provider, r: &A, view: &AttachView) -> Result<(), ProviderError> {
    let zone = describe::instance_zone(p, r.target()).await?;
    if zone != view.zone {
        return Err(ProviderError::WrongZone {
            what: A::WHAT,
            id: r.id().into(),
            resource_zone: view.zone.clone(),
            host: r.target().into(),
            host_zone: zone,
        });
    }
    Ok(())
}

/// Detaches from `from` (if it still holds it) and waits until the resource is free.
async fn detach<A: Attachable>(
    p: &Ec2Provider,
    r: &A,
    view: AttachView,
    from: &str,
) -> Result<AttachView, ProviderError> {
    if view.free {
        return Ok(view);
    }
    if let Some(h) = view.holder.as_ref().filter(|h| h.instance == from && !h.detaching) {
        r.request_detach(p, h).await?;
        info!(what = A::WHAT, id = r.id(), from, "detach requested");
    }
    wait_until(p, "detach", A::WHAT, r.id(), || r.describe(p), |v| v.free, |v| v.summary.clone()).await
}

/// Attaches to `to` once the resource is free, and waits until the attachment is complete.
async fn attach<A: Attachable>(p: &Ec2Provider, r: &A, view: &AttachView, to: &str) -> Result<(), ProviderError> {
    match view.held_by() {
        Some(h) if h == to => {} // our earlier request is still in flight: just wait
        Some(other) => return Err(in_use(r, other)),
        None if !view.free => {
            return Err(ProviderError::BadState {
                what: A::WHAT,
                id: r.id().into(),
                state: view.summary.clone(),
                why: "only an available resource can be attached",
            })
        }
        None => {
            r.request_attach(p, to).await?;
            info!(what = A::WHAT, id = r.id(), to, "attach requested");
        }
    }
    wait_until(p, "attach", A::WHAT, r.id(), || r.describe(p), |v| v.attached_to(to), |v| v.summary.clone()).await?;
    Ok(())
}
