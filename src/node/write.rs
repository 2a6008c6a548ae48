//! The write path: gateway (group by partition, forward), primary (log, apply, replicate, wait), replica (fence, apply in LSN order).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use controller::{partition_of, NodeId, PartitionId};
use store::batch::{Batch, BatchView};
use store::{Lsn, Term};

use super::catchup::{cut_suffix, divergence_point, install_snapshot, term_at, wire_term_at};
use super::msg::{CatchUpReply, CatchUpRequest, Forward, Replicate, ReplicateAck};
use super::{Lane, Node, REPLICA_TIMEOUT, WRITE_DEADLINE};
use crate::net::{ClientError, ReplyFuture};
use crate::proto::{ErrorCode, Kind};

type WriteResult<T = ()> = Result<T, (ErrorCode, String)>;

/// Records a catch-up resend reads from the log at once.
const RESEND_BYTES_MAX: usize = 4 << 20;

/// Collector -> gateway: one batch, acknowledged when every partition's
/// group is on all its Active copies. The ack payload is the sample count.
pub fn handle_write(node: &Arc<Node>, payload: Bytes) -> ReplyFuture {
    let node = node.clone();
    Box::pin(async move {
        let partitions = node.map().partitions;
        let (groups, samples) = split(&payload, partitions)?;
        node.ingest(groups).await?;
        node.metrics.add_ingested(samples as u64);
        Ok((samples as u64).to_le_bytes().to_vec())
    })
}

/// A batch per partition, and the sample count.
pub type Split = (Vec<(u32, Batch)>, usize);

/// Splits a batch into one batch per partition (shard key: the resource).
pub fn split(batch: &[u8], partitions: u32) -> WriteResult<Split> {
    let view = store::batch::decode(batch)
        .map_err(|e| (ErrorCode::BadRequest, format!("malformed batch: {e}")))?;
    let groups = store::batch::split(&view, |key| {
        partition_of(key.resource.as_bytes(), partitions).0
    });
    Ok((groups, view.sample_count()))
}

/// Gateway -> primary.
pub fn handle_forward(node: &Arc<Node>, payload: Bytes) -> ReplyFuture {
    let node = node.clone();
    Box::pin(async move {
        let f = Forward::decode(&payload)?;
        if f.epoch > node.map().epoch.0 {
            node.refresh_map().await;
        }
        let batch = store::batch::decode(f.batch)
            .map_err(|e| (ErrorCode::BadRequest, format!("malformed batch: {e}")))?;
        node.primary_write(f.partition, batch).await?;
        Ok(Vec::new())
    })
}

/// What a new primary whose log ends at `(own_term, own_last)` does about
/// a peer's log, given as its term history (first LSN of each term) and
/// last LSN.
#[derive(Debug, PartialEq, Eq)]
enum Reconcile {
    /// The peer's log is not ahead of ours: nothing to take.
    Done,
    /// Ours is a prefix of the peer's: take its records after ours.
    Take,
    /// Our log parts from the peer's after this LSN, and the peer's is the
    /// newer: cut ours there, then take.
    Cut(u64),
}

fn reconcile(own_term: u64, own_last: u64, history: &[(u64, u64)], last: u64) -> Reconcile {
    if (wire_term_at(history, last), last) <= (own_term, own_last) {
        return Reconcile::Done;
    }
    match divergence_point(own_term, own_last, history, last) {
        Some(keep) => Reconcile::Cut(keep),
        None => Reconcile::Take,
    }
}

impl Node {
    /// Writes every partition's group concurrently; fails if any fails.
    pub async fn ingest(self: &Arc<Self>, groups: Vec<(u32, Batch)>) -> WriteResult {
        let mut tasks = Vec::with_capacity(groups.len());
        for (p, batch) in groups {
            let node = self.clone();
            tasks.push(tokio::spawn(async move {
                node.write_partition(p, &batch).await
            }));
        }
        let mut first_error = None;
        for t in tasks {
            let r = t
                .await
                .unwrap_or_else(|e| Err((ErrorCode::Internal, format!("write task failed: {e}"))));
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => {
                self.metrics.add_write_error();
                Err(e)
            }
        }
    }

    /// Routes one partition's batch to its primary, retrying through map
    /// changes (failover) until it is acknowledged or the deadline passes.
    async fn write_partition(self: &Arc<Self>, p: u32, batch: &Batch) -> WriteResult {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let map = self.map();
            let result = match map.primary(PartitionId(p)) {
                None => Err((
                    ErrorCode::Unavailable,
                    format!("partition {p} has no primary"),
                )),
                Some(primary) if primary == self.id => self.primary_write(p, batch.view()).await,
                Some(primary) => {
                    Box::pin(self.forward_while_primary(primary, p, map.epoch.0, batch.bytes()))
                        .await
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err((code, message)) if code.is_retryable() && Instant::now() < deadline => {
                    tracing::debug!(partition = p, "write retry: {message}");
                    if matches!(
                        code,
                        ErrorCode::StaleMap | ErrorCode::NotOwner | ErrorCode::Fenced
                    ) {
                        self.refresh_map().await;
                    }
                    // Wait for the controller to move the partition, briefly.
                    tokio::select! {
                        _ = self.map_changed.notified() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
                Err((code, message)) => {
                    tracing::warn!(partition = p, "write failed ({code:?}): {message}");
                    return Err((code, message));
                }
            }
        }
    }

    /// Forwards to `primary`, but gives up as soon as the map names another
    /// primary for `p`: a hung old primary (paused, partitioned) must not
    /// hold the write past the failover. Resending is safe: writes are
    /// idempotent, and the old primary can no longer acknowledge.
    async fn forward_while_primary(
        &self,
        primary: NodeId,
        p: u32,
        epoch: u64,
        batch: &[u8],
    ) -> WriteResult {
        let forward = self.forward(primary, p, epoch, batch);
        tokio::pin!(forward);
        loop {
            tokio::select! {
                r = &mut forward => return r,
                _ = self.map_changed.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
            if self.map().primary(PartitionId(p)) != Some(primary) {
                return Err((
                    ErrorCode::StaleMap,
                    format!("partition {p}: the primary moved away from node {primary}"),
                ));
            }
        }
    }

    async fn forward(&self, primary: NodeId, p: u32, epoch: u64, batch: &[u8]) -> WriteResult {
        let client = self.peer(primary, Lane::Requests).ok_or((
            ErrorCode::StaleMap,
            format!("node {primary} is not in the map"),
        ))?;
        let payload = Forward {
            partition: p,
            epoch,
            batch,
        }
        .encode();
        match client
            .request(Kind::Forward, &payload, super::WRITE_DEADLINE)
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::Remote { code, message, .. }) => Err((code, message)),
            Err(e) => Err((ErrorCode::Unavailable, e.to_string())),
        }
    }

    /// The primary's side: append to the log and memory under the
    /// partition's sequencer, ship to every Active replica, and return once
    /// they have applied it. A replica the map has Down is skipped (the
    /// partition is degraded and the primary acknowledges alone).
    pub async fn primary_write(self: &Arc<Self>, p: u32, batch: BatchView<'_>) -> WriteResult {
        let pid = PartitionId(p);
        let seq = self
            .sequencers
            .get(p as usize)
            .ok_or((ErrorCode::BadRequest, format!("no partition {p}")))?;
        let _guard = seq.lock().await;
        let map = self.map();
        let info = map
            .partition(pid)
            .ok_or((ErrorCode::BadRequest, format!("no partition {p}")))?;
        if map.primary(pid) != Some(self.id) {
            return Err((
                ErrorCode::NotOwner,
                format!("node {} is not the primary of partition {p}", self.id),
            ));
        }
        if !map.is_active_copy(pid, self.id) {
            return Err((
                ErrorCode::Unavailable,
                format!(
                    "partition {p}: the primary copy on node {} is not Active",
                    self.id
                ),
            ));
        }
        let term = info.term.0;
        if self.fence_of(p) > term {
            // A newer primary already took over through this copy: the map
            // here is behind. Refuse before appending anything of this term.
            self.metrics.add_fenced_write();
            return Err((
                ErrorCode::Fenced,
                format!(
                    "partition {p}: term {term} is fenced by term {}",
                    self.fence_of(p)
                ),
            ));
        }
        if self.synced_term(p) < term {
            // First write of this term here (the map-change sync did not
            // finish yet): take over what the other copies acknowledged.
            Box::pin(self.sync_as_primary(p, term)).await?;
        }
        let part = self.partition(p)?;
        let lsn = part
            .append_batch(Term(term), &batch)
            .map_err(|e| store_error(p, e))?;
        let batch = batch.bytes();
        self.count_written(p, batch.len());
        let prev_term = term_at(&part.term_history(), lsn.0 - 1);
        let targets: Vec<NodeId> = info
            .replicas
            .iter()
            .chain(info.learners.iter().map(|l| &l.node))
            .copied()
            .filter(|&n| n != self.id)
            .collect();
        let mut waits = Vec::new();
        for r in targets {
            if map.is_active_copy(pid, r) {
                waits.push(Box::pin(
                    self.replicate_to(r, p, term, lsn.0, prev_term, batch),
                ));
            } else if map
                .state_of(r)
                .is_some_and(|s| s != controller::NodeState::Down)
            {
                // A catching-up copy: keep it fed, but do not wait for it.
                let record = Replicate {
                    partition: p,
                    epoch: map.epoch.0,
                    primary_term: term,
                    term,
                    lsn: lsn.0,
                    prev_term,
                    batch,
                };
                self.replicate_best_effort(r, record.encode());
            }
        }
        for w in waits {
            if let Err(e) = w.await {
                if e.0 == ErrorCode::Fenced {
                    self.metrics.add_fenced_write();
                }
                return Err(e);
            }
        }
        // A new primary fenced this copy while the write was in flight. Its
        // takeover read this log under the apply lock, maybe before the
        // append: the record may be missing there and would be cut. When no
        // replica was waited for (the map here still had it stale), nothing
        // else stops this acknowledgement.
        let fence = self.fence_of(p);
        if fence > term {
            self.metrics.add_fenced_write();
            return Err((
                ErrorCode::Fenced,
                format!("partition {p}: term {term} was fenced by term {fence} during the write"),
            ));
        }
        self.metrics.add_replicated_batch();
        Ok(())
    }

    /// Before a new primary writes in its term, its log must hold every
    /// record any copy may have acknowledged (Raft's leader completeness):
    /// its replicas cut whatever does not match it. The controller picks
    /// primaries without looking at logs, so the primary reconciles with
    /// every other Active copy instead. Where a peer's log is ahead (a newer
    /// last term, or the same term and longer), it cuts its own suffix that
    /// the peer's term history says never counted, then takes the peer's
    /// records. A peer behind it is put right by log matching when it
    /// replicates. The requests fence the peers with the new term under
    /// their apply lock, so the old primary gets no acknowledgement through
    /// them for a record this sync did not see.
    async fn sync_as_primary(&self, p: u32, term: u64) -> WriteResult {
        let pid = PartitionId(p);
        let deadline = Instant::now() + WRITE_DEADLINE;
        let map = self.map();
        for r in map
            .active_replicas(pid)
            .into_iter()
            .filter(|&r| r != self.id)
        {
            let mut taken = 0;
            loop {
                if !self.map().is_active_copy(pid, r) {
                    break;
                }
                let client = self
                    .peer(r, Lane::Replication)
                    .ok_or((ErrorCode::StaleMap, format!("node {r} is not in the map")))?;
                let part = self.partition(p)?;
                let (own_term, own_last) = (part.last_term().0, part.last_lsn().0);
                let request = CatchUpRequest {
                    partition: p,
                    from_lsn: own_last + 1,
                    max_bytes: RESEND_BYTES_MAX as u32,
                    fence_term: term,
                };
                let reply = match client
                    .request(Kind::CatchUp, &request.encode(), REPLICA_TIMEOUT)
                    .await
                {
                    Ok(bytes) => CatchUpReply::decode(&bytes)?,
                    Err(ClientError::Remote {
                        code: ErrorCode::TrimmedAway,
                        ..
                    }) => {
                        // Our log ends before the peer's begins: a full copy.
                        install_snapshot(self, &client, p)
                            .await
                            .map_err(|e| (ErrorCode::Unavailable, e))?;
                        continue;
                    }
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(partition = p, peer = r.0, "primary sync retry: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => {
                        return Err((
                            ErrorCode::Unavailable,
                            format!("partition {p}: cannot sync with node {r}: {e}"),
                        ))
                    }
                };
                match reconcile(own_term, own_last, &reply.term_history, reply.last_lsn) {
                    Reconcile::Done => break,
                    Reconcile::Take => {}
                    Reconcile::Cut(keep) => {
                        if cut_suffix(self, p, &part, (own_term, own_last), keep).is_err() {
                            install_snapshot(self, &client, p)
                                .await
                                .map_err(|e| (ErrorCode::Unavailable, e))?;
                        }
                        continue;
                    }
                }
                let mut applied = 0;
                for rec in &reply.records {
                    if rec.lsn == part.last_lsn().0 + 1 {
                        part.apply_replicated(Lsn(rec.lsn), Term(rec.term), &rec.batch)
                            .map_err(|e| store_error(p, e))?;
                        applied += 1;
                    }
                }
                if applied == 0 {
                    if (part.last_term().0, part.last_lsn().0) != (own_term, own_last)
                        && Instant::now() < deadline
                    {
                        // Our log moved meanwhile (a catch-up round): ask again.
                        continue;
                    }
                    // The peer is ahead but sent nothing that follows our
                    // log: never write over what it may have acknowledged.
                    return Err((
                        ErrorCode::Unavailable,
                        format!(
                            "partition {p}: node {r} is ahead (LSN {}) \
                             but sent no record after LSN {own_last}",
                            reply.last_lsn
                        ),
                    ));
                }
                taken += applied;
            }
            if taken > 0 {
                tracing::info!(
                    partition = p,
                    peer = r.0,
                    records = taken,
                    "new primary took over records from a peer"
                );
            }
        }
        self.synced.lock().expect("poisoned").insert(p, term);
        Ok(())
    }

    pub(super) fn synced_term(&self, p: u32) -> u64 {
        self.synced
            .lock()
            .expect("poisoned")
            .get(&p)
            .copied()
            .unwrap_or(0)
    }

    /// After a map change: every partition this node now leads in a term it
    /// has not synced yet takes over what its peers have, so reads from the
    /// new primary see every acknowledged sample before the next write.
    pub async fn sync_new_primaries(self: Arc<Self>) {
        let map = self.map();
        for p in 0..map.partitions {
            let pid = PartitionId(p);
            let Some(info) = map.partition(pid) else {
                continue;
            };
            if map.primary(pid) != Some(self.id) || self.synced_term(p) >= info.term.0 {
                continue;
            }
            let Some(seq) = self.sequencers.get(p as usize) else {
                continue;
            };
            let _guard = seq.lock().await;
            if self.synced_term(p) >= info.term.0 {
                continue;
            }
            let result = self.sync_as_primary(p, info.term.0).await;
            if let Err((_, e)) = result {
                tracing::warn!(
                    partition = p,
                    "new primary could not sync yet (the next write retries): {e}"
                );
            }
        }
    }

    /// Ships one record to an Active replica and waits for it to be applied,
    /// filling any gap from the local log first. Returns early (degraded) if
    /// the map stops counting the replica as Active.
    async fn replicate_to(
        &self,
        replica: NodeId,
        p: u32,
        term: u64,
        lsn: u64,
        prev_term: u64,
        batch: &[u8],
    ) -> WriteResult {
        let pid = PartitionId(p);
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let map = self.map();
            if map.partition(pid).map(|i| i.term.0) != Some(term)
                || map.primary(pid) != Some(self.id)
            {
                return Err((
                    ErrorCode::Fenced,
                    format!("partition {p}: term {term} is over on node {}", self.id),
                ));
            }
            if !map.is_active_copy(pid, replica) {
                tracing::debug!(
                    partition = p,
                    replica = replica.0,
                    "replica not Active: acknowledging degraded"
                );
                return Ok(());
            }
            let client = self.peer(replica, Lane::Replication).ok_or((
                ErrorCode::StaleMap,
                format!("node {replica} is not in the map"),
            ))?;
            let payload = Replicate {
                partition: p,
                epoch: map.epoch.0,
                primary_term: term,
                term,
                lsn,
                prev_term,
                batch,
            }
            .encode();
            let result = client
                .request(Kind::Replicate, &payload, REPLICA_TIMEOUT)
                .await;
            match result {
                Ok(bytes) => {
                    let ack = ReplicateAck::decode(&bytes)?;
                    if !ack.gap {
                        return Ok(());
                    }
                    // Resend from where the replica's log stops matching ours:
                    // after its last record, or where its last term ended here.
                    let part = self.partition(p)?;
                    let history: Vec<(u64, u64)> = part
                        .term_history()
                        .into_iter()
                        .map(|(t, l)| (t.0, l.0))
                        .collect();
                    let from =
                        divergence_point(ack.last_term, ack.last_lsn, &history, part.last_lsn().0)
                            .unwrap_or(ack.last_lsn)
                            + 1;
                    let reached = self
                        .resend(&client, p, map.epoch.0, term, from, lsn)
                        .await?;
                    tracing::debug!(
                        partition = p,
                        replica = replica.0,
                        from,
                        reached,
                        "resent records the replica missed"
                    );
                    if reached == from {
                        // Not one record taken: do not spin on the replica.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    if Instant::now() > deadline {
                        return Err((
                            ErrorCode::Unavailable,
                            format!("partition {p}: replica {replica} does not take record {lsn}"),
                        ));
                    }
                }
                Err(ClientError::Remote {
                    code: ErrorCode::Fenced,
                    message,
                    ..
                }) => {
                    return Err((ErrorCode::Fenced, message));
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err((
                            ErrorCode::Unavailable,
                            format!("partition {p}: replica {replica} unreachable: {e}"),
                        ));
                    }
                    tracing::debug!(partition = p, replica = replica.0, "replication retry: {e}");
                    tokio::select! {
                        _ = self.map_changed.notified() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }

    /// Sends log records `[from, until)` in order, so that a replica that
    /// missed some (a dropped connection) has no gap before `until`. Stops
    /// early when the replica still cannot append one (the caller asks again).
    /// The records keep their own terms; the replica fences on
    /// `primary_term`, the term this primary writes in. Returns the first
    /// LSN the replica did not take.
    async fn resend(
        &self,
        client: &crate::net::Client,
        p: u32,
        epoch: u64,
        primary_term: u64,
        mut from: u64,
        until: u64,
    ) -> WriteResult<u64> {
        let part = self.partition(p)?;
        let mut prev_term = term_at(&part.term_history(), from.saturating_sub(1));
        while from < until {
            let records = part
                .read_log(Lsn(from), RESEND_BYTES_MAX)
                .map_err(|e| store_error(p, e))?;
            if records.is_empty() {
                break;
            }
            for (lsn, term, batch) in records {
                if lsn.0 >= until {
                    return Ok(from);
                }
                let payload = Replicate {
                    partition: p,
                    epoch,
                    primary_term,
                    term: term.0,
                    lsn: lsn.0,
                    prev_term,
                    batch: &batch,
                }
                .encode();
                let answer = client
                    .request(Kind::Replicate, &payload, REPLICA_TIMEOUT)
                    .await
                    .map_err(|e| match e {
                        // A fenced primary must learn it is fenced.
                        ClientError::Remote { code, message, .. } => (code, message),
                        e => (ErrorCode::Unavailable, e.to_string()),
                    })?;
                if ReplicateAck::decode(&answer)?.gap {
                    return Ok(from);
                }
                from = lsn.0 + 1;
                prev_term = term.0;
            }
        }
        Ok(from)
    }

    /// Sends an encoded `Replicate` without waiting for it.
    fn replicate_best_effort(&self, replica: NodeId, payload: Vec<u8>) {
        let Some(client) = self.peer(replica, Lane::Replication) else {
            return;
        };
        tokio::spawn(async move {
            let _ = client
                .request(Kind::Replicate, &payload, REPLICA_TIMEOUT)
                .await;
        });
    }
}

/// Primary -> replica. Runs synchronously in arrival order, so records of a
/// partition are applied in the order the primary sent them.
pub fn handle_replicate(node: &Node, payload: &[u8]) -> WriteResult<Vec<u8>> {
    let m = Replicate::decode(payload)?;
    let _apply = node.apply_lock(m.partition);
    let part = node.partition(m.partition)?;
    let map_term = node
        .map()
        .partition(PartitionId(m.partition))
        .map_or(0, |info| info.term.0);
    check_fence(&m, node.fence_of(m.partition), map_term, part.last_term().0)?;
    // Log matching, as in Raft: one primary per term writes each LSN once,
    // so the same (LSN, term) is the same record. A record of ours at that
    // LSN from another term was never acknowledged: it and what follows go.
    let last = part.last_lsn().0;
    if m.lsn <= last {
        let history = part.term_history();
        // Records before the history begins came in a full copy from an
        // Active copy: nothing to compare them with, and nothing to cut.
        let copied = history.first().is_none_or(|(_, first)| m.lsn < first.0);
        if copied || term_at(&history, m.lsn) == m.term {
            return Ok(ack(&part, false));
        }
        tracing::warn!(
            partition = m.partition,
            from = m.lsn,
            to = last,
            "truncating records of a term that lost (the primary has term {} there)",
            m.term
        );
        part.truncate_after(Lsn(m.lsn - 1)).map_err(|e| {
            (
                ErrorCode::Unavailable,
                format!(
                    "partition {}: cannot cut a divergent suffix, a full copy is needed: {e}",
                    m.partition
                ),
            )
        })?;
    }
    let last = part.last_lsn().0;
    // A gap before the record: the primary resends from after our last.
    if m.lsn > last + 1 {
        return Ok(ack(&part, true));
    }
    // Our last record is not the primary's: we vouch only for the log
    // before our last term, and the primary resends from there; records
    // that then differ in term are cut above.
    if last > 0 && part.last_term().0 != m.prev_term {
        let history = part.term_history();
        let before = history
            .last()
            .map_or(0, |(_, first)| first.0.saturating_sub(1));
        return Ok(ReplicateAck {
            last_lsn: before,
            last_term: term_at(&history, before),
            gap: true,
        }
        .encode());
    }
    part.apply_replicated(Lsn(m.lsn), Term(m.term), m.batch)
        .map_err(|e| store_error(m.partition, e))?;
    node.count_written(m.partition, m.batch.len());
    node.metrics.add_applied();
    Ok(ack(&part, false))
}

/// Refuses a record from a primary whose term is over: older than the
/// fence a newer primary set here, the map's term, or the newest term in
/// this copy's log. Only the sender's term counts, never the record's: the
/// current primary resends older records with their own older terms.
fn check_fence(m: &Replicate, fence: u64, map_term: u64, log_term: u64) -> WriteResult {
    let (newer, what) = [
        (fence, "fenced by"),
        (map_term, "older than the map's"),
        (log_term, "older than the log's"),
    ]
    .into_iter()
    .max_by_key(|(t, _)| *t)
    .expect("three candidates");
    if m.primary_term < newer {
        return Err((
            ErrorCode::Fenced,
            format!(
                "partition {}: term {} is {what} term {newer}",
                m.partition, m.primary_term
            ),
        ));
    }
    Ok(())
}

fn ack(part: &store::Partition, gap: bool) -> Vec<u8> {
    ReplicateAck {
        last_lsn: part.last_lsn().0,
        last_term: part.last_term().0,
        gap,
    }
    .encode()
}

fn store_error(p: u32, e: store::Error) -> (ErrorCode, String) {
    let code = match &e {
        store::Error::BatchMalformed { .. }
        | store::Error::BatchVersion(_)
        | store::Error::InvalidKey(_) => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    };
    (code, format!("partition {p}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{check_fence, reconcile, Reconcile, Replicate};
    use crate::proto::ErrorCode;

    fn record(primary_term: u64, term: u64) -> Replicate<'static> {
        Replicate {
            partition: 9,
            epoch: 10,
            primary_term,
            term,
            lsn: 100,
            prev_term: term,
            batch: b"",
        }
    }

    #[test]
    fn a_new_primary_takes_what_a_peer_has_beyond_its_log() {
        // A learner switched in as primary, behind the secondary in term 1.
        assert_eq!(reconcile(1, 90, &[(1, 1)], 100), Reconcile::Take);
        // Same log, or the peer behind: nothing to take.
        assert_eq!(reconcile(1, 100, &[(1, 1)], 100), Reconcile::Done);
        assert_eq!(reconcile(2, 120, &[(1, 1)], 100), Reconcile::Done);
        assert_eq!(reconcile(3, 10, &[], 0), Reconcile::Done);
        // Our log is empty: take everything.
        assert_eq!(reconcile(0, 0, &[(1, 1)], 5), Reconcile::Take);
    }

    #[test]
    fn a_new_primary_cuts_a_suffix_a_newer_peer_log_overrides() {
        // We hold 91..=100 of a deposed term-1 primary; the peer took over
        // in term 2 at 91 and its records there may be acknowledged.
        assert_eq!(
            reconcile(1, 100, &[(1, 1), (2, 91)], 95),
            Reconcile::Cut(90)
        );
        // Same, but our suffix started in a term the peer never had.
        assert_eq!(
            reconcile(3, 50, &[(1, 1), (2, 20), (4, 40)], 60),
            Reconcile::Cut(39)
        );
        // Our term ended exactly where the peer's next began: just take.
        assert_eq!(reconcile(1, 90, &[(1, 1), (2, 91)], 95), Reconcile::Take);
    }

    #[test]
    fn a_resend_of_older_records_by_the_current_primary_is_not_fenced() {
        // The primary of term 4 resends a record of term 2 to a replica it
        // fenced at 4 while it took over: the replica must take it.
        assert!(check_fence(&record(4, 2), 4, 4, 3).is_ok());
        assert!(check_fence(&record(4, 4), 4, 4, 4).is_ok());
    }

    #[test]
    fn a_deposed_primary_is_fenced_by_the_fence_the_map_or_the_log() {
        for (fence, map, log) in [(4, 0, 0), (0, 4, 0), (0, 0, 4), (4, 3, 2)] {
            let e = check_fence(&record(3, 3), fence, map, log).unwrap_err();
            assert_eq!(e.0, ErrorCode::Fenced, "{fence} {map} {log}: {}", e.1);
            assert!(e.1.contains("term 3") && e.1.contains("term 4"), "{}", e.1);
        }
    }
}
