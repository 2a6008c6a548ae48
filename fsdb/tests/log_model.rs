//! Model-based tests of the partition log against a `Vec`: append, sync, kill, power cut,
//! truncate, trim and read; torn tails at every byte offset; random bit flips.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsdb::{Error, LogConfig, Lsn, MemBackend, PartitionLog, Term};
use proptest::prelude::*;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_min: 4096,
        segment_bytes_max: 16384,
        record_bytes_max: 4096,
        write_ahead_bytes: 4096,
    }
}

const DIR: &str = "/data/p3";

fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
}

fn open(backend: &MemBackend) -> Result<PartitionLog, Error> {
    PartitionLog::open(Arc::new(backend.clone()), Path::new(DIR), config())
}

/// What the log must hold: records from LSN 1, of which the first `first - 1` are trimmed.
#[derive(Default)]
struct Model {
    records: Vec<(Term, Vec<u8>)>,
    first: u64,
    synced: u64,
}

impl Model {
    fn history(&self) -> Vec<(Term, Lsn)> {
        let mut h: Vec<(Term, Lsn)> = Vec::new();
        for (i, (t, _)) in self.records.iter().enumerate() {
            if h.last().is_none_or(|l| *t > l.0) {
                h.push((*t, Lsn(i as u64 + 1)));
            }
        }
        h
    }

    /// After a power cut the log is a prefix holding at least everything synced.
    fn crashed_to(&mut self, log: &PartitionLog) {
        let last = log.last_lsn().0;
        assert!(
            last >= self.synced,
            "lost synced records: last {last}, synced {}",
            self.synced
        );
        assert!(last <= self.records.len() as u64);
        self.records.truncate(last as usize);
        self.first = self.first.min(last + 1);
    }

    fn check(&self, log: &PartitionLog) {
        assert_eq!(log.last_lsn(), Lsn(self.records.len() as u64));
        assert!(log.first_lsn().0 <= self.first, "trimmed too much");
        let last_term = self.records.last().map_or(Term(0), |r| r.0);
        assert_eq!(log.last_term(), last_term);
        assert_eq!(log.term_history(), &self.history()[..]);
        let from = log.first_lsn();
        let got: Vec<_> = log.read_from(from).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got.len() as u64, self.records.len() as u64 + 1 - from.0);
        for r in got {
            let (t, p) = &self.records[r.lsn.0 as usize - 1];
            assert_eq!((r.term, r.payload), (*t, &p[..]), "lsn {}", r.lsn);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append { bump: bool, len: usize },
    Sync,
    Kill,
    PowerCut,
    TornPowerCut(u64),
    Truncate(u64),
    Trim(u64),
    Read(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::bool::weighted(0.1), 0usize..3000).prop_map(|(bump, len)| Op::Append { bump, len }),
        2 => Just(Op::Sync),
        1 => Just(Op::Kill),
        1 => Just(Op::PowerCut),
        1 => any::<u64>().prop_map(Op::TornPowerCut),
        1 => (0u64..6).prop_map(Op::Truncate),
        1 => (0u64..30).prop_map(Op::Trim),
        1 => (0u64..30).prop_map(Op::Read),
    ]
}

fn run(ops: &[Op]) {
    let backend = MemBackend::new();
    let mut log = open(&backend).unwrap();
    let mut m = Model {
        first: 1,
        ..Model::default()
    };
    let mut term = Term(1);
    for op in ops {
        match op {
            Op::Append { bump, len } => {
                if *bump {
                    term = Term(term.0 + 1);
                }
                let lsn = m.records.len() as u64 + 1;
                let p = payload(lsn, *len);
                assert_eq!(log.append(term, &p).unwrap(), Lsn(lsn));
                m.records.push((term, p));
            }
            Op::Sync => {
                log.sync().unwrap();
                m.synced = m.records.len() as u64;
            }
            Op::Kill => {
                drop(log);
                log = open(&backend).unwrap();
            }
            Op::PowerCut | Op::TornPowerCut(_) => {
                drop(log);
                match op {
                    Op::TornPowerCut(seed) => backend.crash_torn(*seed),
                    _ => backend.crash(),
                }
                log = open(&backend).unwrap();
                m.crashed_to(&log);
                term = term.max(log.last_term());
            }
            Op::Truncate(back) => {
                let lsn = (m.records.len() as u64)
                    .saturating_sub(*back)
                    .max(m.first - 1);
                log.truncate_after(Lsn(lsn)).unwrap();
                m.records.truncate(lsn as usize);
                m.synced = m.synced.min(lsn);
            }
            Op::Trim(k) => {
                let lsn = (m.first + k).min(m.records.len() as u64 + 1);
                log.trim_before(Lsn(lsn)).unwrap();
                assert!(log.first_lsn().0 <= lsn);
                m.first = lsn;
            }
            Op::Read(k) => {
                let lsn = log.first_lsn().0 + k;
                let r = log.read_from(Lsn(lsn));
                if lsn > m.records.len() as u64 + 1 {
                    assert!(matches!(r, Err(Error::BeyondEnd { .. })));
                } else {
                    let n = r.unwrap().inspect(|r| assert!(r.is_ok())).count() as u64;
                    assert_eq!(n, m.records.len() as u64 + 1 - lsn);
                }
                if log.first_lsn().0 > 1 {
                    let r = log.read_from(Lsn(log.first_lsn().0 - 1));
                    assert!(matches!(r, Err(Error::TrimmedAway { .. })));
                }
            }
        }
        m.check(&log);
    }
    drop(log);
    let log = open(&backend).unwrap();
    m.check(&log);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

fn segment_path() -> PathBuf {
    Path::new(DIR).join("0000000000000001-0000000000000001.seg")
}

/// Builds 5 records in one segment, the first 4 synced; returns the backend and the
/// offset and length of the 5th (unsynced) frame.
fn five_records(sizes: [usize; 5]) -> (MemBackend, usize, usize) {
    let backend = MemBackend::new();
    let mut log = PartitionLog::open(
        Arc::new(backend.clone()),
        Path::new(DIR),
        LogConfig::default(),
    )
    .unwrap();
    for (i, &n) in sizes.iter().enumerate() {
        if i == 4 {
            log.sync().unwrap();
        }
        log.append(Term(1), &payload(i as u64 + 1, n)).unwrap();
    }
    let start = 1024 + sizes[..4].iter().map(|n| n + 24).sum::<usize>();
    (backend, start, sizes[4] + 24)
}

#[test]
fn torn_last_record_at_every_byte_offset_keeps_every_whole_record() {
    let sizes = [10, 0, 300, 7, 200];
    for fill in [0u8, 0xAB] {
        for cut in 0..=sizes[4] + 24 {
            let (backend, start, len) = five_records(sizes);
            let tail = vec![fill; len - cut];
            backend.poke(&segment_path(), start + cut, &tail);
            let log = open_default(&backend);
            let whole = if cut == len { 5 } else { 4 };
            assert_eq!(log.last_lsn(), Lsn(whole), "cut at {cut}, fill {fill:#x}");
            let got: Vec<_> = log.read_from(Lsn(1)).unwrap().map(|r| r.unwrap()).collect();
            for r in &got {
                assert_eq!(
                    r.payload,
                    &payload(r.lsn.0, sizes[r.lsn.0 as usize - 1])[..]
                );
            }
            drop(log);
            // The cut tail is zeroed, so appending again and reopening is clean.
            let mut log = open_default(&backend);
            log.append(Term(2), b"after").unwrap();
            drop(log);
            let log = open_default(&backend);
            assert_eq!(log.last_lsn(), Lsn(whole + 1));
        }
    }
}

fn open_default(backend: &MemBackend) -> PartitionLog {
    PartitionLog::open(
        Arc::new(backend.clone()),
        Path::new(DIR),
        LogConfig::default(),
    )
    .unwrap()
}

#[test]
fn damage_inside_synced_records_is_corruption_not_a_cut() {
    let sizes = [10, 0, 300, 7, 200];
    let (_, start, _) = five_records(sizes);
    for at in (1024..start).step_by(5) {
        let (backend, _, _) = five_records(sizes);
        let mut b = backend.read(&segment_path()).unwrap()[at..at + 1].to_vec();
        b[0] ^= 0x04;
        backend.poke(&segment_path(), at, &b);
        match open(&backend).err() {
            Some(Error::Corrupted { dir, file, .. }) => {
                assert_eq!(dir, Path::new(DIR));
                assert!(file.ends_with(".seg"));
            }
            other => panic!("byte {at}: expected corruption, got {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A flipped bit anywhere is either cut as a torn tail or reported as corruption; a
    /// wrong payload is never served and synced records are never silently dropped.
    #[test]
    fn bit_flips_are_never_served(
        sizes in prop::collection::vec(0usize..2500, 1..20),
        synced_frac in 0.0f64..=1.0,
        file_pick in any::<prop::sample::Index>(),
        pos_pick in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let backend = MemBackend::new();
        let mut log = open(&backend).unwrap();
        let synced = (sizes.len() as f64 * synced_frac) as usize;
        for (i, &n) in sizes.iter().enumerate() {
            if i == synced {
                log.sync().unwrap();
            }
            log.append(Term(1 + i as u64 / 4), &payload(i as u64 + 1, n)).unwrap();
        }
        if synced == sizes.len() {
            log.sync().unwrap();
        }
        drop(log);
        let paths = backend.paths();
        let path = file_pick.get(&paths);
        let mut bytes = backend.read(path).unwrap();
        let at = pos_pick.index(bytes.len());
        bytes[at] ^= 1 << bit;
        backend.poke(path, at, &bytes[at..at + 1]);
        match open(&backend) {
            Ok(log) => {
                prop_assert!(log.last_lsn().0 >= synced as u64, "synced records dropped");
                for r in log.read_from(Lsn(1)).unwrap() {
                    let r = r.unwrap();
                    let i = r.lsn.0 as usize - 1;
                    prop_assert_eq!(r.payload, &payload(r.lsn.0, sizes[i])[..]);
                    prop_assert_eq!(r.term, Term(1 + i as u64 / 4));
                }
            }
            Err(e) => prop_assert!(e.is_corruption(), "unexpected error {e}"),
        }
    }
}

/// Found by `log_matches_model`: a torn first record after a power cut, then appends that
/// roll into a second segment.
#[test]
fn frozen_torn_first_record_then_roll() {
    use Op::*;
    run(&[
        Append {
            bump: false,
            len: 2314,
        },
        TornPowerCut(12751706100533173948),
        Append {
            bump: false,
            len: 973,
        },
        Append {
            bump: false,
            len: 1024,
        },
        Append {
            bump: false,
            len: 1004,
        },
        Append {
            bump: false,
            len: 0,
        },
    ]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A run of garbage written over a segment never panics recovery: the log opens as a
    /// prefix of what was written (holding everything synced) or reports corruption.
    #[test]
    fn garbage_in_a_segment_never_panics(
        n in 1u64..12,
        sync in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 1..200),
        at in any::<prop::sample::Index>(),
    ) {
        let backend = MemBackend::new();
        let mut log = open(&backend).unwrap();
        for lsn in 1..=n {
            log.append(Term(1), &payload(lsn, 100)).unwrap();
        }
        if sync {
            log.sync().unwrap();
        }
        drop(log);
        let path = segment_path();
        let len = backend.read(&path).unwrap().len();
        let at = at.index(len);
        let end = (at + garbage.len()).min(len);
        backend.poke(&path, at, &garbage[..end - at]);
        match open(&backend) {
            Ok(log) => {
                prop_assert!(!sync || log.last_lsn() == Lsn(n));
                for r in log.read_from(Lsn(1)).unwrap() {
                    let r = r.unwrap();
                    prop_assert_eq!(r.payload, &payload(r.lsn.0, 100)[..]);
                }
            }
            Err(e) => prop_assert!(e.is_corruption(), "{}", e),
        }
    }
}
