//! Hundreds of idle partitions cost at most one page of log each, and one
//! file handle per segment (appends write through it) until the log is
//! trimmed. (Alone in its test binary so that no other test opens
//! files meanwhile.)

use std::sync::Arc;

use fsdb::{LogConfig, MmapBackend, PartitionLog, Term};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn idle_partitions_hold_at_most_one_fd_and_one_page_each() {
    let tmp = tempfile::tempdir().unwrap();
    let before = open_fds();
    let mut logs = Vec::new();
    for p in 0..100 {
        let dir = tmp.path().join(format!("p{p}"));
        let mut log =
            PartitionLog::open(Arc::new(MmapBackend), &dir, LogConfig::default()).unwrap();
        // Half never get a record (a copy moved away before data came), half one small batch.
        if p % 2 == 0 {
            log.append(Term(1), b"one small batch").unwrap();
            log.sync().unwrap();
        }
        logs.push(log);
    }
    // One fd for each of the 50 logs with a record, none for the others.
    let held = open_fds() - before;
    assert!((50..=52).contains(&held), "{held} fds for 50 segments");
    // One page for a log with a small record, no file for one without.
    let disk: Vec<u64> = logs.iter().map(|l| l.disk_bytes()).collect();
    assert!(disk.iter().step_by(2).all(|&d| d == 4096), "{disk:?}");
    assert!(disk.iter().skip(1).step_by(2).all(|&d| d == 0), "{disk:?}");
    // An append that does not fit the page rolls to a segment of
    // `segment_bytes_min`, and so does a big first record.
    let min = LogConfig::default().segment_bytes_min;
    for (log, before) in logs.iter_mut().zip([4096, 0]) {
        log.append(Term(1), &[7; 4000]).unwrap();
        assert_eq!(log.disk_bytes(), before + min);
    }
    // A trimmed log (its records sealed elsewhere) holds none.
    for log in &mut logs {
        log.trim_all().unwrap();
    }
    assert!(open_fds() <= before + 2, "{} fds left", open_fds() - before);
}
