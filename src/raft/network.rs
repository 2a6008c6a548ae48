//! Raft RPCs between controllers as `Raft` frames of the native protocol (JSON payloads).
//!
//! The request is a [`RaftRpc`]; the answer is the JSON of the receiving
//! `Raft`'s own `Result`, so a remote Raft error (a higher vote, a conflict)
//! reaches the sender's openraft unchanged. A transport failure (refused,
//! lost, timed out) is `Unreachable`: openraft backs off and retries.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Raft, TypeConfig};
use crate::net::Client;
use crate::proto::{ErrorCode, Kind};

/// One Raft RPC on the wire.
#[derive(Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Creates one [`Peer`] per target controller.
#[derive(Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            client: Arc::new(Client::new(node.addr.clone())),
        }
    }
}

/// The connection to one other controller.
pub struct Peer {
    target: u64,
    client: Arc<Client>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Peer {
    async fn call<T, E>(&self, rpc: RaftRpc, timeout: Duration) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let bytes = self
            .client
            .request(Kind::Raft, &payload, timeout)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let answer: Result<T, RaftError<u64, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, Infallible> {
        self.call(RaftRpc::Append(rpc), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(RaftRpc::Snapshot(rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, Infallible> {
        self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await
    }

    /// Retry an unreachable peer every 200 ms: a restarted controller
    /// rejoins quickly, and a dead one costs one refused connect per try.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// The receiving side: hands one `Raft` frame to the local Raft and
/// encodes its answer.
pub async fn handle(raft: Raft, payload: &[u8]) -> Result<Vec<u8>, (ErrorCode, String)> {
    let rpc: RaftRpc = serde_json::from_slice(payload)
        .map_err(|e| (ErrorCode::BadRequest, format!("malformed raft rpc: {e}")))?;
    let encoded = match rpc {
        RaftRpc::Append(req) => serde_json::to_vec(&raft.append_entries(req).await),
        RaftRpc::Vote(req) => serde_json::to_vec(&raft.vote(req).await),
        RaftRpc::Snapshot(req) => serde_json::to_vec(&raft.install_snapshot(req).await),
    };
    encoded.map_err(|e| (ErrorCode::Internal, e.to_string()))
}
