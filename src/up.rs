//! `tandem up`: a whole local cluster (a controller group and nodes on loopback) in one command.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cluster_file::{ClusterFile, ProcessEntry};

#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Number of data nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Number of physical host labels the nodes are spread over (round robin).
    #[arg(long, default_value_t = 3)]
    pub hosts: u32,
    /// Copies of every partition (1 = HA off, 2 = primary + secondary).
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Number of controllers: a Raft group of 3 survives one failure; 1 runs without HA.
    #[arg(long, default_value_t = 3)]
    pub controllers: u32,
    /// Partitions of the cluster, fixed at creation.
    #[arg(long, default_value_t = 1024)]
    pub partitions: u32,
    /// Where every process keeps its data, logs, and `cluster.json`.
    #[arg(long, default_value = "./data")]
    pub data: PathBuf,
    /// Heartbeat silence after which a node is Down.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub down_after: Duration,
    /// Start the processes, wait until every node is Active, print, and exit
    /// instead of waiting for Ctrl-C (the processes keep running; stop them
    /// by the pids in cluster.json).
    #[arg(long)]
    pub detach: bool,
    /// Print the endpoints as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: UpArgs) -> anyhow::Result<i32> {
    if args.controllers != 1 && args.controllers != 3 {
        bail!(
            "--controllers {}: a controller group is 1 (no HA) or 3 (survives one failure)",
            args.controllers
        );
    }
    if args.hosts < args.replicas {
        bail!(
            "--hosts {} < --replicas {}: every copy of a partition needs its own physical host; add hosts or lower --replicas",
            args.hosts,
            args.replicas
        );
    }
    if args.nodes < args.hosts {
        bail!(
            "--nodes {} < --hosts {}: every host label needs at least one node",
            args.nodes,
            args.hosts
        );
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let data = args.data.canonicalize()?;
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let exe = exe.to_string_lossy().into_owned();

    let mut children: Vec<Child> = Vec::new();
    let mut file = ClusterFile {
        controllers: Vec::new(),
        nodes: Vec::new(),
    };

    let controller_addrs: Vec<String> = (0..args.controllers)
        .map(|_| free_addr())
        .collect::<anyhow::Result<_>>()?;
    let peers: Vec<String> = controller_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    for (i, addr) in controller_addrs.iter().enumerate() {
        let id = i as u32 + 1;
        let controller_data = data.join(format!("controller-{id}"));
        let command = vec![
            exe.clone(),
            "controller".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--peers".into(),
            peers.join(","),
            "--data".into(),
            path_arg(&controller_data),
            "--replicas".into(),
            args.replicas.to_string(),
            "--partitions".into(),
            args.partitions.to_string(),
            "--down-after".into(),
            humantime::format_duration(args.down_after).to_string(),
        ];
        let child = spawn(&command, &data.join(format!("controller-{id}.log")))?;
        file.controllers.push(ProcessEntry {
            role: "controller".into(),
            id,
            pid: child.id(),
            host: format!("h{id}"),
            listen: addr.clone(),
            graphite: None,
            http: None,
            data: controller_data,
            command,
        });
        children.push(child);
    }
    let controller_list = controller_addrs.join(",");

    for id in 1..=args.nodes {
        let host = format!("h{}", (id - 1) % args.hosts + 1);
        let (listen, graphite, http) = (free_addr()?, free_addr()?, free_addr()?);
        let node_data = data.join(format!("node-{id}"));
        let command = vec![
            exe.clone(),
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--host".into(),
            host.clone(),
            "--data".into(),
            path_arg(&node_data),
            "--listen".into(),
            listen.clone(),
            "--graphite".into(),
            graphite.clone(),
            "--http".into(),
            http.clone(),
            "--controller".into(),
            controller_list.clone(),
        ];
        let child = spawn(&command, &data.join(format!("node-{id}.log")))?;
        file.nodes.push(ProcessEntry {
            role: "node".into(),
            id,
            pid: child.id(),
            host,
            listen,
            graphite: Some(graphite),
            http: Some(http),
            data: node_data,
            command,
        });
        children.push(child);
    }
    let cluster_path = data.join("cluster.json");
    file.save(&cluster_path)?;

    let ready = crate::control::wait_until_active(
        &file.controller_addrs(),
        args.nodes as usize,
        Duration::from_secs(60),
    );
    if let Err(e) = ready {
        stop_all(&mut children);
        return Err(e.context(
            "the cluster did not become ready; see the *.log files in the data directory",
        ));
    }
    print_endpoints(&file, &cluster_path, args.json)?;
    if args.detach {
        return Ok(0);
    }
    eprintln!("tandem is running; Ctrl-C stops every process");
    wait_for_ctrl_c()?;
    eprintln!("stopping...");
    stop_all(&mut children);
    Ok(0)
}

fn print_endpoints(file: &ClusterFile, cluster_path: &Path, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(file)?);
        return Ok(());
    }
    println!("cluster file: {}", cluster_path.display());
    for c in &file.controllers {
        println!("controller {:>2}  pid {:>7}  rpc {}", c.id, c.pid, c.listen);
    }
    for n in &file.nodes {
        println!(
            "node {:>2} ({})  pid {:>7}  native {}  graphite {}  http http://{}",
            n.id,
            n.host,
            n.pid,
            n.listen,
            n.graphite.as_deref().unwrap_or("-"),
            n.http.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// Ports `up` gives its processes: below Linux's ephemeral range (32768 to
/// 60999), from which the OS picks the local end of every outgoing
/// connection. A port from that range, released for a child to bind, can
/// meanwhile become the local end of some connection; a controller
/// restarted on its recorded port then found it taken ("Address already in
/// use").
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback address with a port from [`PORTS`] that is free now and that
/// this `up` never handed out before. The walk starts at a point that
/// differs per process, so two `up`s rarely try the same ports. The port is
/// released for the child to bind; a collision with another program in
/// that instant makes the child fail to start, which `up` reports.
fn free_addr() -> anyhow::Result<String> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("poisoned");
    let span = u64::from(PORTS.end - PORTS.start);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let start = u64::from(std::process::id()) * 7_919 + nanos;
    // 7 919 is prime and does not divide the span: the walk visits every port.
    for i in 0..span {
        let port = PORTS.start + ((start + i * 7_919) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    bail!(
        "no free loopback port in {}..{}: stop what holds them, or start the processes by hand",
        PORTS.start,
        PORTS.end
    )
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn spawn(command: &[String], log: &Path) -> anyhow::Result<Child> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", command.join(" ")))
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        // SIGTERM first so that nodes sync their logs.
        signal(child.id(), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal to a process by pid; a process already gone is not an error.
pub fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
}

fn wait_for_ctrl_c() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{free_addr, PORTS};

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_given_twice() {
        let ports: Vec<u16> = (0..50)
            .map(|_| {
                let addr: std::net::SocketAddr = free_addr().unwrap().parse().unwrap();
                assert!(addr.ip().is_loopback());
                addr.port()
            })
            .collect();
        assert!(ports.iter().all(|p| PORTS.contains(p)), "{ports:?}");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
