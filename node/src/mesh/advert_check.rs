//! Validation of gossiped adverts, run before gossipsub may forward them.
//!
//! Gossipsub (strict mode) has already checked the libp2p signature against the message's
//! `source`. Here we check that the advert speaks for the key that signed it, that it decodes
//! within its size limit, has sane values, and is newer than what we hold. A message that fails a
//! check that an honest node can never fail is `Reject`ed (not forwarded, sender penalised); a
//! message that is merely old or from a newer protocol version is `Ignore`d (not forwarded, no
//! penalty), because gossip delivers duplicates and late copies in normal operation.

use std::fmt;

use hotspot_protocol::{decode, DecodeError, NodeAdvert, NodeId};
use libp2p::{identity, PeerId};

use super::peer_table::PeerTable;

/// Why an advert was rejected; counted per reason in the node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `source`/signature: we only accept signed adverts.
    Unsigned,
    TooLarge { len: usize, limit: usize },
    /// Not a valid advert envelope or body (bad magic, bad CBOR, insane values).
    Malformed(String),
    /// The advert claims a node id whose key did not sign the message.
    SignerMismatch { claimed: NodeId, signer: PeerId },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Unsigned => write!(f, "unsigned advert"),
            Rejection::TooLarge { len, limit } => write!(f, "advert of {len} bytes exceeds {limit}"),
            Rejection::Malformed(why) => write!(f, "malformed advert: {why}"),
            Rejection::SignerMismatch { claimed, signer } => {
                write!(f, "advert for node {} signed by peer {signer}", claimed.short())
            }
        }
    }
}

impl Rejection {
    /// Short stable name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::SignerMismatch { .. } => "forged",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept(Box<NodeAdvert>),
    /// Valid but not worth spreading (stale, our own, a newer protocol version).
    Ignore(&'static str),
    Reject(Rejection),
}

/// The libp2p peer id that belongs to a node id (both are the same ed25519 public key).
pub fn peer_id_of(node: &NodeId) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(&node.0).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

/// The node id of a libp2p keypair derived from a node key seed.
pub fn node_id_of(key: &identity::Keypair) -> Option<NodeId> {
    let ed = key.public().try_into_ed25519().ok()?;
    Some(NodeId(ed.to_bytes()))
}

/// Checks one advert received on the advert topic.
pub fn check_advert(data: &[u8], source: Option<&PeerId>, local: &NodeId, table: &PeerTable) -> Verdict {
    let Some(source) = source else {
        return Verdict::Reject(Rejection::Unsigned);
    };
    let advert: NodeAdvert = match decode(data) {
        Ok(a) => a,
        Err(DecodeError::UnsupportedVersion { .. }) => return Verdict::Ignore("unsupported protocol version"),
        Err(DecodeError::TooLarge { len, limit }) => return Verdict::Reject(Rejection::TooLarge { len, limit }),
        Err(e) => return Verdict::Reject(Rejection::Malformed(e.to_string())),
    };
    if peer_id_of(&advert.node).as_ref() != Some(source) {
        return Verdict::Reject(Rejection::SignerMismatch { claimed: advert.node, signer: *source });
    }
    if advert.node == *local {
        return Verdict::Ignore("own advert");
    }
    if !table.is_newer(&advert) {
        return Verdict::Ignore("stale sequence number");
    }
    Verdict::Accept(Box::new(advert))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use hotspot_protocol::encode;

    fn key(n: u8) -> identity::Keypair {
        identity::Keypair::ed25519_from_bytes([n; 32]).unwrap()
    }

    fn advert_of(k: &identity::Keypair, seq: u64) -> NodeAdvert {
        NodeAdvert { seq, price_per_hour: 0.5, ..NodeAdvert::blank(node_id_of(k).unwrap(), "n") }
    }

    fn table() -> PeerTable {
        PeerTable::new(Duration::from_secs(10), 16)
    }

    #[test]
    fn node_and_peer_ids_agree() {
        let k = key(7);
        assert_eq!(peer_id_of(&node_id_of(&k).unwrap()), Some(k.public().to_peer_id()));
    }

    #[test]
    fn honest_advert_is_accepted() {
        let k = key(1);
        let bytes = encode(&advert_of(&k, 1)).unwrap();
        let v = check_advert(&bytes, Some(&k.public().to_peer_id()), &NodeId([0; 32]), &table());
        assert!(matches!(v, Verdict::Accept(_)), "{v:?}");
    }

    #[test]
    fn forged_node_id_is_rejected() {
        let victim = key(1);
        let forger = key(2);
        let bytes = encode(&advert_of(&victim, 99)).unwrap();
        let v = check_advert(&bytes, Some(&forger.public().to_peer_id()), &NodeId([0; 32]), &table());
        assert!(matches!(v, Verdict::Reject(Rejection::SignerMismatch { .. })), "{v:?}");
    }

    #[test]
    fn malformed_oversized_unsigned_and_insane_are_rejected() {
        let k = key(1);
        let src = k.public().to_peer_id();
        let me = NodeId([0; 32]);
        assert!(matches!(check_advert(b"HM\0\x01garbage", Some(&src), &me, &table()), Verdict::Reject(Rejection::Malformed(_))));
        assert!(matches!(check_advert(&vec![0u8; 64 * 1024], Some(&src), &me, &table()), Verdict::Reject(Rejection::TooLarge { .. })));
        let good = encode(&advert_of(&k, 1)).unwrap();
        assert_eq!(check_advert(&good, None, &me, &table()), Verdict::Reject(Rejection::Unsigned));
        let mut insane = advert_of(&k, 1);
        insane.price_per_hour = f64::NAN;
        // encode() does not validate; build the bytes by hand like an attacker would.
        let mut bytes = b"HM\0\x01".to_vec();
        serde_cbor::to_writer(&mut bytes, &insane).unwrap();
        assert!(matches!(check_advert(&bytes, Some(&src), &me, &table()), Verdict::Reject(Rejection::Malformed(_))));
    }

    #[test]
    fn stale_and_newer_version_are_ignored_not_rejected() {
        let k = key(1);
        let src = k.public().to_peer_id();
        let mut t = table();
        t.admit(advert_of(&k, 5), src, Instant::now(), 0);
        let old = encode(&advert_of(&k, 5)).unwrap();
        assert_eq!(check_advert(&old, Some(&src), &NodeId([0; 32]), &t), Verdict::Ignore("stale sequence number"));
        let mut future = old.clone();
        future[3] = 0xff;
        assert!(matches!(check_advert(&future, Some(&src), &NodeId([0; 32]), &t), Verdict::Ignore(_)));
    }
}
