//! End-to-end harness: starts a real cluster with `tandem up --detach`, runs the real CLI against it, and kills every process it started.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem::cluster_file::ClusterFile;

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: ClusterFile,
    /// Every pid this cluster ever had (restarts add more); all are killed on drop.
    pids: std::sync::Mutex<Vec<u32>>,
}

pub struct Layout {
    pub nodes: u32,
    pub hosts: u32,
    pub replicas: u32,
    pub partitions: u32,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            nodes: 3,
            hosts: 3,
            replicas: 2,
            partitions: 64,
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
        let out = Command::new(TANDEM)
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
        let cluster = Cluster {
            dir,
            file: file.unwrap_or(ClusterFile {
                controllers: vec![],
                nodes: vec![],
            }),
            pids: std::sync::Mutex::new(pids),
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
        let url = format!("http://{}/api/v1/query", self.http(node));
        let expr = form[0].1;
        let resp = match ureq::post(&url)
            .timeout(Duration::from_secs(30))
            .send_form(form)
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("query {expr:?} on node {node}: {e}"),
        };
        serde_json::from_str(&resp.into_string().expect("body")).expect("json")
    }

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

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in self.pids.lock().map(|p| p.clone()).unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
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
    pub fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }

    /// kill -9, and waits until the process is gone.
    pub fn kill9(&self, pid: u32) {
        self.signal(pid, nix::sys::signal::Signal::SIGKILL);
        let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a process again with its recorded command line (same data
    /// directory); returns the new pid, which is killed on drop.
    pub fn restart(&self, entry: &tandem::cluster_file::ProcessEntry) -> u32 {
        let log = self
            .dir
            .path()
            .join(format!("{}-{}.restart.log", entry.role, entry.id));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&entry.command[0])
            .args(&entry.command[1..])
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("restart process");
        let pid = child.id();
        self.pids.lock().expect("poisoned").push(pid);
        // The child is reaped by nobody until the test ends; that is fine
        // for a short-lived test process.
        std::mem::forget(child);
        pid
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

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}
