//! The node's one long-lived identity: an ed25519 key in the node's data dir. The mesh derives its
//! libp2p identity from the same seed (`libp2p::identity::Keypair::ed25519_from_bytes(seed)`), and
//! the transfer layer derives its TLS certificates from it, so a peer is the same key everywhere
//! and its [`NodeId`] is its public key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hotspot_protocol::NodeId;

/// Versioned file format: magic + version, then the 32-byte secret seed.
const KEY_MAGIC: &[u8; 8] = b"HSKEY\0\0\x01";
const KEY_FILE_LEN: usize = KEY_MAGIC.len() + 32;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading node key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing node key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("node key {path} is not a hotspot-mesh key file (wrong size or version)")]
    BadFormat { path: PathBuf },
    #[error("node key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
}

#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.node_id().short())
    }
}

impl NodeKey {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(IdentityError::Random)?;
        Ok(Self::from_seed(seed))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// The secret seed (for deriving the libp2p keypair). Handle with care.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// Loads the key at `path`, creating it (mode 0600, atomically) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
                if mode & 0o077 != 0 {
                    return Err(IdentityError::Permissions { path: path.into(), mode });
                }
                if bytes.len() != KEY_FILE_LEN || &bytes[..KEY_MAGIC.len()] != KEY_MAGIC {
                    return Err(IdentityError::BadFormat { path: path.into() });
                }
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&bytes[KEY_MAGIC.len()..]);
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.write_new(path)?;
                Ok(key)
            }
            Err(source) => Err(IdentityError::Read { path: path.into(), source }),
        }
    }

    fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let werr = |source| IdentityError::Write { path: path.into(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(werr)?;
        f.write_all(KEY_MAGIC).map_err(werr)?;
        f.write_all(&self.seed()).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, path).map_err(werr)
    }
}

/// Checks an ed25519 signature by `node` over `msg`.
pub fn verify(node: &NodeId, msg: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&node.0) else { return false };
    key.verify(msg, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/node.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let sig = a.sign(b"advert");
        assert!(verify(&a.node_id(), b"advert", &sig));
        assert!(!verify(&a.node_id(), b"forged", &sig));
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(NodeKey::load_or_create(&path), Err(IdentityError::BadFormat { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(NodeKey::load_or_create(&path), Err(IdentityError::Permissions { .. })));
    }
}
