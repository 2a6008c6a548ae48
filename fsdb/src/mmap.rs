//! The real backend: files preallocated with fallocate and mapped with memmap2. The only `unsafe` of tandem.

use std::fs::{self, File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

use crate::backend::{check_range, Backend, Map, MapMut};
use crate::{Error, Result};

/// Real files: preallocated with `fallocate` and mapped with memmap2. A log
/// segment keeps its fd, which writes go through (its map is only read, and
/// msynced); a chunk file's fd is closed once mapped.
///
/// Files under the data directory must not be truncated by another process while mapped
/// (that would fault the mapping); tandem owns its data directory.
#[derive(Debug, Default, Clone, Copy)]
pub struct MmapBackend;

struct RwMap {
    /// Writable only for `msync` (`flush_range`): nothing writes through it.
    map: MmapMut,
    /// Writes go here (`pwritev`).
    file: File,
}

struct RoMap {
    map: Option<Mmap>,
}

impl Map for RoMap {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl MapMut for RwMap {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn write_at(&mut self, offset: usize, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_range(self.map.len(), offset, len)?;
        // One call for a record's frame header and payload.
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut left = &mut slices[..];
        let mut at = offset;
        while !left.is_empty() {
            let written = nix::sys::uio::pwritev(&self.file, left, at as i64)
                .map_err(|e| Error::io("write", "<mapped segment>", e.into()))?;
            if written == 0 {
                let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                return Err(Error::io("write", "<mapped segment>", e));
            }
            IoSlice::advance_slices(&mut left, written);
            at += written;
        }
        Ok(())
    }
    fn sync_range(&mut self, offset: usize, len: usize) -> Result<()> {
        self.map
            .flush_range(offset, len)
            .map_err(|e| Error::io("msync", "<mapped segment>", e))
    }
    fn release(&mut self, offset: usize, len: usize) {
        let len = len.min(self.map.len().saturating_sub(offset));
        // SAFETY: the map is a shared mapping of a file (MmapMut::map_mut),
        // so MADV_DONTNEED only drops our page-table entries: the bytes stay
        // in the page cache (a dirty page stays dirty, and msync or the
        // kernel's writeback still writes it to the file), and the next
        // access reads them back. No reference into the range is held
        // across this call (the caller has `&mut self`).
        #[cfg(target_os = "linux")]
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
    }
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync dir", dir, e))
}

/// Allocates `len` bytes for `file`: fallocate, or posix_fallocate where the file system
/// does not support it. ENOSPC becomes `Error::NoSpace`.
fn allocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let len_off = libc::off_t::try_from(len).map_err(|_| Error::NoSpace {
        path: path.into(),
        bytes: len,
    })?;
    // SAFETY: fallocate only reads its integer arguments; the fd is open and owned by `file`
    // for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    let err = if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    let err = if err == libc::EOPNOTSUPP {
        // SAFETY: as above, posix_fallocate takes an open fd and integers only.
        unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) }
    } else {
        err
    };
    match err {
        0 => Ok(()),
        libc::ENOSPC => Err(Error::NoSpace {
            path: path.into(),
            bytes: len,
        }),
        e => Err(Error::io(
            "fallocate",
            path,
            std::io::Error::from_raw_os_error(e),
        )),
    }
}

fn map_rw(file: File, path: &Path) -> Result<Box<dyn MapMut>> {
    // SAFETY: the file lives in tandem's own data directory and is never truncated while
    // mapped (segments are only ever removed whole, after their map is dropped); all access
    // goes through the bounds-checked slice memmap2 hands out. The bytes under it change
    // only through `write_at`, which takes `&mut self`, so no slice handed out by `bytes`
    // is alive then.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io("mmap", path, e))?;
    Ok(Box::new(RwMap { map, file }))
}

impl Backend for MmapBackend {
    fn create_dir_all(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
            let entry = entry.map_err(|e| Error::io("read dir", dir, e))?;
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_mapped(&self, path: &Path, len: u64) -> Result<Box<dyn MapMut>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        if let Err(e) = allocate(&file, path, len) {
            drop(file);
            let _ = fs::remove_file(path);
            return Err(e);
        }
        // The allocation is made durable here; the name becomes durable with the rename that
        // follows every creation (one directory fsync instead of two).
        file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
        map_rw(file, path)
    }

    fn open_mapped(&self, path: &Path) -> Result<Box<dyn MapMut>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        map_rw(file, path)
    }

    fn open_read(&self, path: &Path) -> Result<Box<dyn Map>> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        if len == 0 {
            return Ok(Box::new(RoMap { map: None }));
        }
        // SAFETY: chunk files are immutable once renamed into place and only removed whole;
        // nobody writes or truncates them while they are mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mmap", path, e))?;
        Ok(Box::new(RoMap { map: Some(map) }))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        file.write_all(data)
            .map_err(|e| Error::io("write", path, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", path, e))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
        sync_parent(to)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
        sync_parent(path)
    }

    fn list_subdirs(&self, dir: &Path) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
            let entry = entry.map_err(|e| Error::io("read dir", dir, e))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove_dir_all(&self, dir: &Path) -> Result<()> {
        fs::remove_dir_all(dir).map_err(|e| Error::io("remove dir", dir, e))?;
        sync_parent(dir)
    }
}
