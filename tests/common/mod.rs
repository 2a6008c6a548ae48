//! End-to-end harness: starts a real cluster with `tandem up --detach`, runs the real CLI against it, and kills every process it started.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use serde_json::Value;
use tandem::cluster_file::ClusterFile;

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: ClusterFile,
    /// Every pid this cluster ever had (restarts add more); all are killed on drop.
    pids: Mutex<Vec<u32>>,
    /// Each node's current pid, by index in `file.nodes`.
    node_pids: Mutex<Vec<u32>>,
    /// Each controller's current pid, by index in `file.controllers`.
    controller_pids: Mutex<Vec<u32>>,
    /// Processes this harness started itself (restarts), to reap them.
    children: Mutex<Vec<Child>>,
}

pub struct Layout {
    pub nodes: u32,
    pub hosts: u32,
    pub replicas: u32,
    pub partitions: u32,
    /// Extra `tandem up` flags (`--down-after 2s`, ...).
    pub extra: Vec<String>,
    /// Starts `tandem up` (and so its processes) with this soft limit on
    /// open files (through util-linux's `prlimit`).
    pub open_files_soft: Option<u64>,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            nodes: 3,
            hosts: 3,
            replicas: 2,
            partitions: 64,
            extra: Vec::new(),
            open_files_soft: None,
        }
    }
}

impl Cluster {
    pub fn up(layout: Layout) -> Cluster {
        Cluster::up_with(layout, &[])
    }

    /// `tandem up` with extra arguments (e.g. `--controllers 1`).
    pub fn up_with(layout: Layout, extra: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tandem-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut command = match layout.open_files_soft {
            Some(soft) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:")).arg(TANDEM);
                c
            }
            None => Command::new(TANDEM),
        };
        let out = command
            .args(["up", "--detach", "--data"])
            .arg(dir.path())
            .args([
                "--nodes",
                &layout.nodes.to_string(),
                "--hosts",
                &layout.hosts.to_string(),
            ])
            .args([
                "--replicas",
                &layout.replicas.to_string(),
                "--partitions",
                &layout.partitions.to_string(),
            ])
            .args(&layout.extra)
            .args(extra)
            .output()
            .expect("run tandem up");
        let cluster_path = dir.path().join("cluster.json");
        let file = ClusterFile::load(&cluster_path);
        let pids: Vec<u32> = file
            .as_ref()
            .map(|f| {
                f.controllers
                    .iter()
                    .chain(&f.nodes)
                    .map(|p| p.pid)
                    .collect()
            })
            .unwrap_or_default();
        let file = file.unwrap_or(ClusterFile {
            controllers: vec![],
            nodes: vec![],
        });
        let cluster = Cluster {
            dir,
            node_pids: Mutex::new(file.nodes.iter().map(|n| n.pid).collect()),
            controller_pids: Mutex::new(file.controllers.iter().map(|n| n.pid).collect()),
            file,
            pids: Mutex::new(pids),
            children: Mutex::new(Vec::new()),
        };
        assert!(
            out.status.success(),
            "tandem up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        cluster
    }

    pub fn cluster_path(&self) -> PathBuf {
        self.dir.path().join("cluster.json")
    }

    /// Runs `tandem ARGS --cluster <this cluster>`.
    pub fn tandem(&self, args: &[&str]) -> Output {
        Command::new(TANDEM)
            .args(args)
            .arg("--cluster")
            .arg(self.cluster_path())
            .output()
            .expect("run tandem")
    }

    /// Runs a command that prints JSON and must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.tandem(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tandem {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn http(&self, node: usize) -> String {
        self.file.nodes[node].http.clone().expect("node has http")
    }

    pub fn graphite(&self, node: usize) -> String {
        self.file.nodes[node]
            .graphite
            .clone()
            .expect("node has graphite")
    }

    /// A PromQL instant query over HTTP against one node; returns the whole JSON answer.
    pub fn query(&self, node: usize, expr: &str) -> Value {
        self.query_form(node, &[("query", expr)])
    }

    /// An instant query at unix second `t`; returns the whole JSON answer.
    pub fn query_at(&self, node: usize, expr: &str, t: i64) -> Value {
        self.query_form(node, &[("query", expr), ("time", &t.to_string())])
    }

    fn query_form(&self, node: usize, form: &[(&str, &str)]) -> Value {
        query_http(&self.http(node), form)
    }
}

/// A PromQL instant query (form fields) against the HTTP address `http`.
pub fn query_http(http: &str, form: &[(&str, &str)]) -> Value {
    post_query(http, "query", form)
}

/// A PromQL range query (form fields) against the HTTP address `http`.
pub fn query_range_http(http: &str, form: &[(&str, &str)]) -> Value {
    post_query(http, "query_range", form)
}

fn post_query(http: &str, path: &str, form: &[(&str, &str)]) -> Value {
    let url = format!("http://{http}/api/v1/{path}");
    let resp = match ureq::post(&url)
        .timeout(Duration::from_secs(30))
        .send_form(form)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("query {:?} at {http}: {e}", form[0].1),
    };
    serde_json::from_str(&resp.into_string().expect("body")).expect("json")
}

impl Cluster {
    /// The single value of an instant query that returns one sample.
    pub fn scalar(&self, node: usize, expr: &str) -> f64 {
        value_of(&format!("node {node}: {expr}"), self.query(node, expr))
    }

    /// The single value of an instant query at unix second `t`.
    pub fn scalar_at(&self, node: usize, expr: &str, t: i64) -> f64 {
        value_of(
            &format!("node {node} at {t}: {expr}"),
            self.query_form(node, &[("query", expr), ("time", &t.to_string())]),
        )
    }

    /// Sends raw bytes to a node's Graphite port on one connection.
    pub fn send_graphite(&self, node: usize, bytes: &[u8]) {
        let mut s = TcpStream::connect(self.graphite(node)).expect("connect graphite");
        s.write_all(bytes).expect("write graphite");
    }

    pub fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    /// Polls `cond` every 100 ms until it holds or `timeout` passes.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.logs()
        );
    }

    /// The tail of every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    out.push_str(&format!("--- {}\n", path.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

/// Process control: kill, stop, pause and restart the cluster's processes by pid.
impl Cluster {
    /// The node's index in `file.nodes` for its id.
    pub fn index_of(&self, id: u64) -> usize {
        self.file
            .nodes
            .iter()
            .position(|n| n.id as u64 == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_id(&self, i: usize) -> u64 {
        self.file.nodes[i].id as u64
    }

    pub fn node_pid(&self, i: usize) -> u32 {
        self.node_pids.lock().unwrap()[i]
    }

    pub fn controller_pid(&self, i: usize) -> u32 {
        self.controller_pids.lock().unwrap()[i]
    }

    /// `kill -9` node `i`, and waits until it is gone.
    pub fn kill(&self, i: usize) {
        let pid = self.node_pid(i);
        signal(pid, Signal::SIGKILL);
        self.wait_gone(pid);
    }

    /// `kill -9` controller `i`.
    pub fn kill_controller(&self, i: usize) {
        let pid = self.controller_pid(i);
        signal(pid, Signal::SIGKILL);
        self.wait_gone(pid);
    }

    /// SIGTERM node `i` (a clean stop: it syncs its logs) and waits until it is gone.
    pub fn stop(&self, i: usize) {
        let pid = self.node_pid(i);
        signal(pid, Signal::SIGTERM);
        self.wait_gone(pid);
    }

    pub fn pause(&self, i: usize) {
        signal(self.node_pid(i), Signal::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        signal(self.node_pid(i), Signal::SIGCONT);
    }

    /// Starts node `i` again with the command line `tandem up` recorded.
    pub fn restart(&self, i: usize) {
        let entry = &self.file.nodes[i];
        let pid = self.respawn(&entry.command, &format!("node-{}", entry.id));
        self.node_pids.lock().unwrap()[i] = pid;
    }

    /// Starts a new node `id` on `host` that joins this cluster; returns its
    /// native and HTTP addresses. Its pid is killed with the cluster.
    pub fn add_node(&self, id: u32, host: &str) -> (String, String) {
        // Three ports held at once, so the OS cannot hand one out twice.
        let held: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut addrs = held.iter().map(|l| l.local_addr().unwrap().to_string());
        let (listen, graphite, http) = (
            addrs.next().unwrap(),
            addrs.next().unwrap(),
            addrs.next().unwrap(),
        );
        drop(held);
        let data = self.dir.path().join(format!("node-{id}"));
        let command: Vec<String> = vec![
            TANDEM.into(),
            "node".into(),
            "--id".into(),
            id.to_string(),
            "--host".into(),
            host.into(),
            "--data".into(),
            data.to_string_lossy().into_owned(),
            "--listen".into(),
            listen.clone(),
            "--graphite".into(),
            graphite,
            "--http".into(),
            http.clone(),
            "--controller".into(),
            self.file.controller_addrs().join(","),
        ];
        self.respawn(&command, &format!("node-{id}"));
        (listen, http)
    }

    /// Starts controller `i` again with its recorded command line.
    pub fn restart_controller(&self, i: usize) {
        let entry = &self.file.controllers[i];
        let pid = self.respawn(&entry.command, &format!("controller-{}", entry.id));
        self.controller_pids.lock().unwrap()[i] = pid;
    }

    fn respawn(&self, command: &[String], name: &str) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("open log");
        let child = Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("restart process");
        let pid = child.id();
        self.pids.lock().unwrap().push(pid);
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Waits until `pid` has exited (reaping it if this harness started it).
    fn wait_gone(&self, pid: u32) {
        if let Some(child) = self
            .children
            .lock()
            .unwrap()
            .iter_mut()
            .find(|c| c.id() == pid)
        {
            let _ = child.wait();
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("process {pid} did not exit");
    }

    /// The controller's view of node `id`: `Active`, `Down`, `Recovering`...
    pub fn node_state(&self, id: u64) -> String {
        let status = self.status();
        status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    pub fn wait_state(&self, id: u64, state: &str, timeout: Duration) {
        self.wait_for(&format!("node {id} {state}"), timeout, || {
            self.try_status()
                .and_then(|s| {
                    s["nodes"]
                        .as_array()?
                        .iter()
                        .find(|n| n["id"] == id)
                        .map(|n| n["state"] == state)
                })
                .unwrap_or(false)
        });
    }

    /// `status --json`, or `None` while the controller does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let out = self.tandem(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Every partition's replicas, primary first (`status --partitions`).
    pub fn partitions(&self) -> Vec<Vec<u64>> {
        let s = self.json(&["status", "--partitions", "--json"]);
        s["partitions"]["list"]
            .as_array()
            .expect("partition rows")
            .iter()
            .map(|row| {
                row["replicas"]
                    .as_array()
                    .expect("replicas")
                    .iter()
                    .map(|n| n.as_u64().expect("node id"))
                    .collect()
            })
            .collect()
    }

    /// Node `i`'s `/metrics` page.
    pub fn metrics(&self, i: usize) -> String {
        let url = format!("http://{}/metrics", self.http(i));
        let resp = ureq::get(&url)
            .timeout(Duration::from_secs(10))
            .call()
            .unwrap_or_else(|e| panic!("metrics of node {i}: {e}"));
        resp.into_string()
            .unwrap_or_else(|e| panic!("metrics of node {i}: {e}"))
    }

    /// `tandem check --json`: the divergent partitions (must be none).
    pub fn check(&self) -> Value {
        let out = self.tandem(&["check", "--json"]);
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check: not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            out.status.success() && doc["divergent"].as_array().is_some_and(|d| d.is_empty()),
            "check found divergence: {doc}"
        );
        doc
    }

    /// Starts `tandem push ARGS --json --quiet --cluster <this>` in the background.
    pub fn start_push(&self, args: &[&str]) -> Push {
        let child = Command::new(TANDEM)
            .arg("push")
            .args(args)
            .args(["--json", "--quiet", "--cluster"])
            .arg(self.cluster_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem push");
        self.pids.lock().unwrap().push(child.id());
        Push { child }
    }

    /// Queries node `i` every `every` on a thread until stopped; counts the answers.
    pub fn start_probe(&self, i: usize, expr: &str, every: Duration) -> Probe {
        let url = format!("http://{}/api/v1/query", self.http(i));
        let expr = expr.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let at = Instant::now();
                let answer = match ureq::post(&url)
                    .timeout(Duration::from_secs(10))
                    .send_form(&[("query", &expr)])
                {
                    Ok(r) => r.into_string().ok(),
                    Err(ureq::Error::Status(_, r)) => r.into_string().ok(),
                    Err(_) => None,
                };
                let doc: Option<Value> = answer.and_then(|a| serde_json::from_str(&a).ok());
                let outcome = match doc {
                    Some(d) if d["status"] == "success" => {
                        if d["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
                            ProbeOutcome::Warning
                        } else {
                            ProbeOutcome::Answered
                        }
                    }
                    Some(_) => ProbeOutcome::Error,
                    None => ProbeOutcome::NoAnswer,
                };
                log.push((at, outcome));
                std::thread::sleep(every.saturating_sub(at.elapsed()));
            }
            log
        });
        Probe { stop, thread }
    }
}

/// A `tandem push` running in the background.
pub struct Push {
    child: Child,
}

impl Push {
    /// Waits for the push to end and returns its `--json` report.
    pub fn finish(self) -> Value {
        let out = self.child.wait_with_output().expect("wait for push");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "push report is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Answered,
    /// A success that says part of the answer is missing or came from a fallback.
    Warning,
    Error,
    NoAnswer,
}

pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, ProbeOutcome)>>,
}

impl Probe {
    /// Stops probing; returns each probe's start time and outcome.
    pub fn finish(self) -> Vec<(Instant, ProbeOutcome)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("probe thread")
    }
}

/// The value of one sample line of a Prometheus text page (`name{labels}`), 0 if absent.
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("TANDEM_TEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("TANDEM_TEST_KEEP: kept {}", kept.keep().display());
        }
        for pid in self.pids.lock().map(|p| p.clone()).unwrap_or_default() {
            signal(pid, Signal::SIGCONT);
            signal(pid, Signal::SIGKILL);
        }
        for child in self
            .children
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
        {
            let mut child = child;
            let _ = child.wait();
        }
    }
}

fn value_of(expr: &str, doc: Value) -> f64 {
    assert_eq!(doc["status"], "success", "{expr}: {doc}");
    let result = &doc["data"]["result"];
    let v = match doc["data"]["resultType"].as_str() {
        Some("vector") => {
            assert_eq!(result.as_array().map(Vec::len), Some(1), "{expr}: {doc}");
            &result[0]["value"][1]
        }
        Some("scalar") => &result[1],
        _ => panic!("{expr}: {doc}"),
    };
    v.as_str().expect("string value").parse().expect("number")
}

/// Controller-group helpers: start with a chosen number of controllers,
/// signal and restart processes, read the group's state from `status`.
impl Cluster {
    /// Sends `signal` to a process this cluster started.
    pub fn signal(&self, pid: u32, sig: Signal) {
        signal(pid, sig);
    }

    /// kill -9, and waits until the process is gone.
    pub fn kill9(&self, pid: u32) {
        signal(pid, Signal::SIGKILL);
        self.wait_gone(pid);
    }

    /// Starts a process again with its recorded command line (same data
    /// directory); returns the new pid, which is killed on drop.
    pub fn restart_entry(&self, entry: &tandem::cluster_file::ProcessEntry) -> u32 {
        self.respawn(&entry.command, &format!("{}-{}", entry.role, entry.id))
    }

    /// The id of the controller leader `status` reports, if any.
    pub fn leader(&self) -> Option<u64> {
        let out = self.tandem(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        doc["leader"].as_u64()
    }

    /// The cluster-file entry of controller `id`.
    pub fn controller(&self, id: u64) -> &tandem::cluster_file::ProcessEntry {
        self.file
            .controllers
            .iter()
            .find(|c| c.id as u64 == id)
            .expect("known controller")
    }

    /// Waits for a leader other than `not`; returns it and how long it took.
    pub fn wait_for_leader(&self, not: Option<u64>, timeout: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut found = None;
        self.wait_for("a controller leader", timeout, || {
            found = self.leader().filter(|&l| Some(l) != not);
            found.is_some()
        });
        (found.expect("waited"), start.elapsed())
    }
}
