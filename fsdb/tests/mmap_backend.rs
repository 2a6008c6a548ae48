//! The real backend on real files: preallocation, segment growth, recovery from bytes
//! damaged on disk, chunk files and retention.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use fsdb::{
    delete_expired, Backend, ChunkFile, ChunkFileWriter, Error, LogConfig, Lsn, MemBackend,
    MmapBackend, PartitionLog, Term,
};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_min: 4096,
        segment_bytes_max: 16384,
        record_bytes_max: 4096,
        write_ahead_bytes: 4096,
    }
}

fn open(dir: &Path) -> PartitionLog {
    PartitionLog::open(Arc::new(MmapBackend), dir, config()).unwrap()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn log_on_real_files_is_preallocated_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p17");
    let mut log = open(&dir);
    for i in 0..40u64 {
        log.append(Term(1 + i / 20), &vec![i as u8; 1000]).unwrap();
    }
    log.sync().unwrap();
    let files = segment_files(&dir);
    assert_eq!(files.len(), log.segment_count());
    let mut on_disk = 0;
    for f in &files {
        let meta = std::fs::metadata(f).unwrap();
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "{} not preallocated",
            f.display()
        );
        on_disk += meta.len();
    }
    assert_eq!(on_disk, log.disk_bytes());
    log.truncate_after(Lsn(30)).unwrap();
    log.trim_before(Lsn(10)).unwrap();
    let first = log.first_lsn();
    drop(log);
    let mut log = open(&dir);
    assert_eq!(
        (log.first_lsn(), log.last_lsn(), log.last_term()),
        (first, Lsn(30), Term(2))
    );
    assert_eq!(log.term_history(), &[(Term(1), Lsn(1)), (Term(2), Lsn(21))]);
    for r in log.read_from(first).unwrap() {
        let r = r.unwrap();
        assert_eq!(r.payload, &vec![(r.lsn.0 - 1) as u8; 1000][..]);
    }
    log.reset(Lsn(500), Term(7)).unwrap();
    drop(log);
    let log = open(&dir);
    assert_eq!((log.first_lsn(), log.last_lsn()), (Lsn(500), Lsn(499)));
    assert_eq!(segment_files(&dir).len(), 1);
    assert_eq!(MmapBackend.list_subdirs(tmp.path()).unwrap(), ["p17"]);
    log.remove().unwrap();
    assert!(MmapBackend.list_subdirs(tmp.path()).unwrap().is_empty());
}

#[test]
fn damage_on_disk_is_cut_when_torn_and_reported_when_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p2");
    let mut log = open(&dir);
    log.append(Term(1), b"synced").unwrap();
    log.sync().unwrap();
    log.append(Term(1), b"unsynced").unwrap();
    drop(log);
    let seg = &segment_files(&dir)[0];
    let file = OpenOptions::new().write(true).open(seg).unwrap();
    // Second record starts at 1024 + 24 + 6: damage its payload (a torn write).
    file.write_all_at(b"XX", 1024 + 30 + 26).unwrap();
    let log = open(&dir);
    assert_eq!(log.last_lsn(), Lsn(1));
    drop(log);
    file.write_all_at(b"XX", 1024 + 26).unwrap();
    let err = PartitionLog::open(Arc::new(MmapBackend), &dir, config()).err();
    match err {
        Some(Error::Corrupted { dir: d, offset, .. }) => {
            assert_eq!((d, offset), (dir.clone(), 1024));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn chunk_files_on_real_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, max_ts) in [("a.chunk", 100), ("b.chunk", 1000)] {
        let mut w = ChunkFileWriter::new(3, Lsn(max_ts as u64));
        w.add(b"vm1/cpu", 0, max_ts, 10, name.as_bytes()).unwrap();
        w.finish(&MmapBackend, &dir.join(name)).unwrap();
    }
    let file = ChunkFile::open(&MmapBackend, &dir.join("b.chunk")).unwrap();
    assert_eq!(file.covered_lsn(), Lsn(1000));
    let got: Vec<_> = file
        .lookup(b"vm1/cpu", 500, 600)
        .map(|m| file.chunk_data(&m).unwrap())
        .collect();
    assert_eq!(got, [&b"b.chunk"[..]]);
    let report = delete_expired(&MmapBackend, dir, 500).unwrap();
    assert_eq!(report.deleted, [dir.join("a.chunk")]);
    assert_eq!(MmapBackend.list_dir(dir).unwrap(), ["b.chunk"]);
}

/// Records written through the file (pwrite) and read through the map, synced
/// or not yet (a sync every 150 KB), read back intact, before and after a
/// reopen.
#[test]
fn records_written_through_the_file_read_back_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p3");
    let config = LogConfig {
        segment_bytes_min: 1 << 20,
        segment_bytes_max: 1 << 20,
        record_bytes_max: 8192,
        write_ahead_bytes: 1 << 20,
    };
    let mut log = PartitionLog::open(Arc::new(MmapBackend), &dir, config.clone()).unwrap();
    let record = |i: u64| -> Vec<u8> { (0..3000).map(|j| (i * 7 + j) as u8).collect() };
    for i in 1..=100 {
        log.append(Term(1), &record(i)).unwrap();
        if i % 50 == 0 {
            log.sync().unwrap();
        }
    }
    let check = |log: &PartitionLog| {
        let got: Vec<Vec<u8>> = log
            .read_from(Lsn(1))
            .unwrap()
            .map(|r| r.unwrap().payload.to_vec())
            .collect();
        assert_eq!(got.len(), 100);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p, &record(i as u64 + 1), "record {}", i + 1);
        }
    };
    check(&log);
    drop(log);
    check(&PartitionLog::open(Arc::new(MmapBackend), &dir, config).unwrap());
}

/// Which pages of each mapping of a file under `dir` are in this process's
/// page tables (the "present" bit of `/proc/self/pagemap`, which a process
/// may read for itself), by file name.
#[cfg(target_os = "linux")]
fn present_pages(dir: &Path) -> Vec<(String, Vec<bool>)> {
    let smaps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let dir = dir.to_str().unwrap();
    let mut out = Vec::new();
    for line in smaps.lines().filter(|l| l.contains(dir)) {
        let range = line.split_whitespace().next().unwrap();
        let (from, to) = range.split_once('-').unwrap();
        let from = u64::from_str_radix(from, 16).unwrap();
        let to = u64::from_str_radix(to, 16).unwrap();
        let pages = (from / 4096..to / 4096)
            .map(|page| {
                let mut entry = [0u8; 8];
                pagemap.read_exact_at(&mut entry, page * 8).unwrap();
                u64::from_le_bytes(entry) >> 63 == 1
            })
            .collect();
        let name = line.split_whitespace().last().unwrap();
        out.push((name.rsplit('/').next().unwrap().to_string(), pages));
    }
    out.sort();
    out
}

/// Appends and syncs write through the file: no page of any segment is in
/// the process's page tables after them. Reads map pages in (a catch-up, the
/// replay at open); the next sync drops them. Pages that appends kept mapped
/// were half of a busy node's log memory, and faulting them in a quarter of
/// the ingest hot path's time.
#[test]
#[cfg(target_os = "linux")]
fn appends_map_no_page_and_a_sync_drops_what_reads_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p6");
    let config = LogConfig {
        segment_bytes_min: 16384,
        segment_bytes_max: 65536,
        record_bytes_max: 4096,
        write_ahead_bytes: 16384,
    };
    let mut log = PartitionLog::open(Arc::new(MmapBackend), &dir, config).unwrap();
    let record = |i: u64| -> Vec<u8> { (0..1500).map(|j| (i * 5 + j) as u8).collect() };
    let none_present = |log: &PartitionLog| {
        let pages = present_pages(&dir);
        assert_eq!(pages.len(), log.segment_count(), "{pages:?}");
        for (name, present) in pages {
            assert!(!present.iter().any(|&p| p), "{name}: {present:?}");
        }
    };
    for i in 1..=60 {
        log.append(Term(1), &record(i)).unwrap();
    }
    assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
    none_present(&log);
    log.sync().unwrap();
    none_present(&log);
    let read = |log: &PartitionLog| -> Vec<Vec<u8>> {
        log.read_from(Lsn(1))
            .unwrap()
            .map(|r| r.unwrap().payload.to_vec())
            .collect()
    };
    assert_eq!(read(&log), (1..=60).map(record).collect::<Vec<_>>());
    let pages = present_pages(&dir);
    assert!(pages.iter().all(|(_, p)| p.iter().any(|&p| p)), "{pages:?}");
    log.sync().unwrap();
    none_present(&log);
    // Dropped pages read back from the page cache, and appends go on.
    log.append(Term(1), &record(61)).unwrap();
    assert_eq!(read(&log), (1..=61).map(record).collect::<Vec<_>>());
}

/// A write lands in the file and the map at once; one that would run past
/// the end is refused (a `pwrite` there would grow the file), on both
/// backends.
#[test]
fn mapped_files_are_written_at_offsets_and_never_grown() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f.seg");
    let backends: [Arc<dyn Backend>; 2] = [Arc::new(MmapBackend), Arc::new(MemBackend::new())];
    for backend in backends {
        let mut map = backend.create_mapped(&path, 8192).unwrap();
        map.write_at(4094, &[b"ab", b"cd"]).unwrap();
        assert_eq!(&map.bytes()[4094..4098], b"abcd");
        map.write_at(8190, &[b"e", b"f"]).unwrap();
        assert_eq!(&map.bytes()[8190..], b"ef");
        for (at, parts) in [(8191, [&b"g"[..], b"h"]), (usize::MAX, [b"", b"i"])] {
            let refused = map.write_at(at, &parts);
            assert!(
                matches!(refused, Err(Error::InvalidArgument(_))),
                "{refused:?}"
            );
        }
        assert_eq!(map.bytes().len(), 8192);
        drop(map);
        if let Ok(meta) = std::fs::metadata(&path) {
            assert_eq!(meta.len(), 8192);
            assert_eq!(&std::fs::read(&path).unwrap()[4094..4098], b"abcd");
        }
    }
}

#[test]
fn a_first_record_larger_than_the_first_segment_replaces_it() {
    // The empty first segment and its successor share a base LSN, hence a
    // file name: the log must not keep both (trimming then removed the file
    // twice and failed with NotFound).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p3");
    let mut log = open(&dir);
    let big = vec![7u8; 4000];
    for _ in 0..4 {
        log.append(Term(1), &big).unwrap();
    }
    assert_eq!(log.first_lsn(), Lsn(1));
    log.trim_before(Lsn(4)).unwrap();
    let names = segment_files(&dir);
    drop(log);
    let log = open(&dir);
    assert_eq!(segment_files(&dir), names);
    assert_eq!(log.last_lsn(), Lsn(4));
    let lsns: Vec<Lsn> = log
        .read_from(log.first_lsn())
        .unwrap()
        .map(|r| r.unwrap().lsn)
        .collect();
    assert_eq!(lsns.last(), Some(&Lsn(4)));
}
