//! Fault injection through the memory backend: an I/O error at every operation of a workload
//! (open, appends that roll segments, syncs, trims) surfaces as an error, and a reopen sees a
//! prefix of what was appended that includes everything synced.

use std::path::Path;
use std::sync::Arc;

use fsdb::{Error, LogConfig, Lsn, MemBackend, PartitionLog, Term};

const DIR: &str = "/data/p9";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_min: 4096,
        segment_bytes_max: 8192,
        record_bytes_max: 4096,
        write_ahead_bytes: 4096,
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn * 397 % 1500) as usize;
    (0..len).map(|i| (lsn as usize + i) as u8).collect()
}

fn open(backend: &MemBackend) -> fsdb::Result<PartitionLog> {
    PartitionLog::open(Arc::new(backend.clone()), Path::new(DIR), config())
}

/// How far a workload got before its first error.
#[derive(Debug, Default)]
struct Progress {
    appended: u64,
    synced: u64,
    trimmed_to: u64,
}

fn workload(backend: &MemBackend, p: &mut Progress) -> fsdb::Result<()> {
    let mut log = open(backend)?;
    for lsn in 1..=40u64 {
        log.append(Term(1 + lsn / 10), &payload(lsn))?;
        p.appended = lsn;
        if lsn % 7 == 0 {
            log.sync()?;
            p.synced = lsn;
        }
        if lsn % 15 == 0 {
            log.trim_before(Lsn(lsn - 5))?;
            p.trimmed_to = lsn - 5;
        }
    }
    log.sync()?;
    p.synced = p.appended;
    Ok(())
}

fn verify(log: &PartitionLog, p: &Progress, power_cut: bool) {
    let last = log.last_lsn().0;
    if power_cut {
        assert!(last >= p.synced && last <= p.appended, "last {last}, {p:?}");
    } else {
        assert_eq!(last, p.appended, "{p:?}");
    }
    assert!(log.first_lsn().0 <= p.trimmed_to.max(1) || log.first_lsn().0 <= last + 1);
    for r in log.read_from(log.first_lsn()).unwrap() {
        let r = r.unwrap();
        assert_eq!(r.payload, &payload(r.lsn.0)[..]);
        assert_eq!(r.term, Term(1 + r.lsn.0 / 10));
    }
}

#[test]
fn an_io_error_at_any_operation_leaves_a_consistent_log() {
    let clean = MemBackend::new();
    workload(&clean, &mut Progress::default()).unwrap();
    let total = clean.ops();
    assert!(
        total > 20,
        "workload too small to be interesting: {total} ops"
    );
    for power_cut in [false, true] {
        for n in 0..total {
            let backend = MemBackend::new();
            backend.fail_after(Some(n));
            let mut p = Progress::default();
            let err = workload(&backend, &mut p).expect_err("an injected fault must surface");
            assert!(matches!(err, Error::Injected { .. }), "op {n}: {err}");
            backend.fail_after(None);
            if power_cut {
                backend.crash();
            }
            let mut log = open(&backend).unwrap_or_else(|e| panic!("reopen after fault {n}: {e}"));
            verify(&log, &p, power_cut);
            // The log keeps working after the fault.
            let next = log.last_lsn().0 + 1;
            log.append(Term(1 + next / 10), &payload(next)).unwrap();
            log.sync().unwrap();
        }
    }
}

#[test]
fn a_full_disk_is_an_error_when_a_segment_is_created() {
    let backend = MemBackend::new();
    backend.set_capacity(Some(4096 + 8192));
    let mut log = open(&backend).unwrap();
    let mut appended = 0;
    let err = loop {
        match log.append(Term(1 + (appended + 1) / 10), &payload(appended + 1)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 1000, "capacity never reached");
    };
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(log.last_lsn(), Lsn(appended));
    assert_eq!(log.read_from(Lsn(1)).unwrap().count() as u64, appended);
    log.sync().unwrap();
    drop(log);
    backend.crash();
    let log = open(&backend).unwrap();
    verify(
        &log,
        &Progress {
            appended,
            synced: appended,
            trimmed_to: 0,
        },
        false,
    );
}

fn versioned(lsn: u64, term: Term) -> Vec<u8> {
    let mut p = payload(lsn);
    p.extend_from_slice(&term.0.to_le_bytes());
    p
}

/// Appends, truncates a suffix and rewrites it under a new term, then resets.
fn divergence_workload(backend: &MemBackend) -> fsdb::Result<()> {
    let mut log = open(backend)?;
    for lsn in 1..=30 {
        log.append(Term(2), &versioned(lsn, Term(2)))?;
    }
    log.sync()?;
    log.truncate_after(Lsn(12))?;
    for lsn in 13..=20 {
        log.append_at(Lsn(lsn), Term(5), &versioned(lsn, Term(5)))?;
    }
    log.sync()?;
    log.reset(Lsn(100), Term(6))?;
    log.append(Term(6), &versioned(100, Term(6)))?;
    log.sync()
}

#[test]
fn faults_during_truncate_and_reset_leave_a_consistent_log() {
    let clean = MemBackend::new();
    divergence_workload(&clean).unwrap();
    for power_cut in [false, true] {
        for n in 0..clean.ops() {
            let backend = MemBackend::new();
            backend.fail_after(Some(n));
            assert!(divergence_workload(&backend).is_err(), "op {n}");
            backend.fail_after(None);
            if power_cut {
                backend.crash();
            }
            let log = open(&backend).unwrap_or_else(|e| panic!("reopen after fault {n}: {e}"));
            let mut last_term = Term(0);
            for r in log.read_from(log.first_lsn()).unwrap() {
                let r = r.unwrap();
                assert!(r.term >= last_term, "op {n}: term went back at {}", r.lsn);
                assert_eq!(r.payload, &versioned(r.lsn.0, r.term)[..], "op {n}");
                last_term = r.term;
            }
            // An interrupted truncation leaves a prefix of the old log (the caller truncates
            // again after reopen); an interrupted reset leaves the old or the new log.
            let last = log.last_lsn().0;
            assert!(
                last <= 30 || (99..=100).contains(&last),
                "op {n}: last {last}"
            );
        }
    }
}
