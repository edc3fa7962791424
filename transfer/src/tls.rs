//! QUIC TLS bound to node keys: TLS 1.3 with raw public keys (RFC 7250) taken from the node's
//! ed25519 [`NodeKey`]. There is no web PKI and no certificate chain: the "certificate" each side
//! presents is its SubjectPublicKeyInfo, the handshake signature proves possession of the key,
//! and both sides check the presented key against a [`TrustSet`] (mesh members or an allowlist).
//! An untrusted peer fails the handshake, so it never gets a stream, let alone image data.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use hotspot_protocol::ids::{MIGRATE_ALPN, TRANSFER_ALPN};
use hotspot_protocol::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::NodeKey;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) }, followed by the 32 key bytes. DER is canonical, so an exact
/// prefix-and-length match is a complete parse.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of an ed25519 PKCS#8 v1 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// SNI sent by clients. Peers are identified by key, not name; this only has to be a valid name.
pub const SERVER_NAME: &str = "hotspot-mesh.invalid";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("building TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS config unusable for QUIC: {0}")]
    Quic(String),
}

/// Node keys allowed to talk to us. Cloning shares the set, so the mesh can add and remove
/// members while endpoints are running; the next handshake sees the change.
#[derive(Clone, Debug, Default)]
pub struct TrustSet(Arc<RwLock<HashSet<NodeId>>>);

impl TrustSet {
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        TrustSet(Arc::new(RwLock::new(ids.into_iter().collect())))
    }
    pub fn insert(&self, id: NodeId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(id);
    }
    pub fn remove(&self, id: &NodeId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
    pub fn contains(&self, id: &NodeId) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(id)
    }
}

/// The node id carried by an ed25519 SubjectPublicKeyInfo, if that is what `spki` is.
pub fn node_id_from_spki(spki: &[u8]) -> Option<NodeId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX)?;
    Some(NodeId(key.try_into().ok()?))
}

/// The authenticated node id of a QUIC connection's peer.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    node_id_from_spki(certs.first()?.as_ref())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certified_key(key: &NodeKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&key.seed());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing = provider.key_provider.load_private_key(der)?;
    let spki = signing
        .public_key()
        .ok_or(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown))?;
    Ok(Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki.to_vec())], signing)))
}

/// Checks a presented raw public key against the trust set (and, for clients, the expected peer).
#[derive(Debug)]
struct NodeKeyVerifier {
    trust: TrustSet,
    expected: Option<NodeId>,
    provider: Arc<CryptoProvider>,
}

impl NodeKeyVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let peer = node_id_from_spki(end_entity.as_ref())
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.expected.is_some_and(|want| want != peer) {
            tracing::warn!(peer = %peer.short(), "peer presented a different node key than expected");
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        if !self.trust.contains(&peer) {
            tracing::warn!(peer = %peer.short(), "refusing untrusted peer");
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(())
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = SubjectPublicKeyInfoDer::from(cert.as_ref());
        verify_tls13_signature_with_raw_key(message, &spki, dss, &self.provider.signature_verification_algorithms)
    }
}

/// The signature half of both verifier traits (identical method signatures): TLS 1.3 only,
/// ed25519 only, raw public keys only.
macro_rules! signature_methods {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.verify_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

impl ServerCertVerifier for NodeKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }
    signature_methods!();
}

impl ClientCertVerifier for NodeKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }
    signature_methods!();
}

/// TLS config of a receiving endpoint: presents `key`, demands a client key from `trust`.
pub fn server_crypto(key: &NodeKey, trust: TrustSet) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(NodeKeyVerifier { trust, expected: None, provider: provider.clone() });
    let resolver = rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(key, &provider)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    // Image transfers and migration control share the endpoint; the server dispatches on the
    // negotiated ALPN (see `receive::serve_dispatch`).
    config.alpn_protocols = vec![TRANSFER_ALPN.to_vec(), MIGRATE_ALPN.to_vec()];
    Ok(config)
}

/// The ALPN a connection negotiated.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    data.downcast_ref::<quinn::crypto::rustls::HandshakeData>()?.protocol.clone()
}

/// TLS config of a sending endpoint: presents `key`, accepts a server key from `trust` (and, if
/// given, only `expected`).
pub fn client_crypto(key: &NodeKey, trust: TrustSet, expected: Option<NodeId>) -> Result<rustls::ClientConfig, TlsError> {
    client_crypto_alpn(key, trust, expected, TRANSFER_ALPN)
}

/// [`client_crypto`] speaking `alpn` (e.g. [`MIGRATE_ALPN`]) instead of image transfer.
pub fn client_crypto_alpn(key: &NodeKey, trust: TrustSet, expected: Option<NodeId>, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(NodeKeyVerifier { trust, expected, provider: provider.clone() });
    let resolver = rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(key, &provider)?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // the custom verifier below is the whole point: key pinning instead of web PKI
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_node_id() {
        let key = NodeKey::from_seed([7; 32]);
        let ck = certified_key(&key, &provider()).unwrap();
        assert_eq!(node_id_from_spki(ck.cert[0].as_ref()), Some(key.node_id()));
        assert_eq!(node_id_from_spki(&ck.cert[0].as_ref()[1..]), None);
        assert_eq!(node_id_from_spki(b"garbage"), None);
    }
}
