//! The storage backend trait: every file access of fsdb goes through it, so tests can inject faults.

use std::path::Path;

use crate::Result;

/// A read-only view of a whole file.
pub trait Map: Send + Sync {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
}

/// A memory-mapped file of fixed length that is written at offsets. Reads go
/// through the map; writes go through the file (`pwrite` on a descriptor
/// kept open; the real backend's map is writable only so that `msync`
/// works, and nothing writes through it): the kernel then copies them into
/// its page cache, with no page fault (and
/// no readahead) per page written, and a failed write comes back as an
/// error where a write through a map is a SIGBUS. The map sees written bytes
/// at once (one page cache). Written bytes survive a process kill; only
/// `sync_range` makes them survive a power cut.
pub trait MapMut: Send + Sync {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
    /// Writes `parts`, one after the other, at `offset`. On an error, any
    /// part of them may have been written.
    fn write_at(&mut self, offset: usize, parts: &[&[u8]]) -> Result<()>;
    /// Makes `offset..offset + len` durable (msync).
    fn sync_range(&mut self, offset: usize, len: usize) -> Result<()>;
    /// Hint: `offset..offset + len` will rarely be read again (log records a
    /// replay or a catch-up has read): the real backend drops those pages
    /// from the process's resident memory. The page cache keeps them, dirty
    /// ones stay dirty (a later `sync_range` still writes them), and a later
    /// read faults them back in. Best effort.
    fn release(&mut self, _offset: usize, _len: usize) {}
}

/// Refuses a write past the end of a file of `file_len` bytes: the files
/// have a fixed length, and a `pwrite` there would grow them.
pub(crate) fn check_range(file_len: usize, offset: usize, len: usize) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(crate::Error::InvalidArgument(format!(
            "write of {len} bytes at {offset} past the end of a file of {file_len}"
        )));
    }
    Ok(())
}

/// File-system operations fsdb needs. Implementations: [`crate::MmapBackend`] (real files)
/// and [`crate::MemBackend`] (in memory, with fault injection and simulated power cuts).
pub trait Backend: Send + Sync {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// Names of the regular files in `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> Result<Vec<String>>;
    /// Creates a new file of exactly `len` zero bytes, allocated on disk up front (a full disk
    /// is `Error::NoSpace` here, never a fault later), and maps it. The allocation is
    /// durable; the name is durable once the file is renamed (fsdb always renames it).
    fn create_mapped(&self, path: &Path, len: u64) -> Result<Box<dyn MapMut>>;
    /// Maps an existing file, for reads and writes.
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
