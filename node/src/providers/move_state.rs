//! The local and LAN providers' own record of a move, kept by the migration journal between
//! calls as versioned CBOR. The world is checked before every step anyway; this says where the
//! resources went so a move back after a crash knows which node to take them from.

use serde::{Deserialize, Serialize};

use crate::migrate::MoveError;


#[derive(Debug, thiserror::Error)]
pub enum MoveStateError {
    #[error("not a provider move record: {0}")]
    Malformed(#[source] serde_cbor::Error),
    #[error("provider move record format {0} is newer than {STATE_FORMAT}; upgrade this node")]
    Newer(u32),
    /// A record of another version than the one this node reads (the EC2 node's own record).
    #[error("move record version {found} (this node reads {reads})")]
    Version { found: u16, reads: u16 },
}

/// Current format; a newer one is refused rather than misread.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    VolumeOnTarget,
    AddressOnTarget,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveState {
    pub format: u32,
    /// Name of the target node (in the cluster directory).
    pub target: Option<String>,
    pub done: Vec<Step>,
}

impl MoveState {
    /// An empty buffer is a move that has not started.
    pub fn decode(bytes: &[u8]) -> Result<Self, MoveStateError> {
        if bytes.is_empty() {
            return Ok(MoveState { format: STATE_FORMAT, ..Default::default() });
        }
        let st: MoveState = serde_cbor::from_slice(bytes).map_err(MoveStateError::Malformed)?;
        if st.format > STATE_FORMAT {
            return Err(MoveStateError::Newer(st.format));
        }
        Ok(st)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("state serializes")
    }

    pub fn mark(&mut self, step: Step) {
        if !self.done.contains(&step) {
            self.done.push(step);
        }
    }

    pub fn unmark(&mut self, step: Step) {
        self.done.retain(|s| *s != step);
    }
}

/// Runs one blocking provider step on the blocking pool with the journaled `state` handed in
/// and back (kept even when the step fails: it records what was done before the failure).
/// The step's error becomes the source of a [`MoveError::Provider`] naming `provider` and `op`.
pub(crate) async fn run_blocking_step<P, E>(
    provider: &P,
    (name, op): (&'static str, &'static str),
    state: &mut Vec<u8>,
    step: impl FnOnce(&P, &mut Vec<u8>) -> Result<(), E> + Send + 'static,
) -> Result<(), MoveError>
where
    P: Clone + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let (me, mut st) = (provider.clone(), std::mem::take(state));
    let (st, result) = tokio::task::spawn_blocking(move || {
        let r = step(&me, &mut st);
        (st, r)
    })
    .await?;
    *state = st;
    result.map_err(MoveError::provider(name, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage_and_newer_formats() {
        let mut st = MoveState::decode(&[]).unwrap();
        st.target = Some("node2".into());
        st.mark(Step::VolumeOnTarget);
        st.mark(Step::VolumeOnTarget);
        assert_eq!(st.done, vec![Step::VolumeOnTarget]);
        assert_eq!(MoveState::decode(&st.encode()).unwrap(), st);
        assert!(MoveState::decode(b"\xff\x00garbage").is_err());
        let newer = MoveState { format: STATE_FORMAT + 1, ..Default::default() };
        assert!(MoveState::decode(&newer.encode()).unwrap_err().to_string().contains("newer"));
        st.unmark(Step::VolumeOnTarget);
        assert!(st.done.is_empty());
    }
}
