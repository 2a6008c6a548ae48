//! Chunk files: immutable files of compressed series chunks with an index by series key and
//! time, read through a map without copying; every chunk is CRC-verified before it is served.

use std::path::{Path, PathBuf};

use crate::backend::{Backend, Map};
use crate::segment::MAX_TERMS;
use crate::{varint, Error, Lsn, Result, Term};

const MAGIC: &[u8; 8] = b"TDMCHK\0\x01";
const VERSION: u32 = 3;
/// Fixed part of the header; the log's term history follows it, then the chunk data.
const HEADER_LEN: usize = 80;
/// Smallest index entry: six one-byte varints and the CRC.
const ENTRY_MIN: usize = 10;
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
    /// Where the chunk's bytes are in the writer's data buffer.
    data: std::ops::Range<usize>,
    crc: u32,
}

/// Builds a chunk file in memory, then writes it durably under its final name.
pub struct ChunkFileWriter {
    partition: u32,
    covered_lsn: Lsn,
    rejected: u64,
    terms: Vec<(Term, Lsn)>,
    data: Vec<u8>,
    index: Vec<Pending>,
}

impl ChunkFileWriter {
    /// A writer for partition `partition` whose chunks hold every record up to `covered_lsn`.
    pub fn new(partition: u32, covered_lsn: Lsn) -> ChunkFileWriter {
        ChunkFileWriter {
            partition,
            covered_lsn,
            rejected: 0,
            terms: Vec::new(),
            data: Vec::new(),
            index: Vec::new(),
        }
    }

    /// Records the count of samples the store rejected up to `covered_lsn`.
    /// fsdb only carries it, in the header, so that it is durable exactly
    /// when the chunks are.
    pub fn set_rejected(&mut self, rejected: u64) {
        self.rejected = rejected;
    }

    /// Records the partition log's term history at `covered_lsn` (the
    /// newest `MAX_TERMS` entries): with `covered_lsn`, the log's position,
    /// so that a log trimmed of every record can go on after a restart
    /// (`PartitionLog::trim_all`, `PartitionLog::resume_after`).
    pub fn set_terms(&mut self, terms: &[(Term, Lsn)]) {
        self.terms = terms[terms.len().saturating_sub(MAX_TERMS)..].to_vec();
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
            data: self.data.len()..self.data.len() + chunk.len(),
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
    /// Chunks are laid out in index order, so an entry's offset is implied.
    pub fn finish(mut self, backend: &dyn Backend, path: &Path) -> Result<u64> {
        self.index
            .sort_by(|a, b| (&a.key, a.min_ts, a.max_ts).cmp(&(&b.key, b.min_ts, b.max_ts)));
        let data_start = HEADER_LEN + 16 * self.terms.len();
        let mut out = Vec::with_capacity(data_start + self.data.len() + 16 * self.index.len());
        out.resize(HEADER_LEN, 0);
        for (t, l) in &self.terms {
            out.extend_from_slice(&t.0.to_le_bytes());
            out.extend_from_slice(&l.0.to_le_bytes());
        }
        for e in &self.index {
            out.extend_from_slice(&self.data[e.data.clone()]);
        }
        let index_offset = out.len();
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
        let mut prev: &[u8] = &[];
        for e in &self.index {
            let shared = prev.iter().zip(&e.key).take_while(|(a, b)| a == b).count();
            varint::put(&mut out, shared as u64);
            varint::put(&mut out, (e.key.len() - shared) as u64);
            out.extend_from_slice(&e.key[shared..]);
            varint::put(&mut out, e.min_ts.abs_diff(min_ts));
            varint::put(&mut out, e.max_ts.abs_diff(e.min_ts));
            varint::put(&mut out, e.count.into());
            varint::put(&mut out, e.data.len() as u64);
            out.extend_from_slice(&e.crc.to_le_bytes());
            prev = &e.key;
        }
        let index_crc = crc32c::crc32c(&out[index_offset..]);
        let index_len = (out.len() - index_offset) as u64;
        let h = &mut out[..HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.partition.to_le_bytes());
        h[16..24].copy_from_slice(&self.covered_lsn.0.to_le_bytes());
        h[24..32].copy_from_slice(&min_ts.to_le_bytes());
        h[32..40].copy_from_slice(&max_ts.to_le_bytes());
        h[40..48].copy_from_slice(&(index_offset as u64).to_le_bytes());
        h[48..56].copy_from_slice(&index_len.to_le_bytes());
        h[56..60].copy_from_slice(&(self.index.len() as u32).to_le_bytes());
        h[60..64].copy_from_slice(&index_crc.to_le_bytes());
        h[64..72].copy_from_slice(&self.rejected.to_le_bytes());
        h[76..80].copy_from_slice(&(self.terms.len() as u32).to_le_bytes());
        let header_crc = header_crc(&out, self.terms.len());
        out[72..76].copy_from_slice(&header_crc.to_le_bytes());
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
    rejected: u64,
    /// The log's term history at `covered_lsn`.
    terms: Vec<(Term, Lsn)>,
    /// Where the chunk data starts (after the terms).
    data_start: usize,
}

/// CRC of the header: bytes 0..72, then the term count and the terms.
fn header_crc(b: &[u8], n_terms: usize) -> u32 {
    let crc = crc32c::crc32c(&b[..72]);
    crc32c::crc32c_append(crc, &b[76..HEADER_LEN + 16 * n_terms])
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
    let n_terms = u32_at(b, 76) as usize;
    if n_terms > MAX_TERMS || b.len() < HEADER_LEN + 16 * n_terms {
        return Err((76, format!("bad term count {n_terms}")));
    }
    if u32_at(b, 72) != header_crc(b, n_terms) {
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
        rejected: u64_at(b, 64),
        terms: (0..n_terms)
            .map(|i| {
                let at = HEADER_LEN + 16 * i;
                (Term(u64_at(b, at)), Lsn(u64_at(b, at + 8)))
            })
            .collect(),
        data_start: HEADER_LEN + 16 * n_terms,
    };
    if h.terms
        .windows(2)
        .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
    {
        return Err((HEADER_LEN, "term history out of order".into()));
    }
    if h.index_offset < h.data_start || h.index_offset.checked_add(h.index_len) != Some(b.len()) {
        return Err((40, "index does not end the file".into()));
    }
    Ok(h)
}

/// One parsed index entry: the key is `key_at..key_at + key_len` of the
/// file's key arena (keys are stored prefix-compressed, so they are rebuilt
/// at open).
struct Entry {
    key_at: u32,
    key_len: u16,
    /// The key is the previous entry's: one series' chunks are neighbours.
    continues: bool,
    count: u32,
    len: u32,
    crc: u32,
    min_ts: i64,
    max_ts: i64,
    offset: u64,
}

/// The varint at `b[*pos..]`, moving `pos` past it.
fn take_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let (v, n) = varint::get(&b[*pos..])?;
    *pos += n;
    Some(v)
}

/// Reads the index: its entries, and every key written out in one arena.
fn parse_index(b: &[u8], h: &Header) -> Result<(Vec<Entry>, Vec<u8>), (usize, String)> {
    let end = h.index_offset + h.index_len;
    if crc32c::crc32c(&b[h.index_offset..end]) != h.index_crc {
        return Err((h.index_offset, "index checksum mismatch".into()));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(h.count.min(h.index_len / ENTRY_MIN));
    let mut keys = Vec::new();
    let mut pos = h.index_offset;
    let mut offset = h.data_start as u64;
    let index = &b[..end];
    for _ in 0..h.count {
        let at = pos;
        let bad = |why: &str| Err((at, why.to_string()));
        let (Some(shared), Some(suffix)) =
            (take_varint(index, &mut pos), take_varint(index, &mut pos))
        else {
            return bad("index truncated");
        };
        let prev = entries.last().map_or(0..0, |p| {
            p.key_at as usize..p.key_at as usize + p.key_len as usize
        });
        let key_len = shared.saturating_add(suffix);
        if shared > prev.len() as u64 || key_len > SERIES_KEY_MAX as u64 {
            return bad("bad key length");
        }
        let (shared, suffix) = (shared as usize, suffix as usize);
        if end - pos < suffix {
            return bad("index truncated");
        }
        let key_at = keys.len();
        if key_at + shared + suffix > u32::MAX as usize {
            return bad("keys too large");
        }
        keys.extend_from_within(prev.start..prev.start + shared);
        keys.extend_from_slice(&b[pos..pos + suffix]);
        pos += suffix;
        let mut next = || take_varint(index, &mut pos);
        let (Some(from_min), Some(span), Some(count), Some(len)) = (next(), next(), next(), next())
        else {
            return bad("index truncated");
        };
        if end - pos < 4 {
            return bad("index truncated");
        }
        let crc = u32_at(b, pos);
        pos += 4;
        let min_ts = i128::from(h.min_ts) + i128::from(from_min);
        let max_ts = min_ts + i128::from(span);
        if max_ts > i128::from(h.max_ts) {
            return bad("chunk time range inconsistent");
        }
        let (Ok(count), Ok(len)) = (u32::try_from(count), u32::try_from(len)) else {
            return bad("bad count or length");
        };
        let chunk_end = offset + u64::from(len);
        if chunk_end > h.index_offset as u64 {
            return bad("chunk outside the data region");
        }
        let continues = suffix == 0 && shared == prev.len() && !entries.is_empty();
        let e = Entry {
            key_at: key_at as u32,
            key_len: key_len as u16,
            continues,
            count,
            len,
            crc,
            min_ts: min_ts as i64,
            max_ts: max_ts as i64,
            offset,
        };
        if let Some(p) = entries.last() {
            let key = |x: &Entry| {
                let at = x.key_at as usize;
                (&keys[at..at + x.key_len as usize], x.min_ts, x.max_ts)
            };
            if key(p) > key(&e) {
                return bad("index not sorted");
            }
        }
        offset = chunk_end;
        entries.push(e);
    }
    if pos != end {
        return Err((pos, "trailing bytes after the index".into()));
    }
    if offset != h.index_offset as u64 {
        return Err((
            h.index_offset,
            "data region not covered by the index".into(),
        ));
    }
    Ok((entries, keys))
}

/// A sealed chunk file, mapped read-only. Chunk bytes are served straight from the map.
pub struct ChunkFile {
    path: PathBuf,
    map: Box<dyn Map>,
    header: Header,
    entries: Vec<Entry>,
    keys: Vec<u8>,
}

impl ChunkFile {
    /// Maps `path` and verifies its header and index checksums.
    pub fn open(backend: &dyn Backend, path: &Path) -> Result<ChunkFile> {
        let map = backend.open_read(path)?;
        let corrupted = |(offset, reason): (usize, String)| corrupted(path, offset, reason);
        let header = parse_header(map.bytes()).map_err(corrupted)?;
        let (entries, keys) = parse_index(map.bytes(), &header).map_err(corrupted)?;
        Ok(ChunkFile {
            path: path.to_path_buf(),
            map,
            header,
            entries,
            keys,
        })
    }

    fn key(&self, e: &Entry) -> &[u8] {
        &self.keys[e.key_at as usize..e.key_at as usize + e.key_len as usize]
    }

    fn meta(&self, e: &Entry) -> ChunkMeta<'_> {
        ChunkMeta {
            series_key: self.key(e),
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

    /// Samples the store had rejected up to [`Self::covered_lsn`]
    /// ([`ChunkFileWriter::set_rejected`]).
    pub fn rejected(&self) -> u64 {
        self.header.rejected
    }

    /// The log's term history at [`Self::covered_lsn`]
    /// ([`ChunkFileWriter::set_terms`]).
    pub fn terms(&self) -> &[(Term, Lsn)] {
        &self.header.terms
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

    /// The chunks of the series whose first chunk is number `first` in
    /// [`Self::chunks`], by time: a reader that kept that number finds a
    /// series' chunks without searching the index.
    pub fn series_chunks(&self, first: usize) -> impl Iterator<Item = ChunkMeta<'_>> + '_ {
        let rest = self.entries.get(first..).unwrap_or_default();
        rest.iter()
            .enumerate()
            .take_while(|(i, e)| *i == 0 || e.continues)
            .map(|(_, e)| self.meta(e))
    }

    /// What a reader of chunk `first` (as for [`Self::series_chunks`])
    /// touches first: its index entry and the one after it. Only to ask
    /// the CPU to load them ahead of the read (a prefetch).
    pub fn entries_to_prefetch(&self, first: usize) -> Option<&[impl Sized]> {
        self.entries.get(first..(first + 2).min(self.entries.len()))
    }

    /// The bytes of chunk `first`, not verified: only to ask the CPU to
    /// load them ahead of [`Self::chunk_data`], never to decode.
    pub fn bytes_to_prefetch(&self, first: usize) -> Option<&[u8]> {
        let e = self.entries.get(first)?;
        let start = usize::try_from(e.offset).ok()?;
        self.map.bytes().get(start..)?.get(..e.len as usize)
    }

    /// Chunks of `series_key` that overlap `start_ts..=end_ts`, by time.
    pub fn lookup<'a>(
        &'a self,
        series_key: &'a [u8],
        start_ts: i64,
        end_ts: i64,
    ) -> impl Iterator<Item = ChunkMeta<'a>> + 'a {
        let from = self.entries.partition_point(|e| self.key(e) < series_key);
        self.entries[from..]
            .iter()
            .take_while(move |e| self.key(e) == series_key)
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

/// Deletes every chunk file (`*.chunk`) in `dir` whose `max_ts < cutoff_ts`,
/// except the newest (highest `covered_lsn`): it carries the partition log's
/// position and the rejected counter.
pub fn delete_expired(
    backend: &dyn Backend,
    dir: &Path,
    cutoff_ts: i64,
) -> Result<RetentionReport> {
    let mut report = RetentionReport::default();
    let mut files = Vec::new();
    for name in backend.list_dir(dir)? {
        if !name.ends_with(CHUNK_FILE_SUFFIX) {
            continue;
        }
        let path = dir.join(&name);
        match parse_header(backend.open_read(&path)?.bytes()) {
            Ok(h) => files.push((h.covered_lsn, h.max_ts, path)),
            Err(_) => report.corrupted.push(path),
        }
    }
    let newest = files.iter().map(|f| f.0).max();
    for (covered, max_ts, path) in files {
        if max_ts < cutoff_ts && Some(covered) != newest {
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
    const TERMS: [(Term, Lsn); 2] = [(Term(1), Lsn(1)), (Term(3), Lsn(30))];

    fn build(backend: &MemBackend, name: &str, chunks: &[(&str, i64, i64)]) -> ChunkFile {
        build_covering(backend, name, Lsn(42), chunks)
    }

    fn build_covering(
        backend: &MemBackend,
        name: &str,
        covered: Lsn,
        chunks: &[(&str, i64, i64)],
    ) -> ChunkFile {
        let mut w = ChunkFileWriter::new(5, covered);
        w.set_terms(&TERMS);
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
            .lookup(key.as_bytes(), start, end)
            .map(|m| {
                let data = file.chunk_data(&m).unwrap();
                assert_eq!(data, &chunk_bytes(key, m.min_ts)[..]);
                m.min_ts
            })
            .collect();
        assert_eq!(got, expected, "{key} {start}..={end}");
    }

    /// What a reader is told to prefetch is what it then reads.
    #[test]
    fn what_to_prefetch_is_the_chunk_and_its_entries() {
        let backend = MemBackend::new();
        let file = build(
            &backend,
            "p.chunk",
            &[("a", 0, 9), ("a", 10, 19), ("b", 0, 4)],
        );
        for (i, m) in file.chunks().enumerate() {
            assert_eq!(
                file.bytes_to_prefetch(i),
                Some(file.chunk_data(&m).unwrap())
            );
        }
        assert_eq!(file.entries_to_prefetch(0).map(<[_]>::len), Some(2));
        assert_eq!(file.entries_to_prefetch(2).map(<[_]>::len), Some(1));
        assert!(file.bytes_to_prefetch(3).is_none());
        assert!(file.entries_to_prefetch(4).is_none());
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
        assert_eq!(file.terms(), &TERMS[..]);
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
            assert!(at >= HEADER_LEN + 16 * 2, "header byte {at} undetected");
            assert!(file.verify().is_err(), "byte {at} passes verify");
            let mut caught = false;
            for (key, min_ts, max_ts) in chunks {
                for m in file.lookup(key.as_bytes(), min_ts, max_ts) {
                    match file.chunk_data(&m) {
                        Ok(data) => assert_eq!(data, &chunk_bytes(key, min_ts)[..]),
                        Err(e) => caught |= e.is_corruption(),
                    }
                }
            }
            assert!(caught, "byte {at} undetected");
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

        /// Any keys (prefixes of one another, empty, shared runs), any time
        /// ranges up to the extremes of i64, any chunk bytes: every entry and
        /// every chunk reads back as written, in (key, min_ts, max_ts) order.
        #[test]
        fn any_chunks_round_trip(
            chunks in proptest::collection::vec(
                (
                    proptest::collection::vec(0u8..4, 0..6),
                    proptest::prelude::any::<i64>(),
                    proptest::prelude::any::<i64>(),
                    proptest::prelude::any::<u32>(),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
                ),
                0..40,
            ),
            rejected in proptest::prelude::any::<u64>(),
        ) {
            let backend = MemBackend::new();
            backend.create_dir_all(Path::new(DIR)).unwrap();
            let mut w = ChunkFileWriter::new(3, Lsn(9));
            w.set_rejected(rejected);
            let mut expected = Vec::new();
            for (key, a, b, count, data) in &chunks {
                let (min_ts, max_ts) = (*a.min(b), *a.max(b));
                w.add(key, min_ts, max_ts, *count, data).unwrap();
                expected.push((key.clone(), min_ts, max_ts, *count, data.clone()));
            }
            expected.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
            let path = Path::new(DIR).join("p.chunk");
            w.finish(&backend, &path).unwrap();
            let file = ChunkFile::open(&backend, &path).unwrap();
            file.verify().unwrap();
            proptest::prop_assert_eq!(file.rejected(), rejected);
            let got: Vec<_> = file
                .chunks()
                .map(|m| {
                    let data = file.chunk_data(&m).unwrap().to_vec();
                    (m.series_key.to_vec(), m.min_ts, m.max_ts, m.count, data)
                })
                .collect();
            proptest::prop_assert_eq!(&got, &expected);
            for (key, min_ts, max_ts, ..) in &expected {
                proptest::prop_assert!(file.lookup(key, *min_ts, *max_ts).any(|m| m.min_ts == *min_ts));
                // The series' first chunk leads to all of its chunks and no other.
                let first = got.iter().position(|g| &g.0 == key).unwrap();
                let by_number: Vec<_> = file.series_chunks(first).collect();
                let by_key: Vec<_> = file.lookup(key, i64::MIN, i64::MAX).collect();
                proptest::prop_assert_eq!(by_number, by_key);
            }
        }
    }

    /// The index stores what a key shares with the one before it once, and
    /// times, counts and lengths as varints: on a partition's typical keys
    /// (20 metrics of each of many resources) an entry costs under 16 bytes,
    /// where fixed-width fields and whole keys took 56.
    #[test]
    fn index_entries_of_neighbouring_keys_are_small() {
        let backend = MemBackend::new();
        backend.create_dir_all(Path::new(DIR)).unwrap();
        let mut w = ChunkFileWriter::new(0, Lsn(1));
        let start = 1_795_380_000_000;
        for r in 0..50 {
            for m in 0..20 {
                let key = format!("\x06\x00vm{r:04}\x08\x00metric{m:02}\x00");
                w.add(key.as_bytes(), start, start + 990_000, 100, &[0; 90])
                    .unwrap();
            }
        }
        let path = Path::new(DIR).join("s.chunk");
        w.finish(&backend, &path).unwrap();
        let file = ChunkFile::open(&backend, &path).unwrap();
        let index = backend.read(&path).unwrap().len() - HEADER_LEN - 90 * file.len();
        assert_eq!(file.len(), 1000);
        assert!(index < 16 * 1000, "{index} bytes of index for 1000 chunks");
    }

    #[test]
    fn retention_deletes_whole_expired_files() {
        let backend = MemBackend::new();
        build_covering(&backend, "old.chunk", Lsn(1), &[("cpu", 0, 99)]);
        build_covering(&backend, "edge.chunk", Lsn(2), &[("cpu", 100, 199)]);
        build_covering(&backend, "new.chunk", Lsn(3), &[("cpu", 150, 500)]);
        build_covering(&backend, "bad.chunk", Lsn(4), &[("cpu", 0, 1)]);
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
        // The newest file stays, expired or not: it carries the log's position.
        let report = delete_expired(&backend, Path::new(DIR), 1000).unwrap();
        assert!(report.deleted.is_empty(), "{:?}", report.deleted);
        assert!(backend.paths().contains(&dir.join("new.chunk")));
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
