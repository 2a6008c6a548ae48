//! The storage backend trait: every file access of fsdb goes through it, so tests can inject faults.

use std::path::Path;

use crate::Result;

/// A read-only view of a whole file.
pub trait Map: Send + Sync {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
}

/// A writable, memory-mapped file of fixed length. Writes land in the page cache at once
/// (they survive a process kill); only `sync_range` makes them survive a power cut.
pub trait MapMut: Send + Sync {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
    /// The file's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes `offset..offset + len` durable (msync).
    fn sync_range(&mut self, offset: usize, len: usize) -> Result<()>;
    /// Hint: `offset..offset + len` is about to be written (lets the real backend fault the
    /// pages in with one call instead of one trap per page). Best effort.
    fn prepare_write(&mut self, _offset: usize, _len: usize) {}
    /// Hint: `offset..offset + len` was written and will rarely be read again
    /// (a log's records behind its appends): the real backend drops those
    /// pages from the process's resident memory. The page cache keeps them,
    /// dirty ones stay dirty (a later `sync_range` still writes them), and a
    /// later read faults them back in. Best effort.
    fn release(&mut self, _offset: usize, _len: usize) {}
}

/// File-system operations fsdb needs. Implementations: [`crate::MmapBackend`] (real files)
/// and [`crate::MemBackend`] (in memory, with fault injection and simulated power cuts).
pub trait Backend: Send + Sync {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Names of the regular files in `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> Result<Vec<String>>;
    /// Creates a new file of exactly `len` zero bytes, allocated on disk up front (a full disk
    /// is `Error::NoSpace` here, never a fault later), and maps it writable. The allocation is
    /// durable; the name is durable once the file is renamed (fsdb always renames it).
    fn create_mapped(&self, path: &Path, len: u64) -> Result<Box<dyn MapMut>>;
    /// Maps an existing file writable.
    fn open_mapped(&self, path: &Path) -> Result<Box<dyn MapMut>>;
    /// Maps an existing file read-only.
    fn open_read(&self, path: &Path) -> Result<Box<dyn Map>>;
    /// Writes a whole new file and makes it durable (replaces an existing one).
    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()>;
    /// Renames a file and makes the rename durable.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Removes a file and makes the removal durable.
    fn remove_file(&self, path: &Path) -> Result<()>;
    /// Names of the subdirectories of `dir`, sorted (e.g. the partitions of a node).
    fn list_subdirs(&self, dir: &Path) -> Result<Vec<String>>;
    /// Removes a directory with everything in it, durably (e.g. a partition copy that moved).
    fn remove_dir_all(&self, dir: &Path) -> Result<()>;
}
