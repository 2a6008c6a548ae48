//! Hundreds of idle partitions cost one small segment each and no file handles.
//! (Alone in its test binary so that no other test opens files meanwhile.)

use std::sync::Arc;

use fsdb::{LogConfig, MmapBackend, PartitionLog, Term};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn idle_partitions_hold_no_fds_and_64_kib_each() {
    let tmp = tempfile::tempdir().unwrap();
    let before = open_fds();
    let mut logs = Vec::new();
    for p in 0..100 {
        let dir = tmp.path().join(format!("p{p}"));
        let mut log =
            PartitionLog::open(Arc::new(MmapBackend), &dir, LogConfig::default()).unwrap();
        log.append(Term(1), b"one small batch").unwrap();
        log.sync().unwrap();
        logs.push(log);
    }
    assert!(
        open_fds() <= before + 2,
        "fds grew from {before} to {}",
        open_fds()
    );
    let disk: u64 = logs.iter().map(|l| l.disk_bytes()).sum();
    assert_eq!(disk, 100 * 64 * 1024);
}
