//! The Raft log, vote and committed log id of one controller, in files under its `--data`.
//!
//! ```text
//! raft/log.bin        entries, in index order, each framed as
//!                       len u32 LE | crc32c u32 LE (of the body) | body (JSON)
//! raft/vote.json      the vote (atomic write + fsync before it is acknowledged)
//! raft/purged.json    the last purged log id (atomic write + fsync)
//! raft/committed.json the last committed log id (atomic write, not fsynced:
//!                     it only saves re-applying entries a leader commits again)
//! ```
//!
//! An append is acknowledged to Raft only after `fdatasync`. Truncating a
//! conflicting suffix cuts the file at that entry's offset (and syncs);
//! purging rewrites the file without the purged prefix (temp file, fsync,
//! rename). Recovery reads frames until the first torn or corrupt one and
//! cuts the file there: such a tail was never acknowledged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};

use super::{Entry, LogId, StorageError, TypeConfig};

const FRAME_HEADER: usize = 8;
/// No single entry comes near this; a larger length is a corrupt frame.
const ENTRY_BYTES_MAX: usize = 16 << 20;

/// The log store; clones share the same files (openraft reads through a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogFiles>>,
}

struct LogFiles {
    dir: PathBuf,
    file: File,
    /// index -> (offset of its frame in log.bin, entry)
    entries: BTreeMap<u64, (u64, Entry)>,
    end: u64,
    last_purged: Option<LogId>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
}

fn io_err(e: &std::io::Error) -> AnyError {
    AnyError::new(e)
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, recovering from a torn tail.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let last_purged: Option<LogId> = read_json(&dir.join("purged.json"))?;
        let vote: Option<Vote<u64>> = read_json(&dir.join("vote.json"))?;
        // Not fsynced: a torn or missing file only means "re-apply less".
        let committed: Option<LogId> = read_json(&dir.join("committed.json")).unwrap_or(None);
        let path = dir.join("log.bin");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, end) = decode_frames(&bytes, last_purged.map_or(0, |l| l.index + 1));
        if end < bytes.len() as u64 {
            tracing::warn!(
                kept = end,
                len = bytes.len(),
                "raft log has a torn or corrupt tail: cutting it (it was never acknowledged)"
            );
            file.set_len(end)?;
            file.sync_data()?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogFiles {
                dir: dir.to_path_buf(),
                file,
                entries,
                end,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    /// Runs `f` on the files off the async workers (it may fsync); a
    /// failure becomes the storage error `what` makes of it.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LogFiles) -> std::io::Result<T> + Send + 'static,
        what: fn(AnyError) -> StorageIOError<u64>,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().expect("poisoned")))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| what(io_err(&e)).into())
    }
}

/// Decodes frames from the start of `bytes`; returns the entries at or past
/// `first_index` and the offset just past the last whole, valid frame.
fn decode_frames(bytes: &[u8], first_index: u64) -> (BTreeMap<u64, (u64, Entry)>, u64) {
    let mut entries = BTreeMap::new();
    let mut at = 0usize;
    while bytes.len() - at >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > ENTRY_BYTES_MAX || bytes.len() - at - FRAME_HEADER < len {
            break;
        }
        let body = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(body) else {
            break;
        };
        let index = entry.get_log_id().index;
        if index >= first_index {
            // A later frame with the same index replaced an earlier one
            // only through a truncation, which cut the file; keep order.
            entries.split_off(&index);
            entries.insert(index, (at as u64, entry));
        }
        at += FRAME_HEADER + len;
    }
    (entries, at as u64)
}

fn encode_frame(entry: &Entry, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let body = serde_json::to_vec(entry)?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl LogFiles {
    fn append(&mut self, entries: Vec<Entry>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for e in entries {
            let offset = self.end + buf.len() as u64;
            encode_frame(&e, &mut buf).map_err(std::io::Error::other)?;
            placed.push((offset, e));
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.end += buf.len() as u64;
        for (offset, e) in placed {
            self.entries.insert(e.get_log_id().index, (offset, e));
        }
        Ok(())
    }

    /// Removes entries at and after `index`.
    fn truncate(&mut self, index: u64) -> std::io::Result<()> {
        let cut = self.entries.split_off(&index);
        if let Some((_, (offset, _))) = cut.first_key_value() {
            self.file.set_len(*offset)?;
            self.file.sync_data()?;
            self.end = *offset;
        }
        Ok(())
    }

    /// Removes entries up to and including `log_id`, and rewrites the file
    /// without them.
    fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        super::write_atomic(
            &self.dir.join("purged.json"),
            &serde_json::to_vec(&log_id)?,
            true,
        )?;
        self.last_purged = Some(log_id);
        self.entries = self.entries.split_off(&(log_id.index + 1));
        let mut buf = Vec::new();
        let mut kept = BTreeMap::new();
        for (index, (_, e)) in std::mem::take(&mut self.entries) {
            let offset = buf.len() as u64;
            encode_frame(&e, &mut buf).map_err(std::io::Error::other)?;
            kept.insert(index, (offset, e));
        }
        let path = self.dir.join("log.bin");
        super::write_atomic(&path, &buf, true)?;
        self.file = OpenOptions::new().read(true).append(true).open(&path)?;
        self.end = buf.len() as u64;
        self.entries = kept;
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .last_key_value()
            .map(|(_, (_, e))| *e.get_log_id())
            .or(self.last_purged)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().expect("poisoned");
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (_, e))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.inner.lock().expect("poisoned");
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(
            move |f| {
                let bytes = serde_json::to_vec(&vote)?;
                super::write_atomic(&f.dir.join("vote.json"), &bytes, true)?;
                f.vote = Some(vote);
                Ok(())
            },
            StorageIOError::write_vote,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.inner.lock().expect("poisoned").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(
            move |f| {
                let bytes = serde_json::to_vec(&committed)?;
                super::write_atomic(&f.dir.join("committed.json"), &bytes, false)?;
                f.committed = committed;
                Ok(())
            },
            StorageIOError::write,
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.lock().expect("poisoned").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let inner = self.inner.clone();
        let result =
            tokio::task::spawn_blocking(move || inner.lock().expect("poisoned").append(entries))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(io_err(&e));
                callback.log_io_completed(Err(e));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(
            move |f| f.truncate(log_id.index),
            StorageIOError::write_logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |f| f.purge(log_id), StorageIOError::write_logs)
            .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(store: &LogStore) -> Vec<(u64, u64)> {
        let inner = store.inner.lock().unwrap();
        inner
            .entries
            .values()
            .map(|(_, e)| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[test]
    fn appends_truncates_purges_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        {
            let mut f = store.inner.lock().unwrap();
            f.append((1..=5).map(|i| entry(1, i)).collect()).unwrap();
            f.truncate(4).unwrap();
            f.append(vec![entry(2, 4)]).unwrap();
        }
        assert_eq!(
            indexes(&LogStore::open(dir.path()).unwrap()),
            vec![(1, 1), (1, 2), (1, 3), (2, 4)]
        );
        store
            .inner
            .lock()
            .unwrap()
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .unwrap();
        store
            .inner
            .lock()
            .unwrap()
            .append(vec![entry(2, 5)])
            .unwrap();
        let reopened = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&reopened), vec![(1, 3), (2, 4), (2, 5)]);
        let inner = reopened.inner.lock().unwrap();
        assert_eq!(inner.last_purged.map(|l| l.index), Some(2));
        assert_eq!(inner.last_log_id().map(|l| l.index), Some(5));
    }

    #[test]
    fn a_torn_tail_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store
            .inner
            .lock()
            .unwrap()
            .append((1..=3).map(|i| entry(1, i)).collect())
            .unwrap();
        let path = dir.path().join("log.bin");
        let len = std::fs::metadata(&path).unwrap().len();
        for cut in [len - 1, len - 5] {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..cut as usize]).unwrap();
            let reopened = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&reopened), vec![(1, 1), (1, 2)]);
            // The cut file takes new appends after the last whole frame.
            reopened
                .inner
                .lock()
                .unwrap()
                .append(vec![entry(1, 3)])
                .unwrap();
            assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()).len(), 3);
        }
        // A flipped bit in the body fails its checksum.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()).len(), 2);
    }
}
