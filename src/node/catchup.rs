//! Catch-up: one mechanism for a returning node, re-replication and rebalance.
//!
//! A replica the map marks stale (or a new replica, a learner) pulls the
//! records it misses from the map's catch-up source, from its own last LSN
//! on (incremental). Before that it cuts any suffix of its log that the
//! source's term history says was never acknowledged (the term it ends in
//! stopped earlier on the source), as Kafka does with leader epochs. Where
//! the source's log no longer reaches back, it installs a full copy
//! (snapshot). Progress goes to the controller in every heartbeat; the
//! controller makes the node Active when all of its partitions caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::{NodeId, PartitionId};
use store::{Lsn, Term};
use tokio::sync::broadcast;

use super::msg::{CatchUpReply, CatchUpRequest, SnapshotReply, WireRecord};
use super::{Lane, Node};
use crate::net::ClientError;
use crate::proto::{ErrorCode, Kind};

/// Bytes of log one catch-up request asks for.
const CATCH_UP_BYTES: u32 = 4 << 20;
/// How often a partition that caught up is polled again while the
/// controller has not yet taken the report: live writes reach it
/// meanwhile, and polling it faster would fetch them twice.
const RECHECK_CAUGHT_UP: Duration = Duration::from_millis(500);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What this node reports about catching up.
#[derive(Debug, Default)]
pub struct Progress {
    /// Partitions at lag 0 in their last round, and when that was.
    caught_up: BTreeMap<u32, Instant>,
    lagging: BTreeMap<u32, u64>,
    /// Partitions whose files were corrupt at open: never served until refetched.
    corrupted: BTreeSet<u32>,
    /// Bytes of log records and snapshots received, for status and tests.
    pub bytes_received: u64,
    failures: u64,
}

impl Progress {
    pub fn new(corrupted: BTreeSet<u32>) -> Progress {
        Progress {
            corrupted,
            ..Progress::default()
        }
    }

    pub fn report(&self) -> (Vec<PartitionId>, Vec<(PartitionId, u64)>) {
        (
            self.caught_up.keys().map(|&p| PartitionId(p)).collect(),
            self.lagging
                .iter()
                .map(|(&p, &lag)| (PartitionId(p), lag))
                .collect(),
        )
    }

    pub fn is_corrupted(&self, p: u32) -> bool {
        self.corrupted.contains(&p)
    }

    /// How many partitions wait for a refetch.
    pub fn corrupted(&self) -> usize {
        self.corrupted.len()
    }
}

pub async fn run(node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    loop {
        let map = node.map();
        let mut pending = 0;
        for p in 0..map.partitions {
            let pid = PartitionId(p);
            let corrupted = node.catchup.lock().expect("poisoned").is_corrupted(p);
            if !corrupted && !map.needs_catch_up(pid, node.id) {
                let mut progress = node.catchup.lock().expect("poisoned");
                progress.caught_up.remove(&p);
                progress.lagging.remove(&p);
                continue;
            }
            let recently = node
                .catchup
                .lock()
                .expect("poisoned")
                .caught_up
                .get(&p)
                .is_some_and(|at| at.elapsed() < RECHECK_CAUGHT_UP);
            if recently && !corrupted {
                pending += 1;
                continue;
            }
            let source = map.catch_up_source(pid, node.id).or_else(|| {
                // A corrupt local copy that the map counts as in sync: refetch from any other live replica.
                map.active_replicas(pid).into_iter().find(|&n| n != node.id)
            });
            let Some(source) = source else { continue };
            pending += 1;
            match catch_up(&node, p, source, corrupted).await {
                Ok(lag) => {
                    let mut progress = node.catchup.lock().expect("poisoned");
                    if corrupted {
                        progress.corrupted.remove(&p);
                        // If it leads the partition, it can take over now.
                        tokio::spawn(node.clone().sync_new_primaries());
                    }
                    if lag == 0 {
                        progress.caught_up.insert(p, Instant::now());
                        progress.lagging.remove(&p);
                    } else {
                        progress.caught_up.remove(&p);
                        progress.lagging.insert(p, lag);
                    }
                }
                Err(e) => {
                    let mut progress = node.catchup.lock().expect("poisoned");
                    progress.failures += 1;
                    // A source that is down fails every pass: log a sample, not a flood.
                    if progress.failures.is_power_of_two() {
                        tracing::warn!(
                            partition = p,
                            source = source.0,
                            failures = progress.failures,
                            "catch-up failed: {e}"
                        );
                    }
                }
            }
        }
        let idle = if pending == 0 {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(50)
        };
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = node.map_changed.notified() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

/// Pulls what partition `p` misses from `source`; returns the remaining lag in LSNs.
async fn catch_up(
    node: &Arc<Node>,
    p: u32,
    source: NodeId,
    full_copy: bool,
) -> Result<u64, String> {
    let client = node
        .peer(source, Lane::Replication)
        .ok_or_else(|| format!("node {source} is not in the map"))?;
    if full_copy {
        return install_snapshot(node, &client, p).await.map(|_| 0);
    }
    // Bounded: each round either applies records, truncates, or returns.
    let mut lag = 1;
    for _ in 0..64 {
        let existing = node.store.partition(store::PartitionId(p));
        let local_last = existing.as_ref().map_or(0, |part| part.last_lsn().0);
        let local_term = existing.as_ref().map_or(0, |part| part.last_term().0);
        let request = CatchUpRequest {
            partition: p,
            from_lsn: local_last + 1,
            max_bytes: CATCH_UP_BYTES,
            fence_term: 0,
        };
        let reply = match client
            .request(Kind::CatchUp, &request.encode(), CATCH_UP_TIMEOUT)
            .await
        {
            Ok(bytes) => CatchUpReply::decode(&bytes).map_err(|e| e.1)?,
            Err(ClientError::Remote {
                code: ErrorCode::TrimmedAway,
                ..
            }) => {
                return install_snapshot(node, &client, p).await.map(|_| 0);
            }
            Err(e) => return Err(e.to_string()),
        };
        if let Some(keep) =
            divergence_point(local_term, local_last, &reply.term_history, reply.last_lsn)
        {
            // Cut only against the source the current map names, and only
            // the log the answer was compared with.
            if node.map().catch_up_source(PartitionId(p), node.id) != Some(source) {
                return Err(format!(
                    "partition {p}: node {source} is no longer the source"
                ));
            }
            let part = node.partition(p).map_err(|e| e.1)?;
            if cut_suffix(node, p, &part, (local_term, local_last), keep).is_err() {
                return install_snapshot(node, &client, p).await.map(|_| 0);
            }
            continue;
        }
        if reply.records.is_empty() {
            return Ok(reply.last_lsn.saturating_sub(local_last));
        }
        let part = node.partition(p).map_err(|e| e.1)?;
        let received: u64 = reply.records.iter().map(|r| r.batch.len() as u64).sum();
        node.catchup.lock().expect("poisoned").bytes_received += received;
        let mut last = local_last;
        for WireRecord { lsn, term, batch } in &reply.records {
            if *lsn <= last {
                continue;
            }
            part.apply_replicated(Lsn(*lsn), Term(*term), batch)
                .map_err(|e| format!("partition {p}: {e}"))?;
            last = *lsn;
        }
        lag = reply.last_lsn.saturating_sub(last);
        if reply.records.is_empty() || lag == 0 {
            return Ok(lag);
        }
    }
    // Still behind after the bounded rounds (heavy writes): report the lag, go on next pass.
    Ok(lag.max(1))
}

/// Cuts `part`'s log after `keep`, a suffix a newer log overrides, if the
/// log still ends at `seen` (term, last LSN), where the comparison saw it;
/// if it moved meanwhile, cuts nothing and the caller compares again. Under
/// the apply lock, so no record is appended in between. An error means the
/// suffix is already sealed into a chunk file: a full copy is needed.
pub(super) fn cut_suffix(
    node: &Node,
    p: u32,
    part: &store::Partition,
    seen: (u64, u64),
    keep: u64,
) -> Result<(), store::Error> {
    let _apply = node.apply_lock(p);
    if (part.last_term().0, part.last_lsn().0) != seen {
        return Ok(());
    }
    tracing::warn!(
        partition = p,
        from = keep + 1,
        to = seen.1,
        "cutting a log suffix that a newer log overrides (never acknowledged)"
    );
    part.truncate_after(Lsn(keep))
}

/// Where a local log that ends at `(local_term, local_last)` must be cut so
/// that it is a prefix of the source's: `None` if it already is.
///
/// The source's history lists the first LSN of each of its terms. Our last
/// record's term `t` ended on the source just before the first LSN of the
/// source's next term after `t` (or at the source's last LSN if `t` is the
/// source's current term). Records past that point were never acknowledged
/// in the history that won.
pub fn divergence_point(
    local_term: u64,
    local_last: u64,
    source_history: &[(u64, u64)],
    source_last: u64,
) -> Option<u64> {
    if local_last == 0 {
        return None;
    }
    // The end of the last source term <= local_term.
    let end = match source_history.iter().position(|&(t, _)| t > local_term) {
        Some(i) => source_history[i].1.saturating_sub(1),
        None => source_last,
    };
    // A local term the source never had started after `end` too.
    (local_last > end).then_some(end)
}

/// [`term_at`] for a history as the wire carries it (`(term, first LSN)`
/// as plain numbers).
pub fn wire_term_at(history: &[(u64, u64)], lsn: u64) -> u64 {
    term_in(history, lsn, |&(t, first)| (t, first))
}

/// The term of the record at `lsn` in a log with this history (first LSN of
/// each term, oldest first); 0 at LSN 0. Before the first entry (a log that
/// restarted after a full copy: its history begins after the copy), the
/// record just before is of the first entry's term, which `reset` records.
pub fn term_at(history: &[(Term, Lsn)], lsn: u64) -> u64 {
    term_in(history, lsn, |&(t, first)| (t.0, first.0))
}

fn term_in<T>(history: &[T], lsn: u64, entry: impl Fn(&T) -> (u64, u64)) -> u64 {
    if lsn == 0 {
        return 0;
    }
    match history
        .iter()
        .rev()
        .map(&entry)
        .find(|&(_, first)| first <= lsn)
    {
        Some((t, _)) => t,
        None => history.first().map_or(0, |e| entry(e).0),
    }
}

pub(super) async fn install_snapshot(
    node: &Node,
    client: &crate::net::Client,
    p: u32,
) -> Result<(), String> {
    let bytes = client
        .request(Kind::Snapshot, &p.to_le_bytes(), CATCH_UP_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let snap = SnapshotReply::decode(&bytes).map_err(|e| e.1)?;
    node.catchup.lock().expect("poisoned").bytes_received += bytes.len() as u64;
    tracing::info!(partition = p, lsn = snap.lsn, "installing a full copy");
    node.store
        .install_snapshot(
            store::PartitionId(p),
            Lsn(snap.lsn),
            Term(snap.term),
            &snap.batches,
        )
        .map(|_| ())
        .map_err(|e| format!("partition {p}: {e}"))
}

/// Refuses to serve `p` from a copy that may miss acknowledged records:
/// one being refetched, or one this node's map does not count as an
/// up-to-date replica (stale, a learner, or dropped: a dropped copy would
/// answer "empty" and the reader would cut its whole log to match).
fn check_source(node: &Node, p: u32) -> Result<(), (ErrorCode, String)> {
    if node.catchup.lock().expect("poisoned").is_corrupted(p) {
        return Err((
            ErrorCode::NotOwner,
            format!(
                "node {}'s copy of partition {p} is being refetched",
                node.id
            ),
        ));
    }
    let in_sync = node
        .map()
        .partition(PartitionId(p))
        .is_some_and(|info| info.is_in_sync(node.id));
    if !in_sync {
        return Err((
            ErrorCode::NotOwner,
            format!(
                "node {} has no up-to-date copy of partition {p} in its map",
                node.id
            ),
        ));
    }
    Ok(())
}

/// Source side: records from an LSN, with the term history. An up-to-date
/// copy with no files was never written to: it is empty, not missing.
pub fn handle_catch_up(node: &Node, payload: &[u8]) -> Result<Vec<u8>, (ErrorCode, String)> {
    let req = CatchUpRequest::decode(payload)?;
    check_source(node, req.partition)?;
    let _apply = node.apply_lock(req.partition);
    if req.fence_term > 0 {
        node.fence(req.partition, req.fence_term);
    }
    let Some(part) = node.store.partition(store::PartitionId(req.partition)) else {
        return Ok(CatchUpReply {
            last_lsn: 0,
            term_history: Vec::new(),
            records: Vec::new(),
        }
        .encode());
    };
    let last_lsn = part.last_lsn().0;
    let records = if req.from_lsn > last_lsn {
        Vec::new()
    } else {
        part.read_log(Lsn(req.from_lsn), req.max_bytes as usize)
            .map_err(read_error)?
    };
    let reply = CatchUpReply {
        last_lsn,
        term_history: part
            .term_history()
            .into_iter()
            .map(|(t, l)| (t.0, l.0))
            .collect(),
        records: records
            .into_iter()
            .map(|(lsn, term, batch)| WireRecord {
                lsn: lsn.0,
                term: term.0,
                batch,
            })
            .collect(),
    };
    Ok(reply.encode())
}

/// A log read's error for the reader: `TrimmedAway` (the store's own or
/// fsdb's) tells it to take a full copy instead.
fn read_error(e: store::Error) -> (ErrorCode, String) {
    let code = match e {
        store::Error::TrimmedAway { .. } | store::Error::Fsdb(fsdb::Error::TrimmedAway { .. }) => {
            ErrorCode::TrimmedAway
        }
        _ => ErrorCode::Internal,
    };
    (code, e.to_string())
}

pub fn handle_snapshot(node: &Node, payload: &[u8]) -> Result<Vec<u8>, (ErrorCode, String)> {
    let p = u32::from_le_bytes(payload.try_into().map_err(|_| {
        (
            ErrorCode::BadRequest,
            "snapshot request is a u32 partition".to_string(),
        )
    })?);
    check_source(node, p)?;
    let part = node.store.partition(store::PartitionId(p)).ok_or((
        ErrorCode::NotOwner,
        format!("node {} has no copy of partition {p}", node.id),
    ))?;
    let (lsn, term, batches) = part
        .snapshot()
        .map_err(|e| (ErrorCode::Internal, format!("partition {p}: {e}")))?;
    Ok(SnapshotReply {
        lsn: lsn.0,
        term: term.0,
        batches,
    }
    .encode())
}

#[cfg(test)]
mod tests {
    use super::{divergence_point, read_error, term_at, wire_term_at};
    use crate::proto::ErrorCode;
    use store::{Lsn, PartitionId, Term};

    #[test]
    fn a_trimmed_log_sends_the_reader_to_a_full_copy() {
        // What `Partition::read_log` returns when the log was trimmed past
        // the reader's LSN: it once passed as an internal error, and a copy
        // away for longer than a seal could never catch up.
        let trimmed = store::Error::TrimmedAway {
            partition: PartitionId(3),
            lsn: 5,
            first: 9,
        };
        let (code, message) = read_error(trimmed);
        assert_eq!(code, ErrorCode::TrimmedAway, "{message}");
        assert!(message.contains("partition 3"), "{message}");
        let other = store::Error::PartitionCorrupted(PartitionId(3));
        assert_eq!(read_error(other).0, ErrorCode::Internal);
    }

    #[test]
    fn finds_the_divergent_suffix() {
        let check =
            |local_term, local_last, history: &[(u64, u64)], source_last, want: Option<u64>| {
                assert_eq!(
                    divergence_point(local_term, local_last, history, source_last),
                    want,
                    "{local_term}@{local_last} vs {history:?}..{source_last}"
                );
            };
        // Same term, behind: nothing to cut.
        check(1, 5, &[(1, 1)], 9, None);
        // Ahead of the source in the same term (it never got our tail): cut to its end.
        check(1, 9, &[(1, 1)], 5, Some(5));
        // Old primary wrote 6..=8 in term 1, the source took over at 6 in term 2.
        check(1, 8, &[(1, 1), (2, 6)], 12, Some(5));
        // Our term 1 ended exactly where the source's term 2 began: in sync.
        check(1, 5, &[(1, 1), (2, 6)], 12, None);
        // A term the source never had (3, between its 2 and 4): cut at the end of its 2.
        check(3, 20, &[(1, 1), (2, 6), (4, 15)], 30, Some(14));
        // Empty local log: nothing to cut.
        check(0, 0, &[(1, 1)], 3, None);
    }

    #[test]
    fn finds_the_term_of_a_record_in_a_wire_history() {
        let history = [(1, 1), (3, 6), (4, 9)];
        let terms: Vec<u64> = (0..=10).map(|lsn| wire_term_at(&history, lsn)).collect();
        assert_eq!(terms, [0, 1, 1, 1, 1, 1, 3, 3, 3, 4, 4]);
        assert_eq!(wire_term_at(&[(5, 11)], 10), 5);
        assert_eq!(wire_term_at(&[], 7), 0);
    }

    #[test]
    fn finds_the_term_of_a_record() {
        let history = [(Term(1), Lsn(1)), (Term(3), Lsn(6)), (Term(4), Lsn(9))];
        let terms: Vec<u64> = (0..=10).map(|lsn| term_at(&history, lsn)).collect();
        assert_eq!(terms, [0, 1, 1, 1, 1, 1, 3, 3, 3, 4, 4]);
        assert_eq!(term_at(&[], 5), 0);
        // After a full copy up to LSN 10 in term 5.
        assert_eq!(term_at(&[(Term(5), Lsn(11))], 10), 5);
    }
}
