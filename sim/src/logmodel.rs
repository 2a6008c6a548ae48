//! The partition log's segment policy, replayed: how much disk and resident memory a log of a given write pattern holds.
//!
//! The rules are fsdb's (FORMAT.md, "Size policy" and "Watermark"): a new
//! log has no segment; its first record opens one 4 KiB page if it fits
//! there, else a segment of `segment_bytes_min`; a record that does not fit
//! opens a segment twice the active one (up to `segment_bytes_max`, at
//! least big enough for the record); a record never spans segments; pages
//! are reserved (and faulted in) in steps of `write_ahead_bytes`, a small
//! segment whole at creation; a seal trims every record and every segment
//! (the log's position is in the chunk file), and the log starts again as
//! a new one.
//! Resident bytes are an upper bound: a node's periodic sync drops synced
//! pages from resident memory. `tests` check the replay against the real
//! `PartitionLog`.

/// Bytes before the first record of a segment (its header).
pub const SEGMENT_HEADER_BYTES: u64 = 1024;
/// Bytes of a record's frame header.
pub const FRAME_HEADER_BYTES: u64 = 24;
/// The first segment of a log when its first record fits.
pub const FIRST_SEGMENT_BYTES: u64 = 4096;

/// The log's size policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPolicy {
    pub segment_bytes_min: u64,
    pub segment_bytes_max: u64,
    pub write_ahead_bytes: u64,
}

impl From<&crate::profile::Policy> for LogPolicy {
    fn from(p: &crate::profile::Policy) -> LogPolicy {
        LogPolicy {
            segment_bytes_min: p.log_segment_bytes_min,
            segment_bytes_max: p.log_segment_bytes_max,
            write_ahead_bytes: p.log_write_ahead_bytes,
        }
    }
}

/// How a partition's log is written: `records_per_period` records of
/// `payload_bytes` each, then a seal (which trims), `periods` times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogPattern {
    pub payload_bytes: u64,
    pub records_per_period: u64,
    pub periods: u64,
    /// False: nothing is ever sealed (all records stay in the log).
    pub seals: bool,
}

/// Peak footprint of one partition's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogFootprint {
    /// Bytes of segment files (preallocated: what `du` counts).
    pub disk_bytes: u64,
    /// Bytes of segments reserved and faulted in (resident while mapped).
    pub resident_bytes: u64,
    /// Bytes of records (frames) in the log at the peak.
    pub record_bytes: u64,
}

struct Segment {
    size: u64,
    end: u64,
    limit: u64,
}

impl Segment {
    fn new(size: u64, step: u64) -> Segment {
        Segment {
            size,
            end: SEGMENT_HEADER_BYTES,
            limit: step.min(size),
        }
    }
}

/// Replays `pattern` and returns the peak footprint (just before a seal, or
/// at the end when nothing seals). At most 64 periods are replayed: by then
/// the active segment has stopped growing.
pub fn replay(policy: &LogPolicy, pattern: &LogPattern) -> LogFootprint {
    let step = policy.write_ahead_bytes;
    let frame = FRAME_HEADER_BYTES + pattern.payload_bytes;
    let mut segments: Vec<Segment> = Vec::new();
    let mut peak = LogFootprint::default();
    let periods = if pattern.seals {
        pattern.periods.min(64)
    } else {
        1
    };
    let records = if pattern.seals {
        pattern.records_per_period
    } else {
        pattern.records_per_period * pattern.periods
    };
    for _ in 0..periods {
        let mut in_log = 0;
        for _ in 0..records {
            let active = segments.last();
            if active.is_none_or(|a| a.end + frame > a.size) {
                let needed = (SEGMENT_HEADER_BYTES + frame).next_power_of_two();
                let size = match active {
                    None if needed <= FIRST_SEGMENT_BYTES => FIRST_SEGMENT_BYTES,
                    None => needed.max(policy.segment_bytes_min),
                    Some(a) => (a.size * 2).max(needed).max(policy.segment_bytes_min),
                }
                .min(policy.segment_bytes_max);
                segments.push(Segment::new(size, step));
            }
            let seg = segments.last_mut().expect("a log has a segment");
            seg.end += frame;
            if seg.end > seg.limit {
                seg.limit = seg.end.div_ceil(step).saturating_mul(step).min(seg.size);
            }
            in_log += frame;
        }
        let now = LogFootprint {
            disk_bytes: segments.iter().map(|s| s.size).sum(),
            resident_bytes: segments.iter().map(|s| s.limit).sum(),
            record_bytes: in_log,
        };
        peak.disk_bytes = peak.disk_bytes.max(now.disk_bytes);
        peak.resident_bytes = peak.resident_bytes.max(now.resident_bytes);
        peak.record_bytes = peak.record_bytes.max(now.record_bytes);
        if pattern.seals {
            // trim_all: every segment goes.
            segments.clear();
        }
    }
    peak
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fsdb::{LogConfig, MmapBackend, PartitionLog, Term};

    use super::*;

    const POLICY: LogPolicy = LogPolicy {
        segment_bytes_min: 64 << 10,
        segment_bytes_max: 1 << 20,
        write_ahead_bytes: 256 << 10,
    };

    /// The real log's peak disk bytes under the same pattern (real files).
    fn real(pattern: &LogPattern) -> u64 {
        let config = LogConfig {
            segment_bytes_min: POLICY.segment_bytes_min,
            segment_bytes_max: POLICY.segment_bytes_max,
            record_bytes_max: 256 << 10,
            write_ahead_bytes: POLICY.write_ahead_bytes,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(Arc::new(MmapBackend), dir.path(), config).unwrap();
        let payload = vec![7u8; pattern.payload_bytes as usize];
        let mut peak = 0;
        let periods = if pattern.seals { pattern.periods } else { 1 };
        let records = if pattern.seals {
            pattern.records_per_period
        } else {
            pattern.records_per_period * pattern.periods
        };
        for _ in 0..periods {
            for _ in 0..records {
                log.append(Term(1), &payload).unwrap();
            }
            peak = peak.max(log.disk_bytes());
            if pattern.seals {
                log.trim_all().unwrap();
            }
        }
        peak
    }

    fn check(payload_bytes: u64, records_per_period: u64, periods: u64, seals: bool) {
        let pattern = LogPattern {
            payload_bytes,
            records_per_period,
            periods,
            seals,
        };
        let model = replay(&POLICY, &pattern);
        assert_eq!(model.disk_bytes, real(&pattern), "{pattern:?}");
        assert!(model.resident_bytes <= model.disk_bytes);
        assert!(model.record_bytes <= model.disk_bytes);
    }

    #[test]
    fn replay_matches_the_real_log() {
        check(100, 10, 1, false);
        check(700, 100, 1, false);
        check(700, 100, 20, true);
        check(5000, 24, 30, true);
        check(60_000, 50, 12, true);
        check(1000, 1, 300, false);
        // A first record larger than the first (or emptied) segment.
        check(100_000, 3, 4, true);
    }

    #[test]
    fn a_busy_log_peaks_at_its_grown_segments() {
        let big = LogPattern {
            payload_bytes: 10_000,
            records_per_period: 200,
            periods: 10,
            seals: true,
        };
        // 2 MB per period: segments grow to the 1 MiB maximum within each
        // period (a seal then empties the log), so the peak holds them all.
        let f = replay(&POLICY, &big);
        assert!(f.disk_bytes >= f.record_bytes, "{f:?}");
        assert_eq!(f.record_bytes, 200 * 10_024);
        // Resident memory follows the write-ahead steps, not the whole file.
        let small = replay(
            &POLICY,
            &LogPattern {
                payload_bytes: 100,
                records_per_period: 1,
                periods: 1,
                seals: false,
            },
        );
        // A record that fits the new log's first page stays there.
        assert_eq!(small.disk_bytes, 4096);
        assert_eq!(small.resident_bytes, 4096);
    }
}
