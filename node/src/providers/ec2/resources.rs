//! The two attachable resources: EBS volumes and elastic network interfaces (ENIs).

use aws_sdk_ec2::types::{AttachmentStatus, NetworkInterfaceStatus, VolumeAttachmentState, VolumeState};

use super::call::call;
use super::movable::{AttachView, Attachable, Holder};
use super::Ec2Provider;
use crate::providers::ec2::{ProviderError, VolumePlan};

impl Attachable for VolumePlan {
    const WHAT: &'static str = "volume";

    fn id(&self) -> &str {
        &self.volume
    }
    fn source(&self) -> &str {
        &self.source_host
    }
    fn target(&self) -> &str {
        &self.target_host
    }

    async fn describe(&self, p: &Ec2Provider) -> Result<AttachView, ProviderError> {
        let out =
            call(&p.stats, "DescribeVolumes", p.client.describe_volumes().volume_ids(&self.volume).send()).await?;
        let v =
            out.volumes().first().ok_or_else(|| ProviderError::NotFound { what: "volume", id: self.volume.clone() })?;
        let state = v.state().cloned().unwrap_or(VolumeState::Error);
        // A `detached` attachment record no longer holds the volume.
        let holder =
            v.attachments().iter().find(|a| a.state() != Some(&VolumeAttachmentState::Detached)).map(|a| Holder {
                instance: a.instance_id().unwrap_or_default().to_string(),
                attached: state == VolumeState::InUse && a.state() == Some(&VolumeAttachmentState::Attached),
                detaching: a.state() == Some(&VolumeAttachmentState::Detaching),
                attachment_id: None,
                device_index: None,
            });
        let atts: Vec<String> = v
            .attachments()
            .iter()
            .map(|a| format!("{}:{}", a.instance_id().unwrap_or("?"), a.state().map_or("?", |s| s.as_str())))
            .collect();
        Ok(AttachView {
            zone: v.availability_zone().unwrap_or_default().to_string(),
            free: state == VolumeState::Available && holder.is_none(),
            holder,
            summary: format!("{} [{}]", state.as_str(), atts.join(", ")),
        })
    }

    async fn request_detach(&self, p: &Ec2Provider, holder: &Holder) -> Result<(), ProviderError> {
        // The instance id is always given: without it the emulator answers HTTP 500, and real EC2
        // would detach from whichever instance holds the volume.
        let req = p.client.detach_volume().volume_id(&self.volume).instance_id(&holder.instance).device(&self.device);
        call(&p.stats, "DetachVolume", req.send()).await.map(drop)
    }

    async fn request_attach(&self, p: &Ec2Provider, to: &str) -> Result<(), ProviderError> {
        let req = p.client.attach_volume().volume_id(&self.volume).instance_id(to).device(&self.device);
        call(&p.stats, "AttachVolume", req.send()).await.map(drop)
    }
}

/// An ENI move (the `Interface` variant of `AddressPlan`, borrowed).
pub(super) struct InterfaceMove<'a> {
    pub interface: &'a str,
    pub source_host: &'a str,
    pub target_host: &'a str,
    pub device_index: i32,
}

impl Attachable for InterfaceMove<'_> {
    const WHAT: &'static str = "network interface";

    fn id(&self) -> &str {
        self.interface
    }
    fn source(&self) -> &str {
        self.source_host
    }
    fn target(&self) -> &str {
        self.target_host
    }

    async fn describe(&self, p: &Ec2Provider) -> Result<AttachView, ProviderError> {
        let eni = describe_interface(p, self.interface).await?;
        let status = eni.status().cloned().unwrap_or(NetworkInterfaceStatus::Detaching);
        let holder = eni.attachment().filter(|a| a.status() != Some(&AttachmentStatus::Detached)).map(|a| Holder {
            instance: a.instance_id().unwrap_or_default().to_string(),
            attached: a.status() == Some(&AttachmentStatus::Attached),
            detaching: a.status() == Some(&AttachmentStatus::Detaching),
            attachment_id: a.attachment_id().map(str::to_string),
            device_index: a.device_index(),
        });
        let summary = match &holder {
            Some(h) => format!(
                "{} [{}:{}]",
                status.as_str(),
                h.instance,
                eni.attachment().and_then(|a| a.status()).map_or("?", |s| s.as_str())
            ),
            None => status.as_str().to_string(),
        };
        Ok(AttachView {
            zone: eni.availability_zone().unwrap_or_default().to_string(),
            free: status == NetworkInterfaceStatus::Available && holder.is_none(),
            holder,
            summary,
        })
    }

    async fn request_detach(&self, p: &Ec2Provider, holder: &Holder) -> Result<(), ProviderError> {
        let attachment = holder.attachment_id.as_deref().ok_or_else(|| ProviderError::BadState {
            what: Self::WHAT,
            id: self.interface.into(),
            state: "attached without an attachment id".into(),
            why: "DetachNetworkInterface needs the attachment id",
        })?;
        let req = p.client.detach_network_interface().attachment_id(attachment);
        call(&p.stats, "DetachNetworkInterface", req.send()).await.map(drop)
    }

    async fn request_attach(&self, p: &Ec2Provider, to: &str) -> Result<(), ProviderError> {
        let req = p
            .client
            .attach_network_interface()
            .network_interface_id(self.interface)
            .instance_id(to)
            .device_index(self.device_index);
        call(&p.stats, "AttachNetworkInterface", req.send()).await.map(drop)
    }

    fn check_movable(&self, view: &AttachView) -> Result<(), ProviderError> {
        // An instance's primary interface (device index 0) is its own identity: it cannot leave.
        if self.device_index == 0 || view.holder.as_ref().is_some_and(|h| h.device_index == Some(0)) {
            return Err(ProviderError::BadState {
                what: Self::WHAT,
                id: self.interface.into(),
                state: "primary interface (device index 0)".into(),
                why: "only secondary interfaces can move between instances; give the workload its own ENI",
            });
        }
        Ok(())
    }
}

pub(super) async fn describe_interface(
    p: &Ec2Provider,
    id: &str,
) -> Result<aws_sdk_ec2::types::NetworkInterface, ProviderError> {
    let req = p.client.describe_network_interfaces().network_interface_ids(id);
    let out = call(&p.stats, "DescribeNetworkInterfaces", req.send()).await?;
    out.network_interfaces()
        .first()
        .cloned()
        .ok_or_else(|| ProviderError::NotFound { what: "network interface", id: id.into() })
}
