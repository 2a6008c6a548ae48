//! The partition log: CRC-framed records in preallocated, memory-mapped segment files that
//! start small and double. Open is recovery: every record is verified, a torn tail is cut,
//! damage in synced bytes is `Error::Corrupted`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::backend::{Backend, MapMut};
use crate::segment::{
    decode_watermark, encode_watermark, frame_header, frame_len_at, read_frame, watermark_slot,
    Frame, SegmentHeader, Watermark, DATA_START, FRAME_HEADER, MAX_TERMS, WM_LEN, WM_OFFSET,
};
use crate::{Error, Lsn, Result, Term};

/// Sizes of a partition log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Size of the first segment (a power of two, at least 4 KiB) after the
    /// one-page segment a log starts with. Each new segment doubles. Big
    /// enough that a busy partition creates few files (see ARCHITECTURE.md).
    pub segment_bytes_min: u64,
    /// Largest segment size (a power of two).
    pub segment_bytes_max: u64,
    /// Largest record payload.
    pub record_bytes_max: u64,
    /// Appends reserve a segment in steps of this many bytes (a power of two >= 4096): each
    /// step msyncs the segment header once and faults the pages in; recovery zeroes stale
    /// bytes at most this far past the records.
    pub write_ahead_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes_min: 1 << 20,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
            write_ahead_bytes: 8 << 20,
        }
    }
}

impl LogConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.segment_bytes_min < 4096 || !self.segment_bytes_min.is_power_of_two() {
            return bad(format!(
                "segment_bytes_min {} must be a power of two >= 4096",
                self.segment_bytes_min
            ));
        }
        if self.segment_bytes_max < self.segment_bytes_min
            || !self.segment_bytes_max.is_power_of_two()
            || self.segment_bytes_max > u32::MAX as u64
        {
            return bad(format!(
                "segment_bytes_max {} must be a power of two in segment_bytes_min..=4 GiB",
                self.segment_bytes_max
            ));
        }
        if self.write_ahead_bytes < 4096 || !self.write_ahead_bytes.is_power_of_two() {
            return bad(format!(
                "write_ahead_bytes {} must be a power of two >= 4096",
                self.write_ahead_bytes
            ));
        }
        if self.record_bytes_max + (DATA_START + FRAME_HEADER) as u64 > self.segment_bytes_max {
            return bad(format!(
                "record_bytes_max {} does not fit in a segment of {} bytes",
                self.record_bytes_max, self.segment_bytes_max
            ));
        }
        Ok(())
    }
}

/// One record read back from the log; the payload borrows the mapped segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: Lsn,
    pub term: Term,
    pub payload: &'a [u8],
}

struct Segment {
    name: String,
    map: Box<dyn MapMut>,
    header: SegmentHeader,
    /// End of the valid records (the next append goes here).
    end: usize,
    /// Bytes before this were msynced and recorded in the watermark.
    synced_end: usize,
    wm_seq: u64,
    /// Nothing at or after this offset was written; raised (and msynced) before appending past it.
    write_limit: usize,
}

impl Segment {
    /// Writes the next watermark slot and makes it durable.
    fn write_watermark(&mut self) -> Result<()> {
        let wm = Watermark {
            seq: self.wm_seq + 1,
            synced_end: self.synced_end as u64,
            write_limit: self.write_limit as u64,
        };
        let (at, slot) = watermark_slot(wm);
        self.map.write_at(at, &[&slot])?;
        self.map.sync_range(WM_OFFSET, WM_LEN)?;
        // Only now: after a failed write the next one goes to the same slot
        // again, never over the other, the last one that verifies.
        self.wm_seq = wm.seq;
        Ok(())
    }

    /// Lets appends write up to `need`: msyncs a write limit of at least `need` (rounded up
    /// to `step`) before any byte lands past the old one, so that recovery knows how far
    /// stale bytes can reach.
    fn reserve(&mut self, need: usize, step: usize) -> Result<()> {
        let len = self.map.bytes().len();
        let limit = need.div_ceil(step).saturating_mul(step).min(len);
        let old = self.write_limit;
        self.write_limit = limit;
        if let Err(e) = self.write_watermark() {
            self.write_limit = old;
            return Err(e);
        }
        Ok(())
    }
}

/// A partition's log. See the crate's `FORMAT.md` for the layout and recovery rules.
///
/// A log may hold no segment at all: a new one until its first append, and
/// one whose records were all trimmed by [`PartitionLog::trim_all`]. Its
/// position (last LSN, term history) is then in memory only, and whoever
/// trimmed it keeps it durable elsewhere and gives it back at open with
/// [`PartitionLog::resume_after`]. An idle partition costs no log file.
pub struct PartitionLog {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    config: LogConfig,
    gen: u64,
    segments: Vec<Segment>,
    history: Vec<(Term, Lsn)>,
    last_lsn: Lsn,
    last_term: Term,
    /// Reads (the scan at open, a [`LogReader`]) may have mapped pages in
    /// since the last [`PartitionLog::sync`], which drops them. Appends
    /// never do: they write through the file.
    read_mapped: AtomicBool,
}

fn segment_name(gen: u64, base: Lsn) -> String {
    format!("{gen:016x}-{:016x}.seg", base.0)
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (gen, base) = stem.split_once('-')?;
    if gen.len() != 16 || base.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(gen, 16).ok()?,
        u64::from_str_radix(base, 16).ok()?,
    ))
}

/// Adds `term` starting at `lsn` to a term history if it is a new term.
fn observe(history: &mut Vec<(Term, Lsn)>, term: Term, lsn: Lsn) {
    if history.last().is_none_or(|&(t, _)| term > t) {
        history.push((term, lsn));
    }
}

/// The size of the segment a reset log starts with, and of a log's first
/// segment when its first record fits.
const FIRST_SEGMENT_BYTES: u64 = 4096;

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, verifying every record. A torn tail is cut off;
    /// damage before the synced watermark is `Error::Corrupted`.
    pub fn open(backend: Arc<dyn Backend>, dir: &Path, config: LogConfig) -> Result<PartitionLog> {
        config.validate()?;
        backend.create_dir_all(dir)?;
        let mut found = Vec::new();
        for name in backend.list_dir(dir)? {
            if name.ends_with(".seg.tmp") {
                // A segment whose creation did not finish: it never held a record.
                backend.remove_file(&dir.join(&name))?;
            } else if let Some((gen, base)) = parse_segment_name(&name) {
                found.push((gen, base, name));
            }
        }
        found.sort();
        let mut log = PartitionLog {
            backend,
            dir: dir.to_path_buf(),
            config,
            gen: found.last().map_or(1, |f| f.0),
            segments: Vec::new(),
            history: Vec::new(),
            last_lsn: Lsn(0),
            last_term: Term(0),
            read_mapped: AtomicBool::new(true),
        };
        // Segments of an older generation are left over from an interrupted reset.
        for (gen, _, name) in &found {
            if *gen < log.gen {
                log.backend.remove_file(&dir.join(name))?;
            }
        }
        found.retain(|f| f.0 == log.gen);
        if found.is_empty() {
            // No file until the first append: a partition copy that never
            // gets a record (one a placement change moved away before data
            // came) costs no log file.
            return Ok(log);
        }
        let mut segments = Vec::with_capacity(found.len());
        for (gen, base, name) in found {
            segments.push(log.load_segment(gen, Lsn(base), name)?);
        }
        log.recover(segments)?;
        Ok(log)
    }

    fn corrupted(&self, file: &str, offset: usize, reason: impl Into<String>) -> Error {
        Error::Corrupted {
            dir: self.dir.clone(),
            file: file.to_string(),
            offset: offset as u64,
            reason: reason.into(),
        }
    }

    fn load_segment(&self, gen: u64, base: Lsn, name: String) -> Result<Segment> {
        let map = self.backend.open_mapped(&self.dir.join(&name))?;
        let bytes = map.bytes();
        let header = SegmentHeader::decode(bytes).map_err(|r| self.corrupted(&name, 0, r))?;
        if header.gen != gen
            || header.base_lsn != base
            || header.base_lsn.0 == 0
            || header.base_lsn.0 > u64::MAX / 2
            || header.segment_len != bytes.len() as u64
        {
            return Err(self.corrupted(&name, 0, "header does not match file name or size"));
        }
        let wm = decode_watermark(bytes)
            .ok_or_else(|| self.corrupted(&name, WM_OFFSET, "both watermark slots invalid"))?;
        let wm_end = usize::try_from(wm.synced_end).unwrap_or(usize::MAX);
        let limit = usize::try_from(wm.write_limit).unwrap_or(usize::MAX);
        if wm_end < DATA_START || wm_end > limit || limit > bytes.len() {
            return Err(self.corrupted(&name, WM_OFFSET, "watermark outside the segment"));
        }
        Ok(Segment {
            name,
            map,
            header,
            end: DATA_START,
            synced_end: wm_end,
            wm_seq: wm.seq,
            write_limit: limit,
        })
    }

    /// Scans every segment in order, verifying each record, and keeps the valid prefix.
    fn recover(&mut self, segments: Vec<Segment>) -> Result<()> {
        let first = &segments[0].header;
        let mut expected = first.base_lsn;
        let mut term = first.base_term;
        let mut history = first.terms.clone();
        let mut cut = false;
        for mut seg in segments {
            if cut || seg.header.base_lsn != expected {
                if !cut && seg.header.base_lsn < expected {
                    return Err(self.corrupted(&seg.name, 0, "segment overlaps the previous one"));
                }
                // The previous segment lost its unsynced tail: this one is beyond the cut.
                if seg.synced_end > DATA_START {
                    return Err(self.corrupted(&seg.name, 0, "synced segment after a gap"));
                }
                cut = true;
                drop(seg.map);
                self.backend.remove_file(&self.dir.join(&seg.name))?;
                continue;
            }
            let bytes = seg.map.bytes();
            let mut pos = DATA_START;
            let bad = loop {
                match read_frame(bytes, pos) {
                    Frame::Valid { lsn, term: t, len } if lsn == expected && t >= term => {
                        observe(&mut history, t, lsn);
                        term = t;
                        expected = Lsn(lsn.0 + 1);
                        pos += len;
                    }
                    Frame::Valid { .. } => break Some("record out of lsn or term sequence"),
                    Frame::Bad(reason) => break Some(reason),
                    Frame::End => break None,
                }
            };
            if pos < seg.synced_end {
                let reason = bad.unwrap_or("zero bytes inside the synced region");
                return Err(self.corrupted(&seg.name, pos, reason));
            }
            // Behind the end there may be the rest of a torn record whose first sector was
            // lost: zero it as well.
            Self::zero_tail(&mut seg, pos)?;
            cut |= bad.is_some();
            seg.end = pos;
            self.segments.push(seg);
        }
        self.history = history;
        self.last_lsn = Lsn(expected.0 - 1);
        self.last_term = term;
        Ok(())
    }

    /// Zeroes a torn tail (up to the last non-zero byte) and syncs it, so that stale frames
    /// behind it can never be taken for records after later appends.
    fn zero_tail(seg: &mut Segment, pos: usize) -> Result<()> {
        let bytes = seg.map.bytes();
        let limit = seg.write_limit.max(pos);
        let Some(last) = bytes[pos..limit].iter().rposition(|&b| b != 0) else {
            return Ok(());
        };
        seg.map.write_at(pos, &[&vec![0; last + 1]])?;
        seg.map.sync_range(pos, last + 1)
    }

    fn create_segment(
        &self,
        base: Lsn,
        base_term: Term,
        terms: Vec<(Term, Lsn)>,
        size: u64,
    ) -> Result<Segment> {
        let name = segment_name(self.gen, base);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let header = SegmentHeader {
            gen: self.gen,
            base_lsn: base,
            base_term,
            segment_len: size,
            terms,
        };
        let step = self.config.write_ahead_bytes as usize;
        let wm = Watermark {
            seq: 1,
            synced_end: DATA_START as u64,
            write_limit: step.min(size as usize) as u64,
        };
        let mut map = self.backend.create_mapped(&tmp, size)?;
        let made = (|| {
            let mut head = [0; DATA_START];
            header.encode(&mut head);
            encode_watermark(&mut head, wm);
            map.write_at(0, &[&head])?;
            map.sync_range(0, DATA_START)?;
            self.backend.rename(&tmp, &path)
        })();
        if let Err(e) = made {
            drop(map);
            let _ = self.backend.remove_file(&tmp);
            return Err(e);
        }
        Ok(Segment {
            name,
            map,
            header,
            end: DATA_START,
            synced_end: DATA_START,
            wm_seq: 1,
            write_limit: wm.write_limit as usize,
        })
    }

    /// Appends a record with the next LSN. The term must not go backwards.
    pub fn append(&mut self, term: Term, payload: &[u8]) -> Result<Lsn> {
        let lsn = Lsn(self.last_lsn.0 + 1);
        self.append_inner(lsn, term, payload)?;
        Ok(lsn)
    }

    /// Appends a record received from the primary; `lsn` must be `last_lsn() + 1`.
    pub fn append_at(&mut self, lsn: Lsn, term: Term, payload: &[u8]) -> Result<()> {
        let expected = Lsn(self.last_lsn.0 + 1);
        if lsn != expected {
            return Err(Error::LsnGap {
                dir: self.dir.clone(),
                expected,
                got: lsn,
            });
        }
        self.append_inner(lsn, term, payload)
    }

    fn append_inner(&mut self, lsn: Lsn, term: Term, payload: &[u8]) -> Result<()> {
        if payload.len() as u64 > self.config.record_bytes_max {
            return Err(Error::RecordTooLarge {
                len: payload.len() as u64,
                max: self.config.record_bytes_max,
            });
        }
        if term < self.last_term {
            return Err(Error::TermRegressed {
                dir: self.dir.clone(),
                last: self.last_term,
                got: term,
            });
        }
        let frame_len = FRAME_HEADER + payload.len();
        if self
            .segments
            .last()
            .is_none_or(|active| active.end + frame_len > active.map.bytes().len())
        {
            self.roll(frame_len)?;
        }
        let seg = self.segments.last_mut().expect("a log has a segment");
        let at = seg.end;
        if at + frame_len > seg.write_limit {
            seg.reserve(at + frame_len, self.config.write_ahead_bytes as usize)?;
        }
        seg.map
            .write_at(at, &[&frame_header(lsn, term, payload), payload])?;
        seg.end += frame_len;
        observe(&mut self.history, term, lsn);
        self.last_lsn = lsn;
        self.last_term = term;
        Ok(())
    }

    /// Starts a new segment, twice the size of the active one (up to the maximum), big enough
    /// for a frame of `frame_len` bytes. A log without a segment starts with one page when
    /// the frame fits (a partition that gets a little data keeps a little file), else with
    /// `segment_bytes_min`.
    fn roll(&mut self, frame_len: usize) -> Result<()> {
        let active = self.segments.last();
        let needed = ((DATA_START + frame_len) as u64).next_power_of_two();
        let size = match active {
            None if needed <= FIRST_SEGMENT_BYTES => FIRST_SEGMENT_BYTES,
            None => needed.max(self.config.segment_bytes_min),
            Some(a) => (a.map.bytes().len() as u64 * 2)
                .max(needed)
                .max(self.config.segment_bytes_min),
        }
        .min(self.config.segment_bytes_max);
        let keep = self.history.len().saturating_sub(MAX_TERMS);
        let terms = self.history[keep..].to_vec();
        // An active segment that holds no record has the new segment's base
        // LSN, hence its file name: the new segment's rename replaces that
        // file atomically, and it leaves the list here.
        let replaces_empty = active.is_some_and(|a| a.end == DATA_START);
        let seg = self.create_segment(Lsn(self.last_lsn.0 + 1), self.last_term, terms, size)?;
        if replaces_empty {
            self.segments.pop();
        }
        self.segments.push(seg);
        Ok(())
    }

    /// Index of the segment holding `lsn` (which must be within the log or just after it).
    fn segment_of(&self, lsn: Lsn) -> usize {
        self.segments
            .partition_point(|s| s.header.base_lsn <= lsn)
            .saturating_sub(1)
    }

    /// Offset of record `lsn` in segment `idx` (or the segment's end for the next LSN).
    fn offset_of(&self, idx: usize, lsn: Lsn) -> Result<usize> {
        let seg = &self.segments[idx];
        let bytes = &seg.map.bytes()[..seg.end];
        let mut pos = DATA_START;
        for _ in seg.header.base_lsn.0..lsn.0 {
            pos += frame_len_at(bytes, pos)
                .ok_or_else(|| self.corrupted(&seg.name, pos, "bad frame length"))?;
        }
        Ok(pos)
    }

    /// Reads records from `lsn` to the end, each verified before it is handed out.
    pub fn read_from(&self, lsn: Lsn) -> Result<LogReader<'_>> {
        if lsn < self.first_lsn() {
            return Err(Error::TrimmedAway {
                dir: self.dir.clone(),
                lsn,
                first: self.first_lsn(),
            });
        }
        if lsn.0 > self.last_lsn.0 + 1 {
            return Err(Error::BeyondEnd {
                dir: self.dir.clone(),
                lsn,
                last: self.last_lsn,
            });
        }
        let (seg, pos) = if self.segments.is_empty() {
            // Nothing to read: `lsn` is the next one.
            (0, DATA_START)
        } else {
            let seg = self.segment_of(lsn);
            (seg, self.offset_of(seg, lsn)?)
        };
        self.read_mapped.store(true, Ordering::Relaxed);
        Ok(LogReader {
            log: self,
            seg,
            pos,
            next: lsn,
            failed: false,
        })
    }

    /// Drops every record after `lsn` (a divergent suffix). Durable when it returns.
    pub fn truncate_after(&mut self, lsn: Lsn) -> Result<()> {
        if lsn >= self.last_lsn {
            return Ok(());
        }
        if lsn.0 + 1 < self.first_lsn().0 {
            return Err(Error::TrimmedAway {
                dir: self.dir.clone(),
                lsn,
                first: self.first_lsn(),
            });
        }
        let keep = self.segment_of(Lsn(lsn.0 + 1));
        // Newest first, so that a crash in between leaves a shorter but contiguous log.
        while self.segments.len() > keep + 1 {
            let name = &self.segments.last().expect("checked").name;
            self.backend.remove_file(&self.dir.join(name))?;
            self.segments.pop();
        }
        let pos = self.offset_of(keep, Lsn(lsn.0 + 1))?;
        let last_term = if lsn < self.segments[keep].header.base_lsn {
            self.segments[keep].header.base_term
        } else {
            let at = self.offset_of(keep, lsn)?;
            let bytes = self.segments[keep].map.bytes();
            Term(u64::from_le_bytes(
                bytes[at + 16..at + 24].try_into().expect("8"),
            ))
        };
        let seg = &mut self.segments[keep];
        let old_end = seg.end;
        // Lower the watermark first: a crash before the zeroes land leaves the old records,
        // valid and after the watermark, never zeroes inside the synced region.
        seg.synced_end = seg.synced_end.min(pos);
        seg.write_watermark()?;
        seg.map.write_at(pos, &[&vec![0; old_end - pos]])?;
        seg.map.sync_range(pos, old_end - pos)?;
        seg.end = pos;
        let mut history = self.segments[0].header.terms.clone();
        for &(t, l) in &self.history {
            if l <= lsn {
                observe(&mut history, t, l);
            }
        }
        self.history = history;
        self.last_lsn = lsn;
        self.last_term = last_term;
        Ok(())
    }

    /// Deletes whole segments whose records are all before `lsn`. The active segment stays.
    pub fn trim_before(&mut self, lsn: Lsn) -> Result<()> {
        while self.segments.len() > 1 && self.segments[1].header.base_lsn <= lsn {
            self.remove_oldest()?;
        }
        Ok(())
    }

    /// Deletes every segment: every record, and the log's position
    /// ([`Self::last_lsn`], [`Self::term_history`]), are durable elsewhere
    /// (a chunk file), and [`Self::resume_after`] gives the position back
    /// when the log is opened again. The next append starts a new segment.
    /// Oldest first, so that a crash in between leaves a log that still ends
    /// at the last record.
    pub fn trim_all(&mut self) -> Result<()> {
        while !self.segments.is_empty() {
            self.remove_oldest()?;
        }
        Ok(())
    }

    fn remove_oldest(&mut self) -> Result<()> {
        let seg = self.segments.remove(0);
        drop(seg.map);
        self.backend.remove_file(&self.dir.join(&seg.name))
    }

    /// Continues after `last_lsn` with `history` when the log ends before
    /// it: the position [`Self::trim_all`] left to be kept elsewhere. The
    /// log's records before it (left by a crash during `trim_all`) are
    /// covered too, and deleted. A log that reaches `last_lsn` is kept as it
    /// is: its own position is newer.
    pub fn resume_after(&mut self, last_lsn: Lsn, history: &[(Term, Lsn)]) -> Result<()> {
        if last_lsn <= self.last_lsn {
            return Ok(());
        }
        if last_lsn.0 > u64::MAX / 2 {
            return Err(Error::InvalidArgument(format!(
                "last lsn {last_lsn} out of range"
            )));
        }
        self.trim_all()?;
        self.history = history.to_vec();
        self.last_lsn = last_lsn;
        self.last_term = history.last().map_or(Term(0), |&(t, _)| t);
        Ok(())
    }

    /// Replaces the log by an empty one that continues at `next_lsn`, after `term` (used after
    /// a full copy from the peer). Durable when it returns.
    pub fn reset(&mut self, next_lsn: Lsn, term: Term) -> Result<()> {
        if next_lsn.0 > u64::MAX / 2 {
            return Err(Error::InvalidArgument(format!(
                "next lsn {next_lsn} out of range"
            )));
        }
        let next_lsn = Lsn(next_lsn.0.max(1));
        self.replace_segments(next_lsn, term, vec![(term, next_lsn)])
    }

    /// Replaces every segment by one empty, one-page segment of a new
    /// generation that continues at `next_lsn` after `term` with `history`.
    /// The new generation is durable before the old files go; reopen deletes
    /// an older generation left behind by a crash in between.
    fn replace_segments(
        &mut self,
        next_lsn: Lsn,
        term: Term,
        history: Vec<(Term, Lsn)>,
    ) -> Result<()> {
        self.gen += 1;
        // One page: an emptied log holds nothing, and the first append that
        // does not fit rolls to a segment of the size it needs.
        let seg = match self.create_segment(next_lsn, term, history.clone(), FIRST_SEGMENT_BYTES) {
            Ok(seg) => seg,
            Err(e) => {
                self.gen -= 1;
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.segments, vec![seg]);
        self.history = history;
        self.last_lsn = Lsn(next_lsn.0 - 1);
        self.last_term = term;
        // Reopen deletes older generations, so a failure here leaves nothing inconsistent.
        for seg in old {
            drop(seg.map);
            self.backend.remove_file(&self.dir.join(&seg.name))?;
        }
        Ok(())
    }

    /// First LSN of each term, oldest first. Survives trim and reopen (the newest 56 terms
    /// are carried in each segment header).
    pub fn term_history(&self) -> &[(Term, Lsn)] {
        &self.history
    }

    /// First retained LSN (`last_lsn() + 1` when the log is empty).
    pub fn first_lsn(&self) -> Lsn {
        self.segments
            .first()
            .map_or(Lsn(self.last_lsn.0 + 1), |s| s.header.base_lsn)
    }

    /// LSN of the last record (`Lsn(0)` for a new, empty log).
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Term of the last record (or the term given to `reset`).
    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// Makes every appended record durable (msync), oldest segment first, then records the
    /// synced watermark in each segment header.
    pub fn sync(&mut self) -> Result<()> {
        for seg in &mut self.segments {
            if seg.synced_end < seg.end {
                seg.map
                    .sync_range(seg.synced_end, seg.end - seg.synced_end)?;
                let old = seg.synced_end;
                seg.synced_end = seg.end;
                if let Err(e) = seg.write_watermark() {
                    seg.synced_end = old;
                    return Err(e);
                }
            }
        }
        if self.read_mapped.swap(false, Ordering::Relaxed) {
            for seg in &mut self.segments {
                let len = seg.map.bytes().len();
                seg.map.release(0, len);
            }
        }
        Ok(())
    }

    /// Bytes allocated on disk by the segments.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.map.bytes().len() as u64)
            .sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes the log and its directory (a partition copy that is no longer needed).
    pub fn remove(self) -> Result<()> {
        let PartitionLog {
            backend,
            dir,
            segments,
            ..
        } = self;
        drop(segments);
        backend.remove_dir_all(&dir)
    }
}

/// Iterator over records from an LSN; a record that fails verification ends it with
/// `Error::Corrupted`.
pub struct LogReader<'a> {
    log: &'a PartitionLog,
    seg: usize,
    pos: usize,
    next: Lsn,
    failed: bool,
}

impl<'a> Iterator for LogReader<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next > self.log.last_lsn {
            return None;
        }
        let segments = &self.log.segments;
        while self.pos >= segments[self.seg].end && self.seg + 1 < segments.len() {
            self.seg += 1;
            self.pos = DATA_START;
        }
        let seg = &segments[self.seg];
        let bytes = &seg.map.bytes()[..seg.end];
        match read_frame(bytes, self.pos) {
            Frame::Valid { lsn, term, len } if lsn == self.next => {
                let payload = &bytes[self.pos + FRAME_HEADER..self.pos + len];
                self.pos += len;
                self.next = Lsn(lsn.0 + 1);
                Some(Ok(Record { lsn, term, payload }))
            }
            other => {
                self.failed = true;
                let reason = match other {
                    Frame::Bad(r) => r,
                    _ => "record missing or out of sequence",
                };
                Some(Err(self.log.corrupted(&seg.name, self.pos, reason)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemBackend;

    /// A watermark write that fails does not use up its sequence number:
    /// the next one goes to the same slot, so the other slot keeps the last
    /// watermark that was written, one below. (Counting the failed one, the
    /// next write landed on that last valid slot, and a torn write there
    /// would have left only an older watermark.)
    #[test]
    fn a_failed_watermark_write_leaves_the_last_valid_slot_alone() {
        let backend = MemBackend::new();
        let dir = Path::new("/p");
        let mut log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        log.append(Term(1), b"a").unwrap();
        log.sync().unwrap();
        log.append(Term(1), b"b").unwrap();
        // The data's msync succeeds, the watermark's write fails.
        backend.fail_after(Some(1));
        assert!(log.sync().is_err());
        backend.fail_after(None);
        log.sync().unwrap();
        drop(log);
        let path = backend
            .paths()
            .into_iter()
            .find(|p| p.starts_with(dir))
            .unwrap();
        let bytes = backend.read(&path).unwrap();
        let seq = |slot: usize| {
            let at = WM_OFFSET + slot * WM_LEN / 2;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        let (a, b) = (seq(0), seq(1));
        assert_eq!(a.abs_diff(b), 1, "slots hold watermarks {a} and {b}");
    }

    fn small() -> LogConfig {
        LogConfig {
            segment_bytes_min: 4096,
            segment_bytes_max: 16384,
            record_bytes_max: 8192,
            write_ahead_bytes: 4096,
        }
    }

    fn render(log: &PartitionLog) -> String {
        let recs: Vec<String> = match log.read_from(log.first_lsn()) {
            Ok(it) => it
                .map(|r| match r {
                    Ok(r) => format!(
                        "{}:{}:{}",
                        r.lsn,
                        r.term,
                        String::from_utf8_lossy(r.payload)
                    ),
                    Err(e) => format!("ERR {e}"),
                })
                .collect(),
            Err(e) => vec![format!("ERR {e}")],
        };
        let hist: Vec<String> = log
            .history
            .iter()
            .map(|(t, l)| format!("{t}@{l}"))
            .collect();
        format!(
            "first={} last={} term={} segs={} hist=[{}] recs=[{}]",
            log.first_lsn(),
            log.last_lsn(),
            log.last_term(),
            log.segment_count(),
            hist.join(" "),
            recs.join(" ")
        )
    }

    /// Runs a script of log operations (one per `;`) and compares the final state, or the
    /// first error, with `expected`.
    fn check(script: &str, expected: &str) {
        let backend = MemBackend::new();
        let dir = Path::new("/p/7");
        let open = || PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        let mut log = open();
        for op in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let w: Vec<&str> = op.split_whitespace().collect();
            let n = |i: usize| w[i].parse::<u64>().unwrap();
            let r = match w[0] {
                "append" => {
                    let size = w.get(3).map_or(0, |s| s.parse::<usize>().unwrap());
                    let mut p = w[2].as_bytes().to_vec();
                    p.resize(p.len().max(size), b'.');
                    log.append(Term(n(1)), &p).map(|_| ())
                }
                "append_at" => log.append_at(Lsn(n(1)), Term(n(2)), w[3].as_bytes()),
                "truncate" => log.truncate_after(Lsn(n(1))),
                "trim" => log.trim_before(Lsn(n(1))),
                "trim_all" => log.trim_all(),
                // resume LSN TERM@LSN...
                "resume" => {
                    let history: Vec<(Term, Lsn)> = w[2..]
                        .iter()
                        .map(|h| {
                            let (t, l) = h.split_once('@').unwrap();
                            (Term(t.parse().unwrap()), Lsn(l.parse().unwrap()))
                        })
                        .collect();
                    log.resume_after(Lsn(n(1)), &history)
                }
                "reset" => log.reset(Lsn(n(1)), Term(n(2))),
                "sync" => log.sync(),
                "reopen" => {
                    drop(log);
                    log = open();
                    Ok(())
                }
                "crash" => {
                    drop(log);
                    backend.crash();
                    log = open();
                    Ok(())
                }
                "read" => log.read_from(Lsn(n(1))).map(|_| ()),
                other => panic!("unknown op {other}"),
            };
            if let Err(e) = r {
                assert_eq!(format!("error: {e}"), expected, "script: {script}");
                return;
            }
        }
        assert_eq!(render(&log), expected, "script: {script}");
    }

    #[test]
    fn scripts() {
        // No file until the first append.
        check("", "first=1 last=0 term=0 segs=0 hist=[] recs=[]");
        check("reopen", "first=1 last=0 term=0 segs=0 hist=[] recs=[]");
        // trim_all leaves no segment; the position is the caller's to keep:
        // in memory it goes on, and resume_after gives it back after a reopen.
        check(
            "append 1 a; append 2 b; trim_all; read 3; append 2 c",
            "first=3 last=3 term=2 segs=1 hist=[1@1 2@2] recs=[3:2:c]",
        );
        check(
            "append 1 a; append 2 b; trim_all; reopen",
            "first=1 last=0 term=0 segs=0 hist=[] recs=[]",
        );
        check(
            "append 1 a; append 2 b; trim_all; reopen; resume 2 1@1 2@2; append 3 c; reopen",
            "first=3 last=3 term=3 segs=1 hist=[1@1 2@2 3@3] recs=[3:3:c]",
        );
        check(
            "append 1 a; append 2 b; trim_all; append 2 c; resume 2 1@1 2@2",
            "first=3 last=3 term=2 segs=1 hist=[1@1 2@2] recs=[3:2:c]",
        );
        // A log that ends before the resumed position (a crash during
        // trim_all) is dropped: its records are covered.
        check(
            "append 1 a; append 2 b; resume 5 1@1 2@2 3@4",
            "first=6 last=5 term=3 segs=0 hist=[1@1 2@2 3@4] recs=[]",
        );
        check(
            "append 1 a; resume 5 1@1; read 5",
            "error: lsn 5 trimmed away from log /p/7: first retained is 6",
        );
        check(
            "append 1 a; append 1 b; append 2 c",
            "first=1 last=3 term=2 segs=1 hist=[1@1 2@3] recs=[1:1:a 2:1:b 3:2:c]",
        );
        check(
            "append 2 a; append 1 b",
            "error: term regressed in log /p/7: last term 2, got 1",
        );
        check(
            "append 1 a; append_at 3 1 c",
            "error: lsn gap in log /p/7: expected 2, got 3",
        );
        check(
            "append_at 1 1 a; append_at 2 3 b",
            "first=1 last=2 term=3 segs=1 hist=[1@1 3@2] recs=[1:1:a 2:3:b]",
        );
        check(
            "append 1 a; read 3",
            "error: lsn 3 is beyond the end of log /p/7: last is 1",
        );
        // Unsynced records survive a process kill (the page cache), not a power cut.
        check(
            "append 1 a; sync; append 1 b; reopen",
            "first=1 last=2 term=1 segs=1 hist=[1@1] recs=[1:1:a 2:1:b]",
        );
        check(
            "append 1 a; sync; append 2 b; crash",
            "first=1 last=1 term=1 segs=1 hist=[1@1] recs=[1:1:a]",
        );
        check(
            "append 1 a; append 2 b; append 2 c; truncate 1; reopen",
            "first=1 last=1 term=1 segs=1 hist=[1@1] recs=[1:1:a]",
        );
        check(
            "append 1 a; append 2 b; sync; truncate 1; crash; append 3 x",
            "first=1 last=2 term=3 segs=1 hist=[1@1 3@2] recs=[1:1:a 2:3:x]",
        );
        check(
            "append 1 a; truncate 0",
            "first=1 last=0 term=0 segs=1 hist=[] recs=[]",
        );
        check(
            "reset 50 4; append 4 a; reopen",
            "first=50 last=50 term=4 segs=1 hist=[4@50] recs=[50:4:a]",
        );
        check(
            "append 1 a; reset 50 4; crash",
            "first=50 last=49 term=4 segs=1 hist=[4@50] recs=[]",
        );
        check(
            "reset 50 4; append 5 a; truncate 49; reopen",
            "first=50 last=49 term=4 segs=1 hist=[4@50] recs=[]",
        );
        check(
            "reset 50 4; read 49",
            "error: lsn 49 trimmed away from log /p/7: first retained is 50",
        );
        check(
            "reset 50 4; truncate 10",
            "error: lsn 10 trimmed away from log /p/7: first retained is 50",
        );
        check(
            "append 1 x 2000; append 1 x 2000; append 2 x 1; append 3 y 3000; append 3 z 5000",
            "first=1 last=5 term=3 segs=3 hist=[1@1 2@3 3@4] recs=[1:1:x 2:1:x 3:2:x 4:3:y 5:3:z]"
                .replace("1:1:x ", &format!("1:1:x{} ", ".".repeat(1999)))
                .replace("2:1:x ", &format!("2:1:x{} ", ".".repeat(1999)))
                .replace("4:3:y ", &format!("4:3:y{} ", ".".repeat(2999)))
                .replace("5:3:z]", &format!("5:3:z{}]", ".".repeat(4999)))
                .as_str(),
        );
        check(
            "append 1 x 9000",
            "error: record of 9000 bytes exceeds the limit of 8192 bytes",
        );
        check(
            "reset 18446744073709551615 1",
            "error: invalid argument: next lsn 18446744073709551615 out of range",
        );
    }

    #[test]
    fn history_survives_trim_and_reopen() {
        let backend = MemBackend::new();
        let dir = Path::new("/p/1");
        let mut log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        for term in 1..=4 {
            log.append(Term(term), &[b'x'; 3000]).unwrap();
        }
        // Segments of 4 KiB (record 1), 8 KiB (records 2-3), 16 KiB (record 4).
        assert_eq!(log.segment_count(), 3);
        log.trim_before(Lsn(4)).unwrap();
        assert_eq!(log.first_lsn(), Lsn(4));
        let full = [
            (Term(1), Lsn(1)),
            (Term(2), Lsn(2)),
            (Term(3), Lsn(3)),
            (Term(4), Lsn(4)),
        ];
        assert_eq!(log.term_history(), &full[..]);
        assert!(matches!(
            log.read_from(Lsn(3)),
            Err(Error::TrimmedAway { .. })
        ));
        drop(log);
        let log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        assert_eq!(log.term_history(), &full[..]);
        assert_eq!(log.first_lsn(), Lsn(4));
        assert_eq!(backend.paths().len(), 1);
    }

    #[test]
    fn trim_all_leaves_no_file_and_the_log_goes_on() {
        let backend = MemBackend::new();
        let dir = Path::new("/p/1");
        let mut log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        for term in 1..=4 {
            log.append(Term(term), &[b'x'; 3000]).unwrap();
        }
        assert_eq!(backend.paths().len(), 3);
        let history = log.term_history().to_vec();
        log.trim_all().unwrap();
        assert_eq!(backend.paths().len(), 0);
        assert_eq!(log.disk_bytes(), 0);
        assert_eq!((log.first_lsn(), log.last_lsn()), (Lsn(5), Lsn(4)));
        log.sync().unwrap();
        drop(log);
        // Reopened, the caller gives the position back.
        let mut log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        assert_eq!(log.last_lsn(), Lsn(0));
        log.resume_after(Lsn(4), &history).unwrap();
        assert_eq!((log.last_lsn(), log.last_term()), (Lsn(4), Term(4)));
        assert_eq!(log.append(Term(4), b"next").unwrap(), Lsn(5));
        drop(log);
        let path = &backend.paths()[0];
        assert_eq!(backend.read(path).unwrap().len(), 4 << 10);
        let log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        assert_eq!((log.first_lsn(), log.last_lsn()), (Lsn(5), Lsn(5)));
        assert_eq!(log.term_history(), &history[..]);
        let read: Vec<_> = log
            .read_from(Lsn(5))
            .unwrap()
            .map(|r| r.unwrap().payload.to_vec())
            .collect();
        assert_eq!(read, vec![b"next".to_vec()]);
    }

    /// A first record bigger than the empty segment a reset leaves
    /// replaces that segment: no two segments share a base LSN (a file
    /// name), and trimming later deletes only what it should.
    #[test]
    fn a_record_bigger_than_an_empty_segment_replaces_it() {
        let backend = MemBackend::new();
        let dir = Path::new("/p/2");
        let mut log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        assert_eq!(log.append(Term(1), &[b'a'; 6000]).unwrap(), Lsn(1));
        assert_eq!((log.segment_count(), backend.paths().len()), (1, 1));
        log.append(Term(1), &[b'b'; 100]).unwrap();
        log.reset(Lsn(3), Term(2)).unwrap();
        assert_eq!((log.segment_count(), backend.paths().len()), (1, 1));
        assert_eq!(log.append(Term(2), &[b'c'; 6000]).unwrap(), Lsn(3));
        assert_eq!((log.segment_count(), backend.paths().len()), (1, 1));
        log.append(Term(2), &[b'd'; 6000]).unwrap();
        log.trim_before(Lsn(4)).unwrap();
        drop(log);
        let log = PartitionLog::open(Arc::new(backend.clone()), dir, small()).unwrap();
        assert_eq!((log.first_lsn(), log.last_lsn()), (Lsn(4), Lsn(4)));
        // A reset starts the history anew.
        assert_eq!(log.term_history(), &[(Term(2), Lsn(3))][..]);
    }

    #[test]
    fn segments_start_small_and_double() {
        let backend = Arc::new(MemBackend::new());
        let config = LogConfig {
            segment_bytes_min: 4096,
            segment_bytes_max: 32768,
            record_bytes_max: 1000,
            write_ahead_bytes: 8192,
        };
        let mut log = PartitionLog::open(backend, Path::new("/d"), config).unwrap();
        assert_eq!(log.disk_bytes(), 0);
        let sizes = |log: &PartitionLog| -> Vec<usize> {
            log.segments.iter().map(|s| s.map.bytes().len()).collect()
        };
        for _ in 0..200 {
            log.append(Term(1), &[7u8; 1000]).unwrap();
        }
        let s = sizes(&log);
        assert_eq!(&s[..4], &[4096, 8192, 16384, 32768]);
        assert!(s[4..].iter().all(|&x| x == 32768));
        assert_eq!(log.disk_bytes(), s.iter().sum::<usize>() as u64);
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            LogConfig {
                segment_bytes_min: 1000,
                ..LogConfig::default()
            },
            LogConfig {
                segment_bytes_max: 1 << 10,
                ..LogConfig::default()
            },
            LogConfig {
                record_bytes_max: 64 << 20,
                ..LogConfig::default()
            },
        ];
        for config in bad {
            let r = PartitionLog::open(Arc::new(MemBackend::new()), Path::new("/d"), config);
            assert!(matches!(r, Err(Error::InvalidConfig(_))));
        }
    }

    #[test]
    fn remove_deletes_the_directory() {
        let backend = MemBackend::new();
        let open = |p: &str| {
            PartitionLog::open(Arc::new(backend.clone()), &Path::new("/n").join(p), small())
                .unwrap()
        };
        let mut a = open("p1");
        a.append(Term(1), b"x").unwrap();
        let b = open("p2");
        assert_eq!(backend.list_subdirs(Path::new("/n")).unwrap(), ["p1", "p2"]);
        b.remove().unwrap();
        assert_eq!(backend.list_subdirs(Path::new("/n")).unwrap(), ["p1"]);
        assert_eq!(backend.paths().len(), 1);
        drop(a);
        assert_eq!(open("p1").last_lsn(), Lsn(1));
    }

    #[test]
    fn log_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PartitionLog>();
        send_sync::<crate::ChunkFile>();
    }

    #[test]
    fn segment_names_parse() {
        assert_eq!(parse_segment_name(&segment_name(3, Lsn(77))), Some((3, 77)));
        assert_eq!(
            parse_segment_name("0000000000000001-0000000000000001.seg.tmp"),
            None
        );
        assert_eq!(parse_segment_name("zz-1.seg"), None);
    }
}
