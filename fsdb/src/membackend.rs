//! An in-memory backend for tests: injects I/O errors after N operations, runs out of space,
//! and simulates a power cut that keeps only the bytes that were synced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, Map, MapMut};
use crate::{Error, Result};

/// Simulated power cuts keep or lose unsynced bytes in units of one disk sector.
const SECTOR: usize = 512;

#[derive(Default)]
struct MemFile {
    /// What a reader sees: the page cache (survives a process kill).
    cache: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Live writable maps; their bytes are written back to `cache` when dropped.
    mapped: u32,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, Arc<Mutex<MemFile>>>,
    dirs: BTreeSet<PathBuf>,
    ops: u64,
    fail_after: Option<u64>,
    capacity: Option<u64>,
}

/// In-memory files with fault injection. Cloning shares the same files.
#[derive(Clone, Default)]
pub struct MemBackend {
    state: Arc<Mutex<State>>,
}

struct MemMap {
    state: Arc<Mutex<State>>,
    file: Arc<Mutex<MemFile>>,
    path: PathBuf,
    buf: Vec<u8>,
}

struct MemReadMap {
    buf: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide the original panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Counts one operation and fails it when the injected budget is spent.
    fn op(&mut self, op: &'static str, path: &Path) -> Result<()> {
        self.ops += 1;
        match self.fail_after {
            Some(0) => Err(Error::Injected {
                op,
                path: path.into(),
            }),
            Some(ref mut n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| lock(f).durable.len() as u64)
            .sum()
    }

    fn reserve(&self, path: &Path, bytes: u64) -> Result<()> {
        match self.capacity {
            Some(cap) if self.used_bytes() + bytes > cap => Err(Error::NoSpace {
                path: path.into(),
                bytes,
            }),
            _ => Ok(()),
        }
    }

    fn file(&self, path: &Path) -> Result<Arc<Mutex<MemFile>>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| Error::NotFound { path: path.into() })
    }
}

impl MemBackend {
    /// An empty backend without faults.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Lets the next `n` operations succeed and fails every one after them (`None`: no faults).
    pub fn fail_after(&self, n: Option<u64>) {
        lock(&self.state).fail_after = n;
    }

    /// Number of operations performed so far (to enumerate fault points).
    pub fn ops(&self) -> u64 {
        lock(&self.state).ops
    }

    /// Limits the total bytes of all files (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        lock(&self.state).capacity = bytes;
    }

    /// A power cut: every file goes back to its synced bytes. No map may be live
    /// (drop the log first: a killed process followed by a power cut).
    pub fn crash(&self) {
        self.crash_with(|_| false);
    }

    /// A power cut where each unsynced sector independently may or may not have reached the
    /// disk (chosen by `seed`), as the kernel writes dirty pages back in any order.
    pub fn crash_torn(&self, seed: u64) {
        let mut x = seed | 1;
        self.crash_with(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x & 1 == 1
        });
    }

    fn crash_with(&self, mut keep_sector: impl FnMut(usize) -> bool) {
        let state = lock(&self.state);
        for (path, file) in &state.files {
            let mut f = lock(file);
            assert_eq!(f.mapped, 0, "crash with a live map of {}", path.display());
            let MemFile { cache, durable, .. } = &mut *f;
            for (i, (c, d)) in cache
                .chunks_mut(SECTOR)
                .zip(durable.chunks(SECTOR))
                .enumerate()
            {
                if c != d && !keep_sector(i) {
                    c.copy_from_slice(d);
                }
            }
            let cache = f.cache.clone();
            f.durable = cache;
        }
    }

    /// The current bytes of a file (page cache view), if it exists and is not mapped.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        let file = state.files.get(path)?;
        let f = lock(file);
        Some(f.cache.clone())
    }

    /// Overwrites bytes of an unmapped file, in the cache and on "disk" (simulated bit rot).
    pub fn poke(&self, path: &Path, offset: usize, bytes: &[u8]) {
        let state = lock(&self.state);
        let mut f = lock(state.files.get(path).expect("poke: no such file"));
        assert_eq!(f.mapped, 0, "poke a live map of {}", path.display());
        f.cache[offset..offset + bytes.len()].copy_from_slice(bytes);
        f.durable[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Paths of all files, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.state).files.keys().cloned().collect()
    }
}

impl Map for MemReadMap {
    fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

impl MapMut for MemMap {
    fn bytes(&self) -> &[u8] {
        &self.buf
    }
    fn write_at(&mut self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        lock(&self.state).op("write", &self.path)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        crate::backend::check_range(self.buf.len(), offset, len)?;
        let mut at = offset;
        for part in parts {
            self.buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(())
    }
    fn sync_range(&mut self, offset: usize, len: usize) -> Result<()> {
        lock(&self.state).op("msync", &self.path)?;
        let end = offset.saturating_add(len).min(self.buf.len());
        let mut f = lock(&self.file);
        if offset < end {
            f.durable[offset..end].copy_from_slice(&self.buf[offset..end]);
        }
        Ok(())
    }
}

impl Drop for MemMap {
    fn drop(&mut self) {
        let mut f = lock(&self.file);
        f.cache = std::mem::take(&mut self.buf);
        f.mapped -= 1;
    }
}

impl Backend for MemBackend {
    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut state = lock(&self.state);
        state.op("create dir", dir)?;
        for d in dir.ancestors() {
            state.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let mut state = lock(&self.state);
        state.op("read dir", dir)?;
        if !state.dirs.contains(dir) {
            return Err(Error::NotFound { path: dir.into() });
        }
        let names = state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        Ok(names)
    }

    fn create_mapped(&self, path: &Path, len: u64) -> Result<Box<dyn MapMut>> {
        let mut state = lock(&self.state);
        state.op("create", path)?;
        if state.files.contains_key(path) {
            let e = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
            return Err(Error::io("create", path, e));
        }
        state.reserve(path, len)?;
        let zeros = vec![0u8; len as usize];
        let file = Arc::new(Mutex::new(MemFile {
            cache: Vec::new(),
            durable: zeros.clone(),
            mapped: 1,
        }));
        state.files.insert(path.into(), file.clone());
        Ok(Box::new(MemMap {
            state: self.state.clone(),
            file,
            path: path.into(),
            buf: zeros,
        }))
    }

    fn open_mapped(&self, path: &Path) -> Result<Box<dyn MapMut>> {
        let mut state = lock(&self.state);
        state.op("open", path)?;
        let file = state.file(path)?;
        let buf = {
            let mut f = lock(&file);
            assert_eq!(f.mapped, 0, "{} mapped twice", path.display());
            f.mapped = 1;
            f.cache.clone()
        };
        Ok(Box::new(MemMap {
            state: self.state.clone(),
            file,
            path: path.into(),
            buf,
        }))
    }

    fn open_read(&self, path: &Path) -> Result<Box<dyn Map>> {
        let mut state = lock(&self.state);
        state.op("open", path)?;
        let file = state.file(path)?;
        let buf = lock(&file).cache.clone();
        Ok(Box::new(MemReadMap { buf }))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        let mut state = lock(&self.state);
        state.op("write", path)?;
        state.reserve(path, data.len() as u64)?;
        let file = MemFile {
            cache: data.to_vec(),
            durable: data.to_vec(),
            mapped: 0,
        };
        state.files.insert(path.into(), Arc::new(Mutex::new(file)));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut state = lock(&self.state);
        state.op("rename", from)?;
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| Error::NotFound { path: from.into() })?;
        state.files.insert(to.into(), file);
        Ok(())
    }

    fn list_subdirs(&self, dir: &Path) -> Result<Vec<String>> {
        let mut state = lock(&self.state);
        state.op("read dir", dir)?;
        if !state.dirs.contains(dir) {
            return Err(Error::NotFound { path: dir.into() });
        }
        let names = state
            .dirs
            .iter()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        Ok(names)
    }

    fn remove_dir_all(&self, dir: &Path) -> Result<()> {
        let mut state = lock(&self.state);
        state.op("remove dir", dir)?;
        if !state.dirs.contains(dir) {
            return Err(Error::NotFound { path: dir.into() });
        }
        state.files.retain(|p, _| !p.starts_with(dir));
        state.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        let mut state = lock(&self.state);
        state.op("remove", path)?;
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| Error::NotFound { path: path.into() })
    }
}
