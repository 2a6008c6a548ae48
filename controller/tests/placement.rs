//! Property tests of placement: anti-affinity, balance, minimal movement, determinism.

use std::collections::BTreeSet;

use controller::placement::{place, rebalance, Candidate, Mode};
use controller::{Error, NodeId};
use proptest::prelude::*;

const P: u32 = 1024;

/// Nodes with distinct ids and the given host labels.
fn cluster(ids: &BTreeSet<u32>, hosts: &[usize]) -> Vec<Candidate> {
    ids.iter()
        .zip(hosts)
        .map(|(&id, &h)| Candidate::new(NodeId(id), format!("host{h}")))
        .collect()
}

fn host_of(nodes: &[Candidate], id: NodeId) -> &str {
    &nodes
        .iter()
        .find(|c| c.id == id)
        .expect("placed on a known node")
        .host
}

fn assert_anti_affinity(nodes: &[Candidate], table: &[Vec<NodeId>], r: u32) {
    for (p, replicas) in table.iter().enumerate() {
        assert_eq!(replicas.len(), r as usize, "partition {p}: {replicas:?}");
        let hosts: BTreeSet<&str> = replicas.iter().map(|&n| host_of(nodes, n)).collect();
        assert_eq!(
            hosts.len(),
            replicas.len(),
            "partition {p} shares a host: {replicas:?}"
        );
    }
}

/// max/mean of copies and of primaries per node.
fn spread(nodes: &[Candidate], table: &[Vec<NodeId>]) -> (f64, f64) {
    let ratio = |count: &dyn Fn(NodeId) -> usize| {
        let counts: Vec<usize> = nodes.iter().map(|c| count(c.id)).collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
        *counts.iter().max().unwrap() as f64 / mean
    };
    let copies = ratio(&|n| table.iter().filter(|r| r.contains(&n)).count());
    let primaries = ratio(&|n| table.iter().filter(|r| r[0] == n).count());
    (copies, primaries)
}

/// The balance condition of the placement docs: every host carries at most
/// N / R nodes.
fn balanceable(hosts: &[usize], r: u32) -> bool {
    let distinct: BTreeSet<usize> = hosts.iter().copied().collect();
    let max = distinct
        .iter()
        .map(|h| hosts.iter().filter(|&x| x == h).count())
        .max()
        .unwrap_or(0);
    max * r as usize <= hosts.len()
}

/// Copies present in `new` and not in `old`.
fn moved(old: &[Vec<NodeId>], new: &[Vec<NodeId>]) -> usize {
    old.iter()
        .zip(new)
        .map(|(o, n)| n.iter().filter(|x| !o.contains(x)).count())
        .sum()
}

/// (R, node ids, host per node) for 3 to 32 nodes on up to N hosts.
fn layout() -> impl Strategy<Value = (u32, BTreeSet<u32>, Vec<usize>)> {
    (1u32..=3, 3usize..=32).prop_flat_map(|(r, n)| {
        (
            Just(r),
            prop::collection::btree_set(0u32..100_000, n),
            prop::collection::vec(0..n, n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn copies_never_share_a_host((r, ids, hosts) in layout()) {
        let nodes = cluster(&ids, &hosts);
        let distinct = hosts.iter().collect::<BTreeSet<_>>().len();
        match place(&nodes, 128, r) {
            Ok(table) => {
                prop_assert!(distinct >= r as usize);
                assert_anti_affinity(&nodes, &table, r);
            }
            Err(Error::NotEnoughHosts { hosts, replicas }) => {
                prop_assert_eq!((hosts, replicas), (distinct, r));
                prop_assert!(distinct < r as usize);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn copies_and_primaries_are_balanced((r, ids, hosts) in layout()) {
        prop_assume!(balanceable(&hosts, r));
        let nodes = cluster(&ids, &hosts);
        let table = place(&nodes, P, r).unwrap();
        assert_anti_affinity(&nodes, &table, r);
        let (copies, primaries) = spread(&nodes, &table);
        prop_assert!(copies <= 1.10, "copies max/mean {copies}");
        prop_assert!(primaries <= 1.10, "primaries max/mean {primaries}");
    }

    #[test]
    fn adding_a_node_moves_about_its_share((r, ids, hosts) in layout(), new_host in 0usize..40) {
        let new_id = (0..).find(|i| !ids.contains(i)).unwrap();
        let mut grown_hosts = hosts.clone();
        grown_hosts.push(new_host);
        prop_assume!(balanceable(&hosts, r) && balanceable(&grown_hosts, r));
        let nodes = cluster(&ids, &hosts);
        let old = place(&nodes, P, r).unwrap();
        let mut grown = nodes.clone();
        grown.push(Candidate::new(NodeId(new_id), format!("host{new_host}")));
        let new = rebalance(&old, &grown, r, Mode::Balance).unwrap();
        assert_anti_affinity(&grown, &new, r);
        let ideal = f64::from(P * r) / grown.len() as f64;
        let moves = moved(&old, &new) as f64;
        prop_assert!(moves <= 1.25 * ideal, "moved {moves}, ideal {ideal}");
        let (copies, primaries) = spread(&grown, &new);
        prop_assert!(copies <= 1.10 && primaries <= 1.10, "copies {copies} primaries {primaries}");
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions((r, ids, hosts) in layout(), pick in any::<prop::sample::Index>()) {
        let nodes = cluster(&ids, &hosts);
        let gone = nodes[pick.index(nodes.len())].id;
        let rest: Vec<Candidate> = nodes.iter().filter(|c| c.id != gone).cloned().collect();
        let rest_hosts = rest.iter().map(|c| &c.host).collect::<BTreeSet<_>>().len();
        prop_assume!(rest_hosts >= r as usize);
        let old = place(&nodes, P, r).unwrap();
        let new = rebalance(&old, &rest, r, Mode::Repair).unwrap();
        assert_anti_affinity(&rest, &new, r);
        for (p, (o, n)) in old.iter().zip(&new).enumerate() {
            let same: BTreeSet<_> = o.iter().collect::<BTreeSet<_>>();
            if !o.contains(&gone) {
                prop_assert_eq!(o, n, "partition {} changed without a copy on {}", p, gone);
            } else {
                // The surviving copies stay; only the lost one is replaced.
                prop_assert_eq!(n.iter().filter(|x| same.contains(x)).count(), o.len() - 1);
            }
        }
    }

    #[test]
    fn placement_is_a_pure_function((r, ids, hosts) in layout(), seed in any::<u64>()) {
        let nodes = cluster(&ids, &hosts);
        prop_assume!(hosts.iter().collect::<BTreeSet<_>>().len() >= r as usize);
        let mut shuffled = nodes.clone();
        let len = shuffled.len();
        shuffled.rotate_left((seed as usize) % len);
        prop_assert_eq!(place(&nodes, 256, r).unwrap(), place(&shuffled, 256, r).unwrap());
    }
}

#[test]
fn fewer_hosts_than_replicas_is_refused() {
    let nodes = cluster(&BTreeSet::from([1, 2, 3]), &[0, 0, 1]);
    let err = place(&nodes, 16, 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster has 2 distinct hosts but 3 replicas need as many hosts (host anti-affinity)"
    );
}

#[test]
fn a_crowded_host_still_keeps_anti_affinity() {
    // 3 nodes on 2 hosts with R = 2: the lone host's node holds every partition.
    let nodes = cluster(&BTreeSet::from([1, 2, 3]), &[0, 0, 1]);
    let table = place(&nodes, P, 2).unwrap();
    assert_anti_affinity(&nodes, &table, 2);
    assert!(table.iter().all(|r| r.contains(&NodeId(3))));
}

/// Balance on tight layouts: at (or, for the last, just past) max_per_host * R == N.
fn check_tight(hosts: &[usize], r: u32) {
    let ids: BTreeSet<u32> = (0..hosts.len() as u32).map(|i| i * 3 + 1).collect();
    let nodes = cluster(&ids, hosts);
    let table = place(&nodes, P, r).unwrap();
    assert_anti_affinity(&nodes, &table, r);
    let (copies, primaries) = spread(&nodes, &table);
    assert!(
        copies <= 1.10 && primaries <= 1.10,
        "{hosts:?} R={r}: copies {copies} primaries {primaries}"
    );
}

#[test]
fn tight_layouts_are_balanced() {
    check_tight(&[0, 0, 1, 1], 2);
    check_tight(&[0, 0, 0, 1, 1, 1], 2);
    check_tight(&[0, 0, 1, 1, 2, 2], 3);
    check_tight(&[0, 1, 1, 2, 2, 3, 3, 0, 4], 3);
    check_tight(
        &[0; 16]
            .iter()
            .enumerate()
            .map(|(i, _)| i % 2)
            .collect::<Vec<_>>(),
        2,
    );
    check_tight(&(0..32).map(|i| i % 3).collect::<Vec<_>>(), 3);
}
