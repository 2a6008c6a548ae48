//! Chunk files: immutable files of compressed series chunks with an index by series key and
//! time, read through a map without copying; every chunk is CRC-verified before it is served.

use std::path::{Path, PathBuf};

use crate::backend::{Backend, Map};
use crate::{Error, Lsn, Result};

const MAGIC: &[u8; 8] = b"TDMCHK\0\x01";
const VERSION: u32 = 1;
/// Chunk data starts here.
const HEADER_LEN: usize = 72;
/// Fixed part of an index entry after the key: min_ts, max_ts, count, offset, len, crc.
const ENTRY_FIXED: usize = 36;
/// Longest series key.
pub const SERIES_KEY_MAX: usize = u16::MAX as usize;
/// Largest chunk.
pub const CHUNK_BYTES_MAX: usize = 64 << 20;
/// File name suffix of chunk files (retention only looks at these).
pub const CHUNK_FILE_SUFFIX: &str = ".chunk";

/// The index entry of one chunk; the key borrows the mapped file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta<'a> {
    pub series_key: &'a [u8],
    pub min_ts: i64,
    pub max_ts: i64,
    /// Number of samples in the chunk.
    pub count: u32,
    /// Position of the chunk's bytes in the file.
    pub offset: u64,
    pub len: u32,
    /// CRC32C of the chunk's bytes.
    pub crc: u32,
}

struct Pending {
    key: Vec<u8>,
    min_ts: i64,
    max_ts: i64,
    count: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

/// Builds a chunk file in memory, then writes it durably under its final name.
pub struct ChunkFileWriter {
    partition: u32,
    covered_lsn: Lsn,
    data: Vec<u8>,
    index: Vec<Pending>,
}

impl ChunkFileWriter {
    /// A writer for partition `partition` whose chunks hold every record up to `covered_lsn`.
    pub fn new(partition: u32, covered_lsn: Lsn) -> ChunkFileWriter {
        ChunkFileWriter {
            partition,
            covered_lsn,
            data: Vec::new(),
            index: Vec::new(),
        }
    }

    /// Adds one chunk (opaque bytes) of a series holding `count` samples in `min_ts..=max_ts`.
    pub fn add(
        &mut self,
        series_key: &[u8],
        min_ts: i64,
        max_ts: i64,
        count: u32,
        chunk: &[u8],
    ) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidChunk {
                series: String::from_utf8_lossy(&series_key[..series_key.len().min(200)]).into(),
                reason,
            })
        };
        if series_key.len() > SERIES_KEY_MAX {
            return invalid(format!("series key of {} bytes", series_key.len()));
        }
        if min_ts > max_ts {
            return invalid(format!("min_ts {min_ts} after max_ts {max_ts}"));
        }
        if chunk.len() > CHUNK_BYTES_MAX {
            return invalid(format!("chunk of {} bytes", chunk.len()));
        }
        if self.index.len() >= u32::MAX as usize {
            return invalid("too many chunks in one file".into());
        }
        self.index.push(Pending {
            key: series_key.to_vec(),
            min_ts,
            max_ts,
            count,
            offset: (HEADER_LEN + self.data.len()) as u64,
            len: chunk.len() as u32,
            crc: crc32c::crc32c(chunk),
        });
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// Number of chunks added.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Writes the file to `path` (through a durable temporary file and a rename); returns its size.
    pub fn finish(mut self, backend: &dyn Backend, path: &Path) -> Result<u64> {
        self.index
            .sort_by(|a, b| (&a.key, a.min_ts, a.max_ts).cmp(&(&b.key, b.min_ts, b.max_ts)));
        let index_offset = HEADER_LEN + self.data.len();
        let mut out = vec![0u8; HEADER_LEN];
        out.append(&mut self.data);
        for e in &self.index {
            out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
            out.extend_from_slice(&e.key);
            out.extend_from_slice(&e.min_ts.to_le_bytes());
            out.extend_from_slice(&e.max_ts.to_le_bytes());
            out.extend_from_slice(&e.count.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
            out.extend_from_slice(&e.crc.to_le_bytes());
        }
        let min_ts = self
            .index
            .iter()
            .map(|e| e.min_ts)
            .min()
            .unwrap_or(i64::MAX);
        let max_ts = self
            .index
            .iter()
            .map(|e| e.max_ts)
            .max()
            .unwrap_or(i64::MIN);
        let index_crc = crc32c::crc32c(&out[index_offset..]);
        let h = &mut out[..HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.partition.to_le_bytes());
        h[16..24].copy_from_slice(&self.covered_lsn.0.to_le_bytes());
        h[24..32].copy_from_slice(&min_ts.to_le_bytes());
        h[32..40].copy_from_slice(&max_ts.to_le_bytes());
        h[40..48].copy_from_slice(&(index_offset as u64).to_le_bytes());
        let index_len = (out.len() - index_offset) as u64;
        out[48..56].copy_from_slice(&index_len.to_le_bytes());
        out[56..60].copy_from_slice(&(self.index.len() as u32).to_le_bytes());
        out[60..64].copy_from_slice(&index_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[..64]);
        out[64..68].copy_from_slice(&header_crc.to_le_bytes());
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        backend.write_file(&tmp, &out)?;
        backend.rename(&tmp, path)?;
        Ok(out.len() as u64)
    }
}

/// Parsed, verified header of a chunk file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    partition: u32,
    covered_lsn: Lsn,
    min_ts: i64,
    max_ts: i64,
    index_offset: usize,
    index_len: usize,
    count: usize,
    index_crc: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn parse_header(b: &[u8]) -> Result<Header, (usize, String)> {
    if b.len() < HEADER_LEN {
        return Err((
            0,
            format!("file of {} bytes is shorter than a header", b.len()),
        ));
    }
    if &b[0..8] != MAGIC {
        return Err((0, "bad magic".into()));
    }
    if u32_at(b, 64) != crc32c::crc32c(&b[..64]) {
        return Err((0, "header checksum mismatch".into()));
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err((8, format!("unknown version {version}")));
    }
    let h = Header {
        partition: u32_at(b, 12),
        covered_lsn: Lsn(u64_at(b, 16)),
        min_ts: u64_at(b, 24) as i64,
        max_ts: u64_at(b, 32) as i64,
        index_offset: usize::try_from(u64_at(b, 40)).unwrap_or(usize::MAX),
        index_len: usize::try_from(u64_at(b, 48)).unwrap_or(usize::MAX),
        count: u32_at(b, 56) as usize,
        index_crc: u32_at(b, 60),
    };
    if h.index_offset < HEADER_LEN || h.index_offset.checked_add(h.index_len) != Some(b.len()) {
        return Err((40, "index does not end the file".into()));
    }
    Ok(h)
}

/// One parsed index entry: the key is `key_at..key_at + key_len` of the file.
struct Entry {
    key_at: usize,
    key_len: usize,
    min_ts: i64,
    max_ts: i64,
    count: u32,
    offset: u64,
    len: u32,
    crc: u32,
}

fn parse_index(b: &[u8], h: &Header) -> Result<Vec<Entry>, (usize, String)> {
    let end = h.index_offset + h.index_len;
    if crc32c::crc32c(&b[h.index_offset..end]) != h.index_crc {
        return Err((h.index_offset, "index checksum mismatch".into()));
    }
    let mut entries = Vec::with_capacity(h.count.min(h.index_len / (2 + ENTRY_FIXED)));
    let mut pos = h.index_offset;
    for _ in 0..h.count {
        let bad = |why: &str| Err((pos, why.to_string()));
        if pos + 2 > end {
            return bad("index truncated");
        }
        let key_len = u16::from_le_bytes([b[pos], b[pos + 1]]) as usize;
        let f = pos + 2 + key_len;
        if f + ENTRY_FIXED > end {
            return bad("index truncated");
        }
        let e = Entry {
            key_at: pos + 2,
            key_len,
            min_ts: u64_at(b, f) as i64,
            max_ts: u64_at(b, f + 8) as i64,
            count: u32_at(b, f + 16),
            offset: u64_at(b, f + 20),
            len: u32_at(b, f + 28),
            crc: u32_at(b, f + 32),
        };
        let chunk_end = e.offset.checked_add(e.len as u64);
        if e.offset < HEADER_LEN as u64 || chunk_end.is_none_or(|c| c > h.index_offset as u64) {
            return bad("chunk outside the data region");
        }
        if e.min_ts > e.max_ts || e.min_ts < h.min_ts || e.max_ts > h.max_ts {
            return bad("chunk time range inconsistent");
        }
        if let Some(p) = entries.last() {
            let key = |x: &Entry| (&b[x.key_at..x.key_at + x.key_len], x.min_ts, x.max_ts);
            if key(p) > key(&e) {
                return bad("index not sorted");
            }
        }
        entries.push(e);
        pos = f + ENTRY_FIXED;
    }
    if pos != end {
        return Err((pos, "trailing bytes after the index".into()));
    }
    Ok(entries)
}

/// A sealed chunk file, mapped read-only. Chunk bytes are served straight from the map.
pub struct ChunkFile {
    path: PathBuf,
    map: Box<dyn Map>,
    header: Header,
    entries: Vec<Entry>,
}

impl ChunkFile {
    /// Maps `path` and verifies its header and index checksums.
    pub fn open(backend: &dyn Backend, path: &Path) -> Result<ChunkFile> {
        let map = backend.open_read(path)?;
        let corrupted = |(offset, reason): (usize, String)| corrupted(path, offset, reason);
        let header = parse_header(map.bytes()).map_err(corrupted)?;
        let entries = parse_index(map.bytes(), &header).map_err(corrupted)?;
        Ok(ChunkFile {
            path: path.to_path_buf(),
            map,
            header,
            entries,
        })
    }

    fn meta(&self, e: &Entry) -> ChunkMeta<'_> {
        ChunkMeta {
            series_key: &self.map.bytes()[e.key_at..e.key_at + e.key_len],
            min_ts: e.min_ts,
            max_ts: e.max_ts,
            count: e.count,
            offset: e.offset,
            len: e.len,
            crc: e.crc,
        }
    }

    /// The partition the file belongs to.
    pub fn partition(&self) -> u32 {
        self.header.partition
    }

    /// Every log record up to this LSN is contained in the file.
    pub fn covered_lsn(&self) -> Lsn {
        self.header.covered_lsn
    }

    /// Smallest timestamp of any chunk (`i64::MAX` for a file without chunks).
    pub fn min_ts(&self) -> i64 {
        self.header.min_ts
    }

    /// Largest timestamp of any chunk (`i64::MIN` for a file without chunks).
    pub fn max_ts(&self) -> i64 {
        self.header.max_ts
    }

    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All chunks, by series key then time.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkMeta<'_>> + '_ {
        self.entries.iter().map(|e| self.meta(e))
    }

    /// Every distinct series key, sorted.
    pub fn series(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut prev: Option<&[u8]> = None;
        self.chunks().filter_map(move |m| {
            let new = prev != Some(m.series_key);
            prev = Some(m.series_key);
            new.then_some(m.series_key)
        })
    }

    /// Chunks of `series_key` that overlap `start_ts..=end_ts`, by time.
    pub fn lookup<'a>(
        &'a self,
        series_key: &'a [u8],
        start_ts: i64,
        end_ts: i64,
    ) -> impl Iterator<Item = ChunkMeta<'a>> + 'a {
        let key = |e: &Entry| &self.map.bytes()[e.key_at..e.key_at + e.key_len];
        let from = self.entries.partition_point(|e| key(e) < series_key);
        self.entries[from..]
            .iter()
            .take_while(move |e| key(e) == series_key)
            .filter(move |e| e.max_ts >= start_ts && e.min_ts <= end_ts)
            .map(|e| self.meta(e))
    }

    /// The bytes of a chunk, after verifying its CRC; a mismatch is `Error::Corrupted`.
    pub fn chunk_data(&self, meta: &ChunkMeta<'_>) -> Result<&[u8]> {
        let start = usize::try_from(meta.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(meta.len as usize);
        let data = self
            .map
            .bytes()
            .get(start..end)
            .ok_or_else(|| corrupted(&self.path, start, "chunk outside the file".into()))?;
        if crc32c::crc32c(data) != meta.crc {
            return Err(corrupted(
                &self.path,
                start,
                "chunk checksum mismatch".into(),
            ));
        }
        Ok(data)
    }

    /// Checks every chunk's CRC: a file that passes serves no damaged
    /// chunk later. Costs one read of the file (done once, at open).
    pub fn verify(&self) -> Result<()> {
        for e in &self.entries {
            self.chunk_data(&self.meta(e))?;
        }
        Ok(())
    }

    /// Chunks of `series_key` overlapping `start_ts..=end_ts` with their verified bytes.
    pub fn read<'a>(
        &'a self,
        series_key: &'a [u8],
        start_ts: i64,
        end_ts: i64,
    ) -> impl Iterator<Item = Result<(ChunkMeta<'a>, &'a [u8])>> + 'a {
        self.lookup(series_key, start_ts, end_ts)
            .map(move |m| self.chunk_data(&m).map(|d| (m, d)))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn corrupted(path: &Path, offset: usize, reason: String) -> Error {
    Error::Corrupted {
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        offset: offset as u64,
        reason,
    }
}

/// What a retention pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Files deleted because all their samples are older than the cutoff.
    pub deleted: Vec<PathBuf>,
    /// Files kept because their header is corrupt (they need a refetch, not a silent delete).
    pub corrupted: Vec<PathBuf>,
}

/// Deletes every chunk file (`*.chunk`) in `dir` whose `max_ts < cutoff_ts`.
pub fn delete_expired(
    backend: &dyn Backend,
    dir: &Path,
    cutoff_ts: i64,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    for name in backend.list_dir(dir)? {
        if !name.ends_with(CHUNK_FILE_SUFFIX) {
            continue;
        }
        let path = dir.join(&name);
        let max_ts = match parse_header(backend.open_read(&path)?.bytes()) {
            Ok(h) => h.max_ts,
            Err(_) => {
                report.corrupted.push(path);
                continue;
            }
        };
        if max_ts < cutoff_ts {
            backend.remove_file(&path)?;
            report.deleted.push(path);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemBackend;

    const DIR: &str = "/data/p1/chunks";

    fn chunk_bytes(key: &str, min_ts: i64) -> Vec<u8> {
        format!("{key}@{min_ts}").into_bytes().repeat(3)
    }

    /// Writes a file of `(key, min_ts, max_ts)` chunks and reopens it.
    fn build(backend: &MemBackend, name: &str, chunks: &[(&str, i64, i64)]) -> ChunkFile {
        let mut w = ChunkFileWriter::new(5, Lsn(42));
        for &(key, min_ts, max_ts) in chunks {
            let data = chunk_bytes(key, min_ts);
            w.add(
                key.as_bytes(),
                min_ts,
                max_ts,
                (max_ts - min_ts) as u32 + 1,
                &data,
            )
            .unwrap();
        }
        let path = Path::new(DIR).join(name);
        backend.create_dir_all(Path::new(DIR)).unwrap();
        w.finish(backend, &path).unwrap();
        ChunkFile::open(backend, &path).unwrap()
    }

    /// Looks up `key` in `start..=end` and compares the chunks' min_ts with `expected`.
    fn check(file: &ChunkFile, key: &str, start: i64, end: i64, expected: &[i64]) {
        let got: Vec<i64> = file
            .read(key.as_bytes(), start, end)
            .map(|r| {
                let (m, data) = r.unwrap();
                assert_eq!(data, &chunk_bytes(key, m.min_ts)[..]);
                m.min_ts
            })
            .collect();
        assert_eq!(got, expected, "{key} {start}..={end}");
    }

    #[test]
    fn round_trip_and_lookup() {
        let backend = MemBackend::new();
        let file = build(
            &backend,
            "a.chunk",
            &[
                ("cpu", 200, 299),
                ("mem", 0, 99),
                ("cpu", 0, 99),
                ("cpu", 100, 199),
                ("disk", 50, 60),
            ],
        );
        assert_eq!((file.partition(), file.covered_lsn()), (5, Lsn(42)));
        assert_eq!((file.min_ts(), file.max_ts(), file.len()), (0, 299, 5));
        let series: Vec<&[u8]> = file.series().collect();
        assert_eq!(series, [&b"cpu"[..], b"disk", b"mem"]);
        check(&file, "cpu", 0, 1000, &[0, 100, 200]);
        check(&file, "cpu", 150, 250, &[100, 200]);
        check(&file, "cpu", 199, 199, &[100]);
        check(&file, "cpu", 300, 400, &[]);
        check(&file, "mem", -5, 0, &[0]);
        check(&file, "cp", 0, 1000, &[]);
        check(&file, "zzz", 0, 1000, &[]);
        let m = file.chunks().next().unwrap();
        assert_eq!((m.series_key, m.count), (&b"cpu"[..], 100));
    }

    #[test]
    fn empty_file() {
        let backend = MemBackend::new();
        let file = build(&backend, "e.chunk", &[]);
        assert!(file.is_empty());
        assert_eq!((file.min_ts(), file.max_ts()), (i64::MAX, i64::MIN));
        check(&file, "cpu", i64::MIN, i64::MAX, &[]);
    }

    #[test]
    fn bad_chunks_are_refused() {
        let mut w = ChunkFileWriter::new(0, Lsn(0));
        assert!(matches!(
            w.add(b"k", 10, 5, 1, b"x"),
            Err(Error::InvalidChunk { .. })
        ));
        let long = vec![b'k'; SERIES_KEY_MAX + 1];
        assert!(matches!(
            w.add(&long, 1, 5, 1, b"x"),
            Err(Error::InvalidChunk { .. })
        ));
        assert!(w.is_empty());
    }

    /// Every single-byte corruption is caught at open or when the chunk is read; the reader
    /// never hands out bytes that differ from what was written.
    #[test]
    fn every_corrupt_byte_is_detected() {
        let chunks = [("cpu", 0, 9), ("cpu", 10, 19), ("mem", 0, 9)];
        let backend = MemBackend::new();
        build(&backend, "c.chunk", &chunks);
        let path = Path::new(DIR).join("c.chunk");
        let original = backend.read(&path).unwrap();
        for (at, &byte) in original.iter().enumerate() {
            let backend = MemBackend::new();
            build(&backend, "c.chunk", &chunks);
            backend.poke(&path, at, &[byte ^ 0x20]);
            let file = match ChunkFile::open(&backend, &path) {
                Err(e) => {
                    assert!(e.is_corruption(), "byte {at}: {e}");
                    continue;
                }
                Ok(f) => f,
            };
            assert!(
                (68..72).contains(&at) || at >= HEADER_LEN,
                "header byte {at} undetected"
            );
            assert!(
                file.verify().is_err() || (68..72).contains(&at),
                "byte {at} passes verify"
            );
            let mut caught = false;
            for (key, min_ts, max_ts) in chunks {
                for r in file.read(key.as_bytes(), min_ts, max_ts) {
                    match r {
                        Ok((_, data)) => assert_eq!(data, &chunk_bytes(key, min_ts)[..]),
                        Err(e) => caught |= e.is_corruption(),
                    }
                }
            }
            assert!(caught || (68..72).contains(&at), "byte {at} undetected");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Arbitrary bytes, or a valid file with a run of bytes overwritten, never panic the
        /// reader and never make it serve bytes that were not written.
        #[test]
        fn arbitrary_damage_never_panics_or_serves_wrong_bytes(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            whole_file in proptest::prelude::any::<bool>(),
        ) {
            let backend = MemBackend::new();
            let chunks = [("cpu", 0, 9), ("cpu", 10, 19), ("mem", 5, 7)];
            build(&backend, "g.chunk", &chunks);
            let path = Path::new(DIR).join("g.chunk");
            if whole_file {
                backend.write_file(&path, &garbage).unwrap();
            } else {
                let len = backend.read(&path).unwrap().len();
                let at = at.index(len);
                let n = garbage.len().min(len - at);
                backend.poke(&path, at, &garbage[..n]);
            }
            if let Ok(file) = ChunkFile::open(&backend, &path) {
                for m in file.chunks() {
                    let key = std::str::from_utf8(m.series_key).unwrap_or("?").to_string();
                    if let Ok(data) = file.chunk_data(&m) {
                        proptest::prop_assert_eq!(data, &chunk_bytes(&key, m.min_ts)[..]);
                    }
                }
            }
        }
    }

    #[test]
    fn retention_deletes_whole_expired_files() {
        let backend = MemBackend::new();
        build(&backend, "old.chunk", &[("cpu", 0, 99)]);
        build(&backend, "edge.chunk", &[("cpu", 100, 199)]);
        build(&backend, "new.chunk", &[("cpu", 150, 500)]);
        build(&backend, "bad.chunk", &[("cpu", 0, 1)]);
        backend
            .write_file(&Path::new(DIR).join("notes.txt"), b"x")
            .unwrap();
        backend.poke(&Path::new(DIR).join("bad.chunk"), 30, &[0xff]);
        let report = delete_expired(&backend, Path::new(DIR), 200).unwrap();
        let dir = Path::new(DIR);
        assert_eq!(
            report.deleted,
            [dir.join("edge.chunk"), dir.join("old.chunk")]
        );
        assert_eq!(report.corrupted, [dir.join("bad.chunk")]);
        let left: Vec<_> = backend.paths();
        assert_eq!(
            left,
            [
                dir.join("bad.chunk"),
                dir.join("new.chunk"),
                dir.join("notes.txt")
            ]
        );
    }

    #[test]
    fn write_failure_leaves_no_chunk_file() {
        let backend = MemBackend::new();
        backend.create_dir_all(Path::new(DIR)).unwrap();
        let mut w = ChunkFileWriter::new(1, Lsn(1));
        w.add(b"k", 0, 1, 2, b"data").unwrap();
        backend.fail_after(Some(1));
        let path = Path::new(DIR).join("f.chunk");
        assert!(matches!(
            w.finish(&backend, &path),
            Err(Error::Injected { .. })
        ));
        backend.fail_after(None);
        assert!(matches!(
            ChunkFile::open(&backend, &path),
            Err(Error::NotFound { .. })
        ));
    }
}
