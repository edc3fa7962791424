//! The daemon on EC2: starts [`Ec2Node`] when the config has an `[ec2]` section and folds what
//! EC2 says about this node into the config.

use std::sync::Arc;

use hotspot_protocol::NodeId;

use super::config::Config;
use crate::providers::ec2::node::{Ec2Node, Ec2NodeError};

/// Starts the EC2 side when the config has an `[ec2]` section, and folds what it learned into
/// `config` (zone, transfer address, bootstrap peers).
pub async fn start_if_configured(config: &mut Config, node: &NodeId) -> Result<Option<Arc<Ec2Node>>, Ec2NodeError> {
    let Some(settings) = config.ec2.clone() else { return Ok(None) };
    let ec2 = Ec2Node::start(&settings, node).await?;
    apply_to(&ec2, config);
    Ok(Some(Arc::new(ec2)))
}

/// What EC2 says about this node goes into the daemon config: the zone (unless set), the
/// transfer address peers dial (unless set), and the bootstrap peers.
fn apply_to(ec2: &Ec2Node, config: &mut Config) {
    if config.zone == Config::default().zone {
        config.zone = ec2.identity.zone.clone();
    }
    if config.transfer_advertise.is_none() {
        let port = config.transfer_listen.rsplit(':').next().unwrap_or("7947");
        config.transfer_advertise = ec2.private_ip.map(|ip| std::net::SocketAddr::new(ip, port.parse().unwrap_or(7947)).to_string());
    }
    config.mesh.bootstrap.extend(ec2.bootstrap.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ec2::Ec2NodeSettings;

    #[test]
    fn ec2_section_parses_and_typos_are_refused() {
        assert_eq!(Config::from_toml("").unwrap().ec2, None, "no section: not on EC2");
        let c = Config::from_toml("[ec2]\ncluster = \"prod\"\npeer_port = 4001\n[ec2.api]\nendpoint_url = \"http://127.0.0.1:5000\"\n").unwrap();
        let s = c.ec2.unwrap();
        assert_eq!((s.cluster.as_str(), s.peer_port, s.api.endpoint_url.as_deref()), ("prod", 4001, Some("http://127.0.0.1:5000")));
        assert_eq!(Config::from_toml("[ec2]\n").unwrap().ec2, Some(Ec2NodeSettings::default()));
        assert!(Config::from_toml("[ec2]\nclustr = \"x\"\n").unwrap_err().contains("clustr"));
    }
}
