//! The `Controller` wrapper: persistence across restarts, liveness, wire form.

use controller::{
    Action, ClusterMap, Config, Controller, Error, Event, Heartbeat, NodeId, NodeSpec, NodeState,
    PartitionId,
};
use proptest::prelude::*;

fn config() -> Config {
    Config {
        partitions: 16,
        replicas: 2,
        ..Config::default()
    }
}

fn reg(c: &mut Controller, id: u32, host: &str, now: u64) -> Vec<Action> {
    c.apply(Event::Register(NodeSpec::bare(NodeId(id), host)), now)
        .unwrap()
}

fn beat(c: &mut Controller, id: u32, now: u64) -> Vec<Action> {
    let hb = Heartbeat {
        node: NodeId(id),
        caught_up: Vec::new(),
        lagging: Vec::new(),
    };
    c.heartbeat(&hb, now).unwrap()
}

#[test]
fn a_restarted_controller_resumes_with_the_same_map() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    let mut c = Controller::open(config(), &path).unwrap();
    reg(&mut c, 1, "a", 0);
    reg(&mut c, 2, "b", 0);
    reg(&mut c, 3, "c", 0);
    c.apply(Event::Down { node: NodeId(2) }, 10).unwrap();
    c.apply(Event::Drain { node: NodeId(3) }, 20).unwrap();
    let before = c.map().clone();
    drop(c);

    let mut again = Controller::open(config(), &path).unwrap();
    assert_eq!(again.map(), &before);
    // It continues exactly as the original would have.
    let mut original = Controller::new(config()).unwrap();
    for e in [
        Event::Register(NodeSpec::bare(NodeId(1), "a")),
        Event::Register(NodeSpec::bare(NodeId(2), "b")),
        Event::Register(NodeSpec::bare(NodeId(3), "c")),
    ] {
        original.apply(e, 0).unwrap();
    }
    original.apply(Event::Down { node: NodeId(2) }, 10).unwrap();
    original
        .apply(Event::Drain { node: NodeId(3) }, 20)
        .unwrap();
    let up = Event::Up { node: NodeId(2) };
    assert_eq!(
        again.apply(up.clone(), 30).unwrap(),
        original.apply(up, 30).unwrap()
    );
    assert_eq!(again.map(), original.map());
    assert_eq!(&ClusterMap::load(&path).unwrap(), again.map());
}

#[test]
fn a_stored_map_with_other_sizes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    Controller::open(config(), &path).unwrap();
    let other = Config {
        replicas: 3,
        ..config()
    };
    let err = Controller::open(other, &path).unwrap_err();
    assert!(
        err.to_string()
            .contains("stored map has 16 partitions and 2 replicas"),
        "{err}"
    );
}

#[test]
fn a_corrupt_map_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    std::fs::write(&path, b"{\"epoch\": 3, \"partitions\"").unwrap();
    assert!(matches!(ClusterMap::load(&path), Err(Error::Decode { .. })));
    let mut map = ClusterMap::new(4, 2).unwrap();
    map.table = vec![unreachable_partition(); 4];
    std::fs::write(&path, serde_json::to_vec(&map).unwrap()).unwrap();
    assert!(matches!(
        ClusterMap::load(&path),
        Err(Error::Inconsistent(_))
    ));
}

/// A partition naming a node the map does not list.
fn unreachable_partition() -> controller::PartitionInfo {
    controller::PartitionInfo {
        replicas: vec![NodeId(7)],
        term: controller::Term(1),
        stale: Vec::new(),
        learners: Vec::new(),
    }
}

#[test]
fn silence_past_down_after_marks_a_node_down_and_a_heartbeat_brings_it_back() {
    let mut c = Controller::new(config()).unwrap();
    reg(&mut c, 1, "a", 0);
    reg(&mut c, 2, "b", 0);
    // Node 1 keeps beating, node 2 goes silent after t=0.
    for now in (500..3_000).step_by(500) {
        beat(&mut c, 1, now);
        assert!(
            c.tick(now).unwrap().is_empty(),
            "nothing happens before down_after"
        );
    }
    beat(&mut c, 1, 3_000);
    let actions = c.tick(3_000).unwrap();
    assert!(actions.contains(&Action::NodeState {
        node: NodeId(2),
        state: NodeState::Down
    }));
    assert_eq!(c.map().state_of(NodeId(1)), Some(NodeState::Active));
    assert_eq!(c.status().partitions.degraded, 16);

    let actions = beat(&mut c, 2, 3_500);
    assert!(actions.contains(&Action::NodeState {
        node: NodeId(2),
        state: NodeState::Recovering
    }));
    let catch_up = actions
        .iter()
        .filter(|a| matches!(a, Action::CatchUp { .. }))
        .count();
    assert_eq!(catch_up, 16);
    let hb = Heartbeat {
        node: NodeId(2),
        caught_up: (0..16).map(PartitionId).collect(),
        lagging: Vec::new(),
    };
    c.heartbeat(&hb, 4_000).unwrap();
    assert_eq!(c.map().state_of(NodeId(2)), Some(NodeState::Active));
    assert_eq!(c.status().partitions.healthy, 16);
    // Primaries came back to node 2.
    assert_eq!(c.map().primaries_of(NodeId(2)), 8);
}

#[test]
fn rebuild_after_is_opt_in() {
    for rebuild_after_ms in [None, Some(10_000)] {
        let mut c = Controller::new(Config {
            rebuild_after_ms,
            ..config()
        })
        .unwrap();
        for (id, host) in [(1, "a"), (2, "b"), (3, "c")] {
            reg(&mut c, id, host, 0);
        }
        let hb = |n: u32| Heartbeat {
            node: NodeId(n),
            caught_up: (0..16).map(PartitionId).collect(),
            lagging: Vec::new(),
        };
        c.heartbeat(&hb(3), 100).unwrap(); // node 3 catches up on its share
        for now in (500..=20_000).step_by(500) {
            c.heartbeat(&hb(1), now).unwrap();
            if now <= 1_000 {
                c.heartbeat(&hb(2), now).unwrap();
            }
            c.heartbeat(&hb(3), now).unwrap();
            c.tick(now).unwrap();
        }
        let map = c.map();
        assert_eq!(map.state_of(NodeId(2)), Some(NodeState::Down));
        let on_2 = map
            .table
            .iter()
            .filter(|i| i.replicas.contains(&NodeId(2)))
            .count();
        match rebuild_after_ms {
            None => assert!(on_2 > 0, "a merely Down node keeps its copies"),
            Some(_) => {
                assert_eq!(on_2, 0, "its copies were rebuilt elsewhere");
                assert_eq!(c.status().partitions.healthy, 16);
            }
        }
    }
}

#[test]
fn wire_form_round_trips() {
    let mut c = Controller::new(config()).unwrap();
    reg(&mut c, 1, "a", 0);
    reg(&mut c, 2, "b", 0);
    let bytes = c.map().to_wire();
    assert_eq!(&ClusterMap::from_wire(&bytes).unwrap(), c.map());
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"state\":\"Active\""), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClusterMap::from_wire(&bytes);
    }
}

#[test]
fn a_restarted_controller_gives_every_node_a_full_down_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    let mut c = Controller::open(config(), &path).unwrap();
    reg(&mut c, 1, "a", 0);
    reg(&mut c, 2, "b", 0);
    drop(c);
    // Restarted much later: its liveness tracker is empty.
    let mut c = Controller::open(config(), &path).unwrap();
    assert!(c.tick(50_000).unwrap().is_empty());
    beat(&mut c, 1, 52_000);
    assert!(c.tick(52_999).unwrap().is_empty());
    let actions = c.tick(53_000).unwrap();
    assert!(actions.contains(&Action::NodeState {
        node: NodeId(2),
        state: NodeState::Down
    }));
    assert_eq!(c.map().state_of(NodeId(1)), Some(NodeState::Active));
}
