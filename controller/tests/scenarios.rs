//! Data-driven scenarios of the state machine: a script of events, the map it must end in.

use controller::{
    safe_to_stop, step, Action, ClusterMap, Event, NodeId, NodeSpec, PartitionId, Status,
};

const P: u32 = 4;

/// Runs `script` (one event per line: `reg ID HOST`, `down ID`, `up ID`,
/// `catchup ID`, `remove ID`, `drain ID`, `rebuild ID`) from an empty map and
/// returns the final map plus the rendered map and the last step's result.
fn run(replicas: u32, script: &str) -> (ClusterMap, String) {
    let mut map = ClusterMap::new(P, replicas).unwrap();
    let mut last = String::new();
    for (i, line) in script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = NodeId(words[1].parse().unwrap());
        let event = match words[0] {
            "reg" => Event::Register(NodeSpec::bare(node, words[2])),
            "down" => Event::Down { node },
            "up" => Event::Up { node },
            "catchup" => Event::Progress {
                node,
                caught_up: (0..P)
                    .map(PartitionId)
                    .filter(|&p| {
                        map.needs_catch_up(p, node) && map.catch_up_source(p, node).is_some()
                    })
                    .collect(),
            },
            "remove" => Event::Remove { node },
            "drain" => Event::Drain { node },
            "undrain" => Event::Undrain { node },
            "rebuild" => Event::Rebuild { node },
            other => panic!("unknown command {other}"),
        };
        match step(&map, event, i as u64 * 1000) {
            Ok((next, actions)) => {
                last = render_actions(&actions);
                map = next;
            }
            Err(e) => last = format!("error: {e}"),
        }
    }
    let rendered = format!("{}\n{last}", render(&map));
    (map, rendered)
}

/// `epoch | node states | partition: replicas@term` with stale replicas
/// marked `*` and learners as `+node<old` (`!` once caught up).
fn render(map: &ClusterMap) -> String {
    let nodes: Vec<String> = map
        .nodes
        .iter()
        .map(|n| format!("{}:{}", n.id, n.state))
        .collect();
    let parts: Vec<String> = map
        .table
        .iter()
        .map(|i| {
            let mut s: Vec<String> = i
                .replicas
                .iter()
                .map(|n| format!("{n}{}", if i.is_stale(*n) { "*" } else { "" }))
                .collect();
            for l in &i.learners {
                let old = l.replaces.map_or(String::new(), |r| format!("<{r}"));
                s.push(format!(
                    "+{}{old}{}",
                    l.node,
                    if l.caught_up { "!" } else { "" }
                ));
            }
            format!("{}@{}", s.join(","), i.term)
        })
        .collect();
    format!("e{} | {} | {}", map.epoch, nodes.join(" "), parts.join(" "))
}

fn render_actions(actions: &[Action]) -> String {
    let mut kinds: Vec<String> = actions
        .iter()
        .map(|a| match a {
            Action::Publish { .. } => "publish".to_string(),
            Action::NodeState { node, state } => format!("{node}={state}"),
            Action::Promote {
                partition,
                node,
                term,
            } => format!("p{partition}->{node}@{term}"),
            Action::CatchUp {
                partition,
                node,
                source,
            } => format!("p{partition}:{node}<={source}"),
            Action::Drop { partition, node } => format!("drop p{partition}:{node}"),
            Action::DrainBlocked { node, partitions } => format!("blocked {node} {partitions:?}"),
        })
        .collect();
    kinds.sort();
    kinds.join(" ")
}

fn check(replicas: u32, script: &str, expected: &str) {
    let (_, got) = run(replicas, script);
    assert_eq!(got, expected.trim(), "script:\n{script}");
}

#[test]
fn bootstrap_waits_for_enough_hosts() {
    check(
        2,
        "reg 1 a\nreg 2 a",
        "e2 | 1:Joining 2:Joining | \n2=Joining publish",
    );
    check(
        2,
        "reg 1 a\nreg 2 a\nreg 3 b",
        "e3 | 1:Active 2:Active 3:Active | 3,1@1 3,2@1 2,3@1 1,3@1\n1=Active 2=Active 3=Active p0->3@1 p1->3@1 p2->2@1 p3->1@1 publish",
    );
}

#[test]
fn failover_promotes_the_secondary_and_down_is_not_removed() {
    check(
        2,
        "reg 1 a\nreg 2 b\ndown 1",
        "e3 | 1:Down 2:Active | 2,1*@2 2,1*@1 2,1*@1 2,1*@2\n1=Down p0->2@2 p3->2@2 publish",
    );
}

#[test]
fn a_returning_node_recovers_then_takes_primaries_back() {
    check(
        2,
        "reg 1 a\nreg 2 b\ndown 1\nup 1",
        "e4 | 1:Recovering 2:Active | 2,1*@2 2,1*@1 2,1*@1 2,1*@2\n1=Recovering p0:1<=2 p1:1<=2 p2:1<=2 p3:1<=2 publish",
    );
    check(
        2,
        "reg 1 a\nreg 2 b\ndown 1\nup 1\ncatchup 1",
        "e5 | 1:Active 2:Active | 1,2@3 1,2@2 2,1@1 2,1@2\n1=Active p0->1@3 p1->1@2 publish",
    );
}

#[test]
fn a_partition_without_active_copy_keeps_its_authoritative_primary() {
    // 2 goes first (1 leads alone), then 1: nobody can take over. 2 comes
    // back stale and cannot catch up, so it is Active but serves nothing; when
    // 1 returns it is the authority, and 2 then catches up from it.
    check(
        2,
        "reg 1 a\nreg 2 b\ndown 2\ndown 1\nup 2",
        "e5 | 1:Down 2:Active | 1,2*@1 1,2*@2 1,2*@2 1,2*@1\n2=Active publish",
    );
}

#[test]
fn remove_re_replicates_with_anti_affinity() {
    check(
        2,
        "reg 1 a\nreg 2 b\nreg 3 c\nremove 1\ncatchup 2\ncatchup 3",
        "e5 | 1:Removed 2:Active 3:Active | 3,2@3 3,2@2 2,3@1 2,3@2\n3=Active p0->3@3 p1->3@2 publish",
    );
    check(
        2,
        "reg 1 a\nreg 2 b\nremove 1",
        "e2 | 1:Active 2:Active | 1,2@1 2,1@1 2,1@1 1,2@1\nerror: cluster has 1 distinct hosts but 2 replicas need as many hosts (host anti-affinity)",
    );
}

#[test]
fn drain_moves_primaries_to_active_secondaries() {
    check(
        2,
        "reg 1 a\nreg 2 b\ndrain 1",
        "e3 | 1:Active 2:Active | 2,1@2 2,1@1 2,1@1 2,1@2\np0->2@2 p3->2@2 publish",
    );
    check(
        2,
        "reg 1 a\nreg 2 b\ndown 2\ndrain 1",
        "e4 | 1:Active 2:Down | 1,2*@1 1,2*@2 1,2*@2 1,2*@1\nblocked 1 [PartitionId(0), PartitionId(1), PartitionId(2), PartitionId(3)] publish",
    );
}

#[test]
fn undrain_gives_primaries_back() {
    check(
        2,
        "reg 1 a\nreg 2 b\ndrain 1\nundrain 1",
        "e4 | 1:Active 2:Active | 1,2@3 1,2@2 2,1@1 2,1@2\np0->1@3 p1->1@2 publish",
    );
}

#[test]
fn a_joining_node_takes_its_share_through_learners() {
    check(
        1,
        "reg 1 a\nreg 2 b\nreg 3 c",
        "e3 | 1:Active 2:Recovering 3:Recovering | 1,+3<1@1 1@1 1,+2<1@1 1,+2<1@1\n3=Recovering p0:3<=1 publish",
    );
    check(
        1,
        "reg 1 a\nreg 2 b\nreg 3 c\ncatchup 3",
        "e4 | 1:Active 2:Recovering 3:Active | 3@2 1@1 1,+2<1@1 1,+2<1@1\n3=Active drop p0:1 p0->3@2 publish",
    );
}

#[test]
fn rebuild_re_replicates_a_long_down_node() {
    check(
        2,
        "reg 1 a\nreg 2 b\nreg 3 c\ndown 1\nrebuild 1\ncatchup 2\ncatchup 3",
        "e6 | 1:Down 2:Active 3:Active | 3,2@3 3,2@2 2,3@1 2,3@2\n3=Active drop p0:1 drop p1:1 drop p2:1 drop p3:1 p0->3@3 p1->3@2 publish",
    );
    check(
        2,
        "reg 1 a\nreg 2 b\nrebuild 1",
        "e2 | 1:Active 2:Active | 1,2@1 2,1@1 2,1@1 1,2@1\nerror: node 1 is Active, expected Down",
    );
}

#[test]
fn bad_input_is_an_error_value() {
    check(
        1,
        "down 9",
        "e0 |  | \nerror: node 9 is not in the cluster map",
    );
    check(
        1,
        "reg 1 a\nreg 1 b",
        "e1 | 1:Active | 1@1 1@1 1@1 1@1\nerror: node 1 is registered on host \"a\", not \"b\"",
    );
    check(1, "reg 1 a\nreg 2 b\nremove 2\nreg 2 b", "e3 | 1:Active 2:Removed | 1@1 1@1 1@1 1@1\nerror: node 2 was removed and cannot come back under the same id");
    let map = ClusterMap::new(P, 1).unwrap();
    let bad = Event::Progress {
        node: NodeId(1),
        caught_up: vec![PartitionId(99)],
    };
    assert!(step(&map, bad, 0).is_err());
}

#[test]
fn safe_to_stop_lists_partitions_with_a_single_active_copy() {
    let (map, _) = run(2, "reg 1 a\nreg 2 b");
    assert_eq!(safe_to_stop(&map, NodeId(1)), Ok(()));
    let (map, _) = run(2, "reg 1 a\nreg 2 b\ndown 2");
    assert_eq!(
        safe_to_stop(&map, NodeId(1)),
        Err((0..P).map(PartitionId).collect())
    );
    assert_eq!(safe_to_stop(&map, NodeId(2)), Ok(()));
}

#[test]
fn status_says_why_a_cluster_has_not_formed() {
    let (map, _) = run(2, "reg 1 a\nreg 2 a");
    let status = Status::new(&map, None);
    assert!(!status.formed);
    assert_eq!(
        status.waiting.as_deref(),
        Some("cluster has 1 distinct hosts but 2 replicas need as many hosts (host anti-affinity)")
    );
    assert_eq!(status.partitions.unavailable, P);
    let (map, _) = run(1, "reg 1 a\nreg 2 b");
    let status = Status::new(&map, None);
    assert_eq!((status.waiting, status.nodes[1].learning), (None, 2));
}

#[test]
fn status_counts_states() {
    let (map, _) = run(2, "reg 1 a\nreg 2 b\nreg 3 c\ncatchup 3\ndown 3");
    let status = Status::new(&map, None);
    let counts = &status.partitions;
    assert_eq!(
        (
            counts.total,
            counts.healthy,
            counts.degraded,
            counts.unavailable
        ),
        (4, 2, 2, 0)
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["nodes"][2]["state"], "Down");
    assert_eq!(
        json["nodes"][0]["primaries"].as_u64().unwrap()
            + json["nodes"][1]["primaries"].as_u64().unwrap(),
        4
    );
    assert_eq!(Status::partition_rows(&map).len(), 4);
}
