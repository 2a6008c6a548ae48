//! One series in memory: the compressed head chunk, the out-of-order overlay, and where its sealed chunks are.
//!
//! Write rule (what makes ingest idempotent and bounded):
//! - a sample newer than the series' newest goes to the head chunk (a
//!   streaming encoder, compressed as it is appended);
//! - a sample at or before the newest, but within the out-of-order window
//!   behind it, goes to the overlay (a sorted map): it overwrites whatever the
//!   series held at that timestamp;
//! - an older sample is rejected and counted by the caller.
//!
//! Read rule: sealed chunks in seal order, then the head, then the overlay;
//! for equal timestamps the later source wins. Head samples never collide
//! with sealed ones (they are newer than everything before them), so the
//! common read is a plain concatenation.

use std::collections::BTreeMap;

use fsdb::codec::ChunkEncoder;

/// What happened to one written sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Appended,
    Overlaid,
    Rejected,
}

/// Where a series has chunks in one sealed chunk file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SealedRef {
    /// Index into the partition's chunk files (seal order).
    pub file: u32,
    /// Number of the series' first chunk in that file
    /// ([`fsdb::ChunkFile::series_chunks`]): reads need no index search.
    pub first: u32,
    pub min_ts: i64,
    pub max_ts: i64,
}

/// A series' sealed chunk references. Most series have one (one seal, or
/// a few merged into one file); it is kept inline, so that a read finds
/// it without following a pointer, and without a heap block of its own.
pub(crate) type SealedRefs = smallvec::SmallVec<[SealedRef; 1]>;

/// The write path's state of one series: two cache lines, aligned to
/// them. `repr(C)` keeps `newest` last, in the second line, so that
/// [`Series::prefetch`] can name both lines.
#[repr(C, align(128))]
pub(crate) struct Series {
    /// Where the canonical key bytes (see series.rs) are in the
    /// partition's key arena: keys of series created together sit together,
    /// so a batch's key comparisons walk memory in order.
    pub key_at: u32,
    pub key_len: u32,
    pub head: ChunkEncoder,
    /// Boxed: 8 bytes per series instead of 24, and most series have none.
    #[allow(clippy::box_collection)]
    pub overlay: Option<Box<BTreeMap<i64, f64>>>,
    /// Newest timestamp of the series (`i64::MIN` while it has none).
    pub newest: i64,
}

impl Series {
    pub fn new(key_at: u32, key_len: u32) -> Series {
        Series {
            key_at,
            key_len,
            head: ChunkEncoder::new(),
            overlay: None,
            newest: i64::MIN,
        }
    }

    /// Starts loading both cache lines of the series' state. A prefetch of
    /// the first line alone left the write stalling on `newest`, in the
    /// second: the CPU's adjacent-line prefetch did not bring it along.
    #[inline]
    pub fn prefetch(&self) {
        crate::prefetch::prefetch(self);
        crate::prefetch::prefetch(&self.newest);
    }

    /// Starts loading the head chunk's end, where the next write goes.
    #[inline]
    pub fn prefetch_head(&self) {
        if let Some(last) = self.head.bytes().last() {
            crate::prefetch::prefetch(last);
        }
    }

    #[inline]
    pub fn write(&mut self, ts: i64, value: f64, ooo_window_ms: i64) -> Outcome {
        if ts > self.newest {
            self.head.push(ts, value);
            self.newest = ts;
            return Outcome::Appended;
        }
        if ts < self.newest.saturating_sub(ooo_window_ms) {
            return Outcome::Rejected;
        }
        self.overlay
            .get_or_insert_with(Default::default)
            .insert(ts, value);
        Outcome::Overlaid
    }

    /// True when the head chunk or the overlay holds samples (something to seal).
    pub fn has_unsealed(&self) -> bool {
        !self.head.is_empty() || self.overlay.is_some()
    }

    /// Appends the unsealed samples in `start..=end` (head, then overlay) to
    /// `runs`, each as its own sorted run.
    pub fn read_unsealed(&self, start: i64, end: i64, runs: &mut Runs) {
        read_parts(&self.head, self.overlay.as_deref(), start, end, runs);
    }

    /// Samples in the head chunk and the overlay, at most what
    /// [`Self::read_unsealed`] appends.
    pub fn unsealed_len(&self) -> usize {
        parts_len(&self.head, self.overlay.as_deref())
    }

    /// Memory held by this series' samples: the head chunk (its encoder
    /// state and its buffer) and the overlay.
    pub fn sample_bytes(&self) -> usize {
        parts_bytes(&self.head, self.overlay.as_deref())
    }

    /// Memory held by this series' identity and bookkeeping (the head
    /// encoder's state is counted with the samples; where its sealed chunks
    /// are is counted by the index).
    pub fn index_bytes(&self) -> usize {
        std::mem::size_of::<Series>() - std::mem::size_of::<ChunkEncoder>()
    }
}

/// Appends the samples of a head chunk and an overlay in `start..=end` to
/// `runs`, each as its own sorted run (the overlay's win).
pub(crate) fn read_parts(
    head: &ChunkEncoder,
    overlay: Option<&BTreeMap<i64, f64>>,
    start: i64,
    end: i64,
    runs: &mut Runs,
) {
    if start > end {
        return;
    }
    let span = head.first_ts().zip(head.last_ts());
    if span.is_some_and(|(first, last)| first <= end && last >= start) {
        runs.begin();
        // The head encoder's bytes are decodable at any moment; a failure
        // here is a broken invariant of the codec, not bad input.
        let decoded = fsdb::codec::decode_into(head.bytes(), &mut runs.samples);
        debug_assert!(decoded.is_ok(), "head chunk does not decode");
        runs.end_filtered(start, end);
    }
    if let Some(overlay) = overlay {
        runs.begin();
        runs.samples
            .extend(overlay.range(start..=end).map(|(&t, &v)| (t, v)));
        runs.end_filtered(start, end);
    }
}

/// Samples in a head chunk and an overlay.
pub(crate) fn parts_len(head: &ChunkEncoder, overlay: Option<&BTreeMap<i64, f64>>) -> usize {
    head.len() + overlay.map_or(0, BTreeMap::len)
}

/// Memory held by a head chunk and an overlay.
pub(crate) fn parts_bytes(head: &ChunkEncoder, overlay: Option<&BTreeMap<i64, f64>>) -> usize {
    std::mem::size_of::<ChunkEncoder>()
        + head.heap_bytes()
        + overlay.map_or(0, |o| {
            std::mem::size_of::<BTreeMap<i64, f64>>() + o.len() * 40
        })
}

/// Sorted runs of samples in priority order (later runs win on equal
/// timestamps), merged into one strictly increasing sequence.
#[derive(Default)]
pub(crate) struct Runs {
    pub samples: Vec<(i64, f64)>,
    run_start: usize,
    overlapping: bool,
}

impl Runs {
    pub fn clear(&mut self) {
        self.samples.clear();
        self.run_start = 0;
        self.overlapping = false;
    }

    pub fn run_start(&self) -> usize {
        self.run_start
    }

    /// Marks the start of a new run (push its samples to `samples` next).
    pub fn begin(&mut self) {
        self.run_start = self.samples.len();
    }

    /// Ends the run, keeping only its samples in `start..=end`.
    pub fn end_filtered(&mut self, start: i64, end: i64) {
        let run = &self.samples[self.run_start..];
        let lo = run.partition_point(|s| s.0 < start);
        let hi = run.partition_point(|s| s.0 <= end);
        let (from, to) = (self.run_start + lo, self.run_start + hi);
        self.samples.truncate(to);
        self.samples.drain(self.run_start..from);
        if self.run_start > 0 && self.samples.len() > self.run_start {
            let prev_last = self.samples[self.run_start - 1].0;
            if self.samples[self.run_start].0 <= prev_last {
                self.overlapping = true;
            }
        }
    }

    /// The merged samples, owned: a long series' buffer is handed over
    /// rather than copied (a copy of 8 640 samples costs as much as decoding
    /// them, mostly in page faults), a short one is copied so that the
    /// buffer is reused.
    pub fn take(&mut self) -> Vec<(i64, f64)> {
        const HAND_OVER_SAMPLES: usize = 4096;
        self.finish();
        if self.samples.len() < HAND_OVER_SAMPLES {
            return self.samples.clone();
        }
        let mut samples = std::mem::take(&mut self.samples);
        samples.shrink_to_fit();
        samples
    }

    /// The merged samples: sorted, one per timestamp, the latest run winning.
    pub fn finish(&mut self) -> &[(i64, f64)] {
        if self.overlapping {
            // Stable: equal timestamps keep run order, so the last one wins.
            self.samples.sort_by_key(|s| s.0);
            let mut w = 0;
            for r in 0..self.samples.len() {
                if w > 0 && self.samples[w - 1].0 == self.samples[r].0 {
                    self.samples[w - 1] = self.samples[r];
                } else {
                    self.samples[w] = self.samples[r];
                    w += 1;
                }
            }
            self.samples.truncate(w);
            self.overlapping = false;
        }
        &self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(runs: &[&[(i64, f64)]], start: i64, end: i64, expected: &[(i64, f64)]) {
        let mut r = Runs::default();
        for run in runs {
            r.begin();
            r.samples.extend_from_slice(run);
            r.end_filtered(start, end);
        }
        assert_eq!(r.finish(), expected);
    }

    #[test]
    fn a_series_state_is_two_cache_lines_and_prefetch_names_both() {
        assert_eq!(std::mem::size_of::<Series>(), 128);
        assert!(std::mem::offset_of!(Series, newest) >= 64);
    }

    #[test]
    fn runs_merge_with_later_winning() {
        check(
            &[&[(1, 1.0), (2, 1.0)], &[(3, 2.0)]],
            0,
            9,
            &[(1, 1.0), (2, 1.0), (3, 2.0)],
        );
        check(
            &[&[(1, 1.0), (2, 1.0)], &[(2, 2.0)]],
            0,
            9,
            &[(1, 1.0), (2, 2.0)],
        );
        check(
            &[&[(5, 1.0)], &[(1, 2.0), (5, 2.0)], &[(1, 3.0)]],
            0,
            9,
            &[(1, 3.0), (5, 2.0)],
        );
        check(
            &[&[(1, 1.0), (2, 1.0), (3, 1.0)], &[(2, 2.0)]],
            2,
            2,
            &[(2, 2.0)],
        );
        check(&[&[(1, 1.0)], &[], &[(0, 2.0)]], 1, 9, &[(1, 1.0)]);
    }

    #[test]
    fn writes_follow_the_window() {
        let mut s = Series::new(0, 1);
        let w = |s: &mut Series, ts| s.write(ts, 1.0, 100);
        assert_eq!(w(&mut s, 1000), Outcome::Appended);
        assert_eq!(w(&mut s, 1000), Outcome::Overlaid);
        assert_eq!(w(&mut s, 900), Outcome::Overlaid);
        assert_eq!(w(&mut s, 899), Outcome::Rejected);
        assert_eq!(w(&mut s, 1001), Outcome::Appended);
        assert_eq!(w(&mut s, 901), Outcome::Overlaid);
        assert_eq!(w(&mut s, i64::MIN), Outcome::Rejected);
    }
}
