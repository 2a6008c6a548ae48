//! Benchmarks of placement (fresh and incremental) and of one state-machine step at 1 024 partitions.

use controller::placement::{place, rebalance, Candidate, Mode};
use controller::{step, ClusterMap, Event, NodeId, NodeSpec, PartitionId};
use criterion::{criterion_group, criterion_main, Criterion};

fn nodes(n: u32) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate::new(NodeId(i), format!("h{}", i % (n / 2).max(2))))
        .collect()
}

fn bench(c: &mut Criterion) {
    let n32 = nodes(32);
    c.bench_function("place 1024x2 on 32 nodes", |b| {
        b.iter(|| place(&n32, 1024, 2).unwrap())
    });
    let old = place(&n32, 1024, 2).unwrap();
    let mut n33 = n32.clone();
    n33.push(Candidate::new(NodeId(32), "h99"));
    c.bench_function("rebalance 1024x2 adding a 33rd node", |b| {
        b.iter(|| rebalance(&old, &n33, 2, Mode::Balance).unwrap())
    });

    let mut map = ClusterMap::new(1024, 2).unwrap();
    for i in 0..32 {
        let spec = NodeSpec::bare(NodeId(i), format!("h{}", i % 16));
        map = step(&map, Event::Register(spec), 0).unwrap().0;
    }
    // Every joiner catches up, so the map is settled and all nodes are Active.
    for i in 0..32 {
        let caught_up = (0..1024).map(PartitionId).collect();
        map = step(
            &map,
            Event::Progress {
                node: NodeId(i),
                caught_up,
            },
            0,
        )
        .unwrap()
        .0;
    }
    assert!(map
        .nodes
        .iter()
        .all(|n| n.state == controller::NodeState::Active));
    c.bench_function("step: node down, 1024 partitions, 32 nodes", |b| {
        b.iter(|| step(&map, Event::Down { node: NodeId(5) }, 1).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
