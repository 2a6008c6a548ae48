//! The store against a `BTreeMap` model, across seals, reopens, truncation and full copies.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use fsdb::{LogConfig, MemBackend};
use proptest::prelude::*;
use store::batch;
use store::{
    Error, Lsn, MatchOp, Matcher, PartitionId, SealPolicy, SeriesData, SeriesKey, Source, Store,
    StoreConfig, Term,
};

const WINDOW_MS: i64 = 10;
const P: PartitionId = PartitionId(7);

fn keys() -> Vec<SeriesKey> {
    vec![
        SeriesKey::new("vm1", "cpu", &[]).unwrap(),
        SeriesKey::new("vm1", "mem", &[("dc", "eu")]).unwrap(),
        SeriesKey::new("vm2", "cpu", &[("dc", "us")]).unwrap(),
        SeriesKey::new("host.a", "cpu", &[("dc", "eu"), ("rack", "1")]).unwrap(),
    ]
}

fn config(backend: Arc<MemBackend>) -> StoreConfig {
    StoreConfig {
        dir: PathBuf::from("/data"),
        ooo_window_ms: WINDOW_MS,
        log: LogConfig {
            segment_bytes_min: 4096,
            segment_bytes_max: 1 << 20,
            record_bytes_max: 1 << 16,
            write_ahead_bytes: 4096,
        },
        backend,
        seal: SealPolicy::default(),
    }
}

fn open(backend: &Arc<MemBackend>) -> Store {
    let (store, report) = Store::open(config(backend.clone())).unwrap();
    assert!(report.corrupted.is_empty(), "{report:?}");
    store
}

/// A select's answer: labels and (timestamp, value bits), sorted.
type Answer = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

/// One write: (series index, timestamp, value).
type Write = Vec<(usize, i64, f64)>;

fn encode(writes: &Write) -> Vec<u8> {
    let keys = keys();
    let mut b = batch::BatchBuilder::new();
    for &(k, ts, v) in writes {
        b.push_key(&keys[k], ts, v).unwrap();
    }
    let mut out = Vec::new();
    b.encode(&mut out);
    out
}

/// The reference: what the store must hold.
#[derive(Default, Clone)]
struct Model {
    data: BTreeMap<(usize, i64), u64>,
    newest: HashMap<usize, i64>,
    rejected: u64,
}

impl Model {
    /// Applies a batch as the store does: series in first-appearance order,
    /// each series' samples in order.
    fn apply(&mut self, writes: &Write) {
        let mut order: Vec<usize> = Vec::new();
        for w in writes {
            if !order.contains(&w.0) {
                order.push(w.0);
            }
        }
        for k in order {
            for &(_, ts, v) in writes.iter().filter(|w| w.0 == k) {
                let newest = self.newest.get(&k).copied().unwrap_or(i64::MIN);
                if ts > newest {
                    self.newest.insert(k, ts);
                } else if ts < newest.saturating_sub(WINDOW_MS) {
                    self.rejected += 1;
                    continue;
                }
                self.data.insert((k, ts), v.to_bits());
            }
        }
    }

    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> Answer {
        let keys = keys();
        let mut out = Vec::new();
        if start > end {
            return out;
        }
        for (k, key) in keys.iter().enumerate() {
            let labels = key.labels();
            if !matchers.iter().all(|m| m.matches_labels(&labels)) {
                continue;
            }
            let samples: Vec<(i64, u64)> = self
                .data
                .range((k, start)..=(k, end))
                .map(|(&(_, t), &v)| (t, v))
                .collect();
            if !samples.is_empty() {
                out.push((labels.into_pairs(), samples));
            }
        }
        out.sort();
        out
    }
}

fn normalize(got: Vec<SeriesData>) -> Answer {
    let mut out: Vec<_> = got
        .into_iter()
        .map(|s| {
            (
                s.labels.into_pairs(),
                s.samples.iter().map(|(t, v)| (*t, v.to_bits())).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

fn matcher_sets() -> Vec<Vec<Matcher>> {
    let m = |n: &str, op, v: &str| Matcher::new(n, op, v).unwrap();
    vec![
        vec![],
        vec![m("resource", MatchOp::Equal, "vm1")],
        vec![
            m("__name__", MatchOp::Equal, "cpu"),
            m("dc", MatchOp::NotEqual, "eu"),
        ],
        vec![
            m("__name__", MatchOp::Regex, "c.*|mem"),
            m("resource", MatchOp::NotRegex, "vm2"),
        ],
        vec![
            m("dc", MatchOp::Regex, "eu|us"),
            m("rack", MatchOp::Equal, ""),
        ],
        vec![m("resource", MatchOp::Equal, "nope")],
    ]
}

fn check_all(store: &Store, model: &Model) {
    let p = store.partition(P).unwrap();
    let source = store.source(&[P]);
    for (i, matchers) in matcher_sets().iter().enumerate() {
        for (start, end) in [(i64::MIN, i64::MAX), (0, 20), (15, 15), (30, 10)] {
            assert_eq!(
                normalize(source.select(matchers, start, end)),
                model.select(matchers, start, end),
                "matchers #{i} in {start}..={end}"
            );
        }
    }
    assert_eq!(p.stats().rejected, model.rejected);
}

#[derive(Clone, Debug)]
enum Op {
    Write(Write),
    Seal,
    Reopen,
    /// Truncate after this fraction (per mille) of the log.
    Truncate(u64),
    /// Full copy into a fresh store, which must answer the same.
    Copy,
}

fn arb_op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        (-100i32..100).prop_map(|v| v as f64 / 4.0),
        Just(f64::NAN),
        any::<f64>(),
    ];
    let write = proptest::collection::vec((0usize..4, 0i64..60, value), 1..12).prop_map(Op::Write);
    prop_oneof![
        8 => write,
        1 => Just(Op::Seal),
        1 => Just(Op::Reopen),
        1 => (0u64..1000).prop_map(Op::Truncate),
        1 => Just(Op::Copy),
    ]
}

fn run(ops: &[Op]) {
    let backend = Arc::new(MemBackend::new());
    let mut store = open(&backend);
    store.create_partition(P).unwrap();
    let mut model = Model::default();
    let mut log: Vec<Write> = Vec::new();
    for op in ops {
        match op {
            Op::Write(w) => {
                let p = store.partition(P).unwrap();
                p.append(Term(1), &encode(w)).unwrap();
                model.apply(w);
                log.push(w.clone());
            }
            Op::Truncate(per_mille) => {
                let p = store.partition(P).unwrap();
                let keep = log.len() as u64 * per_mille / 1000;
                let covered = p.stats().covered_lsn.0;
                match p.truncate_after(Lsn(keep)) {
                    Err(Error::NeedsFullCopy { .. }) => assert!(keep < covered),
                    Err(e) => panic!("truncate_after({keep}): {e}"),
                    Ok(()) => {
                        assert!(keep >= covered);
                        log.truncate(keep as usize);
                        model = Model::default();
                        log.iter().for_each(|w| model.apply(w));
                    }
                }
            }
            Op::Copy => {
                let (lsn, term, batches) = store.partition(P).unwrap().snapshot().unwrap();
                let other = open(&Arc::new(MemBackend::new()));
                let copy = other.install_snapshot(P, lsn, term, &batches).unwrap();
                assert_eq!(copy.digest(), store.partition(P).unwrap().digest());
                let mut fresh = model.clone();
                fresh.rejected = 0; // counters are not part of a copy
                check_all(&other, &fresh);
            }
            Op::Seal => {
                store.partition(P).unwrap().seal().unwrap();
            }
            Op::Reopen => {
                let digest = store.partition(P).unwrap().digest();
                drop(store);
                store = open(&backend);
                assert_eq!(store.partition(P).unwrap().digest(), digest);
            }
        }
        check_all(&store, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(arb_op(), 1..16)) {
        run(&ops);
    }
}

#[test]
fn overwrite_out_of_order_and_too_old() {
    run(&[
        Op::Write(vec![
            (0, 50, 1.0),
            (0, 50, 2.0),
            (0, 45, 3.0),
            (0, 39, 4.0),
            (1, 5, 1.0),
        ]),
        Op::Seal,
        Op::Write(vec![(0, 45, 5.0), (0, 41, 6.0), (0, 51, 7.0)]),
        Op::Reopen,
        Op::Write(vec![(0, 40, 8.0), (0, 30, 9.0)]),
        Op::Seal,
        Op::Reopen,
    ]);
}

fn history() -> Vec<Write> {
    (0..6)
        .map(|i| {
            vec![
                (i % 4, 10 * i as i64, i as f64),
                (0, 10 * i as i64 - 15, -1.0),
            ]
        })
        .collect()
}

#[test]
fn truncate_after_equals_the_prefix() {
    let (a_backend, b_backend) = (Arc::new(MemBackend::new()), Arc::new(MemBackend::new()));
    let (a, b) = (open(&a_backend), open(&b_backend));
    let (pa, pb) = (
        a.create_partition(P).unwrap(),
        b.create_partition(P).unwrap(),
    );
    let mut model = Model::default();
    for (i, w) in history().iter().enumerate() {
        pa.append(Term(1), &encode(w)).unwrap();
        if i < 3 {
            pb.append(Term(1), &encode(w)).unwrap();
            model.apply(w);
        }
    }
    assert_ne!(pa.digest(), pb.digest());
    pa.truncate_after(Lsn(3)).unwrap();
    assert_eq!(pa.last_lsn(), Lsn(3));
    assert_eq!(pa.digest(), pb.digest());
    assert_eq!(pa.stats().rejected, pb.stats().rejected);
    check_all(&a, &model);
    // The log continues from the truncation point, in a newer term.
    pa.append(Term(2), &encode(&history()[5])).unwrap();
    assert_eq!(pa.last_lsn(), Lsn(4));

    // A sealed suffix cannot be dropped: it asks for a full copy.
    pa.seal().unwrap();
    assert!(matches!(
        pa.truncate_after(Lsn(2)),
        Err(Error::NeedsFullCopy { .. })
    ));
}

#[test]
fn replication_catch_up_and_full_copy() {
    let (a_backend, b_backend) = (Arc::new(MemBackend::new()), Arc::new(MemBackend::new()));
    let (a, b) = (open(&a_backend), open(&b_backend));
    let pa = a.create_partition(P).unwrap();
    let pb = b.create_partition(P).unwrap();
    for w in &history()[..4] {
        pa.append(Term(1), &encode(w)).unwrap();
    }
    // Catch-up from the log, with a duplicate delivery that is skipped.
    let records = pa.read_log(Lsn(1), 1).unwrap();
    assert_eq!(records.len(), 1, "max_bytes bounds the read");
    let records = pa.read_log(Lsn(1), usize::MAX).unwrap();
    assert_eq!(records.len(), 4);
    for (lsn, term, bytes) in records.iter().chain(records.iter()) {
        pb.apply_replicated(*lsn, *term, bytes).unwrap();
    }
    assert_eq!(pb.last_lsn(), Lsn(4));
    assert_eq!(pa.digest(), pb.digest());
    assert!(pa.read_log(Lsn(5), 100).unwrap().is_empty());

    // After a seal the log no longer reaches back: a full copy is needed.
    pa.seal().unwrap();
    for w in &history()[4..] {
        pa.append(Term(2), &encode(w)).unwrap();
    }
    for _ in 0..64 {
        // Fill segments so that trimming drops the first one.
        pa.append(Term(2), &encode(&history()[5])).unwrap();
    }
    pa.seal().unwrap();
    assert!(matches!(
        pa.read_log(Lsn(1), 100),
        Err(Error::TrimmedAway { .. })
    ));

    let (lsn, term, batches) = pa.snapshot().unwrap();
    assert_eq!((lsn, term), (pa.last_lsn(), Term(2)));
    let pb = b.install_snapshot(P, lsn, term, &batches).unwrap();
    assert_eq!(pb.digest(), pa.digest());
    assert_eq!(pb.last_lsn(), lsn);
    let next = encode(&vec![(2, 1000, 1.0)]);
    let lsn_next = pa.append(Term(2), &next).unwrap();
    pb.apply_replicated(lsn_next, Term(2), &next).unwrap();
    assert_eq!(pb.digest(), pa.digest());
    drop((pb, b));
    let b = open(&b_backend);
    assert_eq!(b.partition(P).unwrap().digest(), pa.digest());
}

#[test]
fn corrupted_partition_is_reported_not_served() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let p = store.create_partition(P).unwrap();
    store.create_partition(PartitionId(8)).unwrap();
    for w in &history() {
        p.append(Term(1), &encode(w)).unwrap();
    }
    p.seal().unwrap();
    drop((p, store));
    let chunk = backend
        .paths()
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".chunk"))
        .unwrap();
    let len = backend.read(&chunk).unwrap().len();
    backend.poke(&chunk, len - 3, &[0xFF, 0x00, 0xAA]);
    let (store, report) = Store::open(config(backend.clone())).unwrap();
    assert_eq!(report.opened, vec![PartitionId(8)]);
    assert_eq!(report.corrupted.len(), 1);
    assert_eq!(report.corrupted[0].0, P);
    assert!(store.partition(P).is_none());
}

#[test]
fn bad_batches_are_refused_before_the_log() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let p = store.create_partition(P).unwrap();
    assert!(p.append(Term(1), b"garbage").is_err());
    assert_eq!(p.last_lsn(), Lsn(0));
    assert!(matches!(
        store.create_partition(P),
        Err(Error::PartitionExists(_))
    ));
    store.drop_partition(P).unwrap();
    assert!(store.partition_ids().is_empty());
    assert!(backend.paths().iter().all(|p| !p.starts_with("/data/p7")));
}

#[test]
fn restart_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig::new(dir.path());
    let (store, _) = Store::open(cfg.clone()).unwrap();
    let ids = [PartitionId(1), PartitionId(2)];
    for id in ids {
        store.create_partition(id).unwrap();
    }
    let keys = keys();
    let write = |store: &Store, round: i64| {
        for (i, id) in ids.iter().enumerate() {
            let mut b = batch::BatchBuilder::new();
            for (k, key) in keys.iter().enumerate() {
                for t in 0..50 {
                    b.push_key(
                        key,
                        round * 1_000_000 + t * 10_000,
                        (k * i) as f64 + t as f64 * 0.25,
                    )
                    .unwrap();
                }
            }
            let mut bytes = Vec::new();
            b.encode(&mut bytes);
            store
                .partition(*id)
                .unwrap()
                .append(Term(1), &bytes)
                .unwrap();
        }
    };
    write(&store, 0);
    store.partition(ids[0]).unwrap().seal().unwrap();
    write(&store, 1);
    let digests: Vec<u64> = ids
        .iter()
        .map(|id| store.partition(*id).unwrap().digest())
        .collect();
    let all = store.source(&ids).select(&[], i64::MIN, i64::MAX);
    assert_eq!(all.len(), 8);
    assert!(all.iter().all(|s| s.samples.len() == 100));
    drop(store);
    let (store, report) = Store::open(cfg).unwrap();
    assert_eq!(report.opened, ids.to_vec());
    let again: Vec<u64> = ids
        .iter()
        .map(|id| store.partition(*id).unwrap().digest())
        .collect();
    assert_eq!(again, digests);
    assert_eq!(
        normalize(store.source(&ids).select(&[], i64::MIN, i64::MAX)),
        normalize(all)
    );
}

#[test]
fn stats_account_memory_and_seal_policy() {
    let backend = Arc::new(MemBackend::new());
    let mut cfg = config(backend);
    cfg.seal = SealPolicy {
        head_samples_max: 100,
        head_span_ms: 1_000,
    };
    let (store, _) = Store::open(cfg).unwrap();
    let p = store.create_partition(P).unwrap();
    p.append(Term(1), &encode(&vec![(0, 0, 1.0), (1, 0, 2.0)]))
        .unwrap();
    assert!(!p.seal_due());
    p.append(Term(1), &encode(&vec![(0, 1_000, 1.0)])).unwrap();
    assert!(p.seal_due(), "the head spans the policy's span");
    let s = p.stats();
    assert_eq!((s.series, s.accepted, s.head_samples), (2, 3, 3));
    assert!(s.head_bytes > 0 && s.index_bytes > 0);
    assert_eq!(p.seal().unwrap(), 2);
    assert!(!p.seal_due());
    let s = p.stats();
    assert_eq!(
        (s.head_samples, s.chunk_files, s.covered_lsn),
        (0, 1, Lsn(2))
    );
    let w: Write = (0..100).map(|t| (2, 10_000 + t, 0.0)).collect();
    p.append(Term(1), &encode(&w)).unwrap();
    assert!(p.seal_due(), "the head holds the policy's sample count");
    let m = store.memory_stats();
    assert_eq!((m.partitions, m.series, m.head_samples), (1, 3, 100));
}

/// A seal records where each series' chunks are: for a series' first
/// chunk file one 24-byte entry, not a vector's first growth of four.
#[test]
fn a_seal_adds_one_entry_per_series_to_the_index() {
    let (store, _) = Store::open(config(Arc::new(MemBackend::new()))).unwrap();
    let p = store.create_partition(P).unwrap();
    let series = 1_000;
    let mut b = batch::BatchBuilder::new();
    for r in 0..series {
        b.push(&format!("vm-{r}"), "cpu", &[], 1_000, 1.0).unwrap();
    }
    let mut bytes = Vec::new();
    b.encode(&mut bytes);
    p.append(Term(1), &bytes).unwrap();
    let before = p.stats().index_bytes;
    assert_eq!(p.seal().unwrap(), series);
    let grown = (p.stats().index_bytes - before) / series as u64;
    assert!(grown <= 24, "{grown} bytes per series for one sealed chunk");
}

/// A sealed partition that gets no more writes keeps no log file; opened
/// again, its log goes on at the same LSN and term history (carried by the
/// newest chunk file), and what comes after is replayed as before.
#[test]
fn a_sealed_idle_partition_keeps_no_log_file_and_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let log_files = || {
        std::fs::read_dir(dir.path().join("p7/log"))
            .unwrap()
            .count()
    };
    let reopen = || {
        let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
        assert!(report.corrupted.is_empty(), "{report:?}");
        store
    };
    let store = reopen();
    let p = store.create_partition(P).unwrap();
    assert_eq!(log_files(), 0, "a new partition has no log file");
    p.append(Term(1), &encode(&vec![(0, 1, 1.0)])).unwrap();
    p.append(Term(3), &encode(&vec![(1, 2, 2.0)])).unwrap();
    assert_eq!(log_files(), 1);
    p.seal().unwrap();
    assert_eq!(log_files(), 0);
    let history = p.term_history();
    assert_eq!(history, [(Term(1), Lsn(1)), (Term(3), Lsn(2))]);
    drop((p, store));

    let store = reopen();
    let p = store.partition(P).unwrap();
    assert_eq!((p.last_lsn(), p.last_term()), (Lsn(2), Term(3)));
    assert_eq!(p.term_history(), history);
    assert_eq!(
        p.append(Term(4), &encode(&vec![(2, 3, 3.0)])).unwrap(),
        Lsn(3)
    );
    drop((p, store));

    let store = reopen();
    let p = store.partition(P).unwrap();
    assert_eq!((p.last_lsn(), p.last_term()), (Lsn(3), Term(4)));
    assert_eq!(p.select(&[], 0, 10).len(), 3);
    assert!(matches!(
        p.read_log(Lsn(2), 1 << 20),
        Err(store::Error::TrimmedAway { .. })
    ));
    assert_eq!(p.read_log(Lsn(3), 1 << 20).unwrap().len(), 1);
}

#[test]
fn a_damaged_chunk_is_never_served() {
    use std::io::{Seek, SeekFrom, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(StoreConfig::new(dir.path())).unwrap();
    let p = store.create_partition(P).unwrap();
    p.append(Term(1), &encode(&vec![(0, 1, 1.0), (0, 2, 2.0)]))
        .unwrap();
    p.seal().unwrap();
    assert_eq!(p.select(&[], 0, 10).len(), 1);
    let chunk = std::fs::read_dir(dir.path().join("p7/chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "chunk"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap();
    let first = fsdb::ChunkFile::open(&fsdb::MmapBackend, &chunk)
        .unwrap()
        .chunks()
        .next()
        .unwrap()
        .offset;
    f.seek(SeekFrom::Start(first)).unwrap();
    f.write_all(&[0x5A; 4]).unwrap();
    f.sync_all().unwrap();
    assert!(p.select(&[], 0, 10).is_empty(), "corrupt chunk served");
    assert_eq!(p.stats().corrupt_reads, 1);
    // On the next open the damage is found up front: the partition is
    // reported for a refetch and not opened at all.
    drop((p, store));
    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!(report.corrupted.len(), 1, "{report:?}");
    assert!(store.partition(P).is_none());
}

/// What `for_each_series` hands out, series by series, is what `select`
/// answers, in the same order: sealed and head samples, across lock
/// slices, and no series without samples in the range.
#[test]
fn for_each_series_visits_what_select_answers_in_its_order() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let p = store.create_partition(P).unwrap();
    let push = |from: usize, to: usize, ts: i64| {
        let mut b = batch::BatchBuilder::new();
        for i in from..to {
            let dc = if i % 3 == 0 { "eu" } else { "us" };
            b.push(
                &format!("r{i:03}"),
                "cpu",
                &[("dc", dc)],
                ts + i as i64,
                i as f64,
            )
            .unwrap();
        }
        let mut bytes = Vec::new();
        b.encode(&mut bytes);
        p.append(Term(1), &bytes).unwrap();
    };
    push(0, 600, 0);
    p.seal().unwrap();
    push(300, 700, 1000);
    let m = |n: &str, op, v: &str| Matcher::new(n, op, v).unwrap();
    for (matchers, start, end) in [
        (vec![], 0, 5000),
        (vec![], 1000, 5000),
        (vec![], 0, 400),
        (vec![m("dc", MatchOp::Equal, "eu")], 0, 5000),
        (vec![m("resource", MatchOp::Regex, "r6.*")], 500, 1650),
        (vec![], 10, 0),
    ] {
        let mut seen = Vec::new();
        let finished = p.for_each_series(&matchers, start, end, &mut |labels, samples| {
            seen.push(SeriesData {
                labels: labels(),
                samples: samples.to_vec(),
            });
        });
        assert!(finished);
        assert_eq!(
            seen,
            p.select(&matchers, start, end),
            "{matchers:?} {start}..{end}"
        );
    }
}

#[test]
fn large_selects_read_every_series_across_lock_slices() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let p = store.create_partition(P).unwrap();
    let mut b = batch::BatchBuilder::new();
    for i in 0..700 {
        b.push(&format!("r{i:03}"), "cpu", &[], i, i as f64)
            .unwrap();
    }
    let mut bytes = Vec::new();
    b.encode(&mut bytes);
    p.append(Term(1), &bytes).unwrap();
    let all = p.select(&[], 0, 1000);
    assert_eq!(all.len(), 700);
    let mut seen: Vec<i64> = all.iter().map(|s| s.samples[0].0).collect();
    seen.sort();
    assert_eq!(seen, (0..700).collect::<Vec<_>>());
    let m = Matcher::new("resource", MatchOp::Regex, "r6.*").unwrap();
    assert_eq!(p.select(&[m], 0, 1000).len(), 100);
}

/// A select over many partitions and enough series to be read on every
/// core answers what reading the partitions one after the other does, in
/// the same order.
#[test]
fn a_parallel_select_answers_as_the_partitions_in_order() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let ids: Vec<PartitionId> = (0..8).map(PartitionId).collect();
    for (k, &id) in ids.iter().enumerate() {
        let mut b = batch::BatchBuilder::new();
        for i in 0..150 {
            b.push(
                &format!("r{k}-{i:03}"),
                "cpu",
                &[],
                i,
                (k * 1000 + i as usize) as f64,
            )
            .unwrap();
        }
        let mut bytes = Vec::new();
        b.encode(&mut bytes);
        store
            .create_partition(id)
            .unwrap()
            .append(Term(1), &bytes)
            .unwrap();
    }
    let all = store.source(&ids).select(&[], 0, 1000);
    assert_eq!(all.len(), 8 * 150, "above the parallel threshold");
    let one_by_one: Vec<SeriesData> = ids
        .iter()
        .flat_map(|&id| store.partition(id).unwrap().select(&[], 0, 1000))
        .collect();
    assert_eq!(all, one_by_one);
}

/// A backend whose chunk-file writes wait at a gate: the test holds a seal
/// in the middle of writing its file and acts meanwhile.
struct GatedBackend {
    inner: MemBackend,
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl fsdb::Backend for GatedBackend {
    fn create_dir_all(&self, dir: &std::path::Path) -> fsdb::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &std::path::Path) -> fsdb::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn create_mapped(
        &self,
        path: &std::path::Path,
        len: u64,
    ) -> fsdb::Result<Box<dyn fsdb::backend::MapMut>> {
        self.inner.create_mapped(path, len)
    }
    fn open_mapped(&self, path: &std::path::Path) -> fsdb::Result<Box<dyn fsdb::backend::MapMut>> {
        self.inner.open_mapped(path)
    }
    fn open_read(&self, path: &std::path::Path) -> fsdb::Result<Box<dyn fsdb::backend::Map>> {
        self.inner.open_read(path)
    }
    fn write_file(&self, path: &std::path::Path, data: &[u8]) -> fsdb::Result<()> {
        let chunk_file = path.to_string_lossy().ends_with(".chunk.tmp");
        if chunk_file && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.inner.write_file(path, data)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> fsdb::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &std::path::Path) -> fsdb::Result<()> {
        self.inner.remove_file(path)
    }
    fn list_subdirs(&self, dir: &std::path::Path) -> fsdb::Result<Vec<String>> {
        self.inner.list_subdirs(dir)
    }
    fn remove_dir_all(&self, dir: &std::path::Path) -> fsdb::Result<()> {
        self.inner.remove_dir_all(dir)
    }
}

/// Runs `f` on another thread and waits for it: a partition lock held by
/// the seal would block it for good, which fails here instead of hanging.
fn unblocked<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} waited for the seal"))
}

#[test]
fn appends_and_reads_go_on_while_a_seal_writes_its_file() {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let backend = Arc::new(GatedBackend {
        inner: MemBackend::new(),
        armed: false.into(),
        entered: entered_tx.into(),
        release: release_rx.into(),
    });
    let mut cfg = config(Arc::new(MemBackend::new()));
    cfg.backend = backend.clone();
    let (store, _) = Store::open(cfg.clone()).unwrap();
    let p = store.create_partition(P).unwrap();
    let mut model = Model::default();
    let before: Write = vec![(0, 100, 1.0), (1, 100, 2.0), (0, 110, 3.0), (0, 105, 4.0)];
    p.append(Term(1), &encode(&before)).unwrap();
    model.apply(&before);

    backend
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sealer = {
        let p = p.clone();
        std::thread::spawn(move || p.seal())
    };
    entered.recv().unwrap();
    // The seal is writing its file: writes and reads of every kind go on,
    // over the frozen data and the new heads alike.
    let during: Write = vec![(0, 120, 5.0), (0, 110, 6.0), (2, 100, 7.0), (1, 50, 8.0)];
    let lsn = {
        let (p, batch) = (p.clone(), encode(&during));
        unblocked("an append", move || p.append(Term(1), &batch).unwrap())
    };
    model.apply(&during);
    assert_eq!(lsn, Lsn(2));
    let all = |p: &Arc<store::Partition>| normalize(p.select(&[], i64::MIN, i64::MAX));
    let want = model.select(&[], i64::MIN, i64::MAX);
    let p2 = p.clone();
    assert_eq!(unblocked("a select", move || all(&p2)), want);
    let digest = {
        let p = p.clone();
        unblocked("a digest", move || p.digest())
    };
    assert_eq!(
        p.stats().head_samples,
        7,
        "frozen and new heads are both counted"
    );

    release.send(()).unwrap();
    assert_eq!(sealer.join().unwrap().unwrap(), 2);
    let s = p.stats();
    assert_eq!(
        (s.chunk_files, s.covered_lsn, s.head_samples),
        (1, Lsn(1), 3)
    );
    assert_eq!(all(&p), want);
    assert_eq!(p.digest(), digest);
    assert_eq!(s.rejected, model.rejected);

    // What is on disk is the same: the chunk file up to LSN 1 and the log after it.
    drop((store, p));
    let (store, report) = Store::open(cfg).unwrap();
    assert!(report.corrupted.is_empty());
    let p = store.partition(P).unwrap();
    assert_eq!(all(&p), want);
    assert_eq!(p.digest(), digest);
    assert_eq!(p.stats().rejected, model.rejected);
}

#[test]
fn concurrent_appends_and_seals_lose_nothing() {
    let backend = Arc::new(MemBackend::new());
    let store = open(&backend);
    let p = store.create_partition(P).unwrap();
    let batches: Vec<Write> = (0..200)
        .map(|i| {
            (0..4)
                // Out of order now and then, sometimes beyond the window.
                .map(|k| {
                    (
                        k,
                        i * 3 - (i * 7 % 13) * 2 + (k as i64 % 2) * 5,
                        (i * 4 + k as i64) as f64,
                    )
                })
                .collect()
        })
        .collect();
    // Halfway, the writer waits for one seal that wrote something, so at
    // least one seal lands between appends however fast the writer is; the
    // other seals race it freely.
    let (sealed_tx, sealed_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let (p, batches) = (p.clone(), batches.clone());
        std::thread::spawn(move || {
            for (i, b) in batches.iter().enumerate() {
                if i == batches.len() / 2 {
                    sealed_rx.recv().unwrap();
                }
                p.append(Term(1), &encode(b)).unwrap();
            }
        })
    };
    let mut seals = 0;
    while !writer.is_finished() {
        let wrote = p.seal().unwrap().min(1);
        if wrote == 1 && seals == 0 {
            sealed_tx.send(()).unwrap();
        }
        seals += wrote;
    }
    writer.join().unwrap();
    p.seal().unwrap();
    let mut model = Model::default();
    for b in &batches {
        model.apply(b);
    }
    let want = model.select(&[], i64::MIN, i64::MAX);
    assert_eq!(normalize(p.select(&[], i64::MIN, i64::MAX)), want);
    assert_eq!(p.stats().rejected, model.rejected);
    assert!(seals >= 1);
    drop((store, p));
    let store = open(&backend);
    let p = store.partition(P).unwrap();
    assert_eq!(normalize(p.select(&[], i64::MIN, i64::MAX)), want);
    assert_eq!(p.stats().rejected, model.rejected);
}
