//! `<data>/cluster.json`: every process `tandem up` started, so operators and tests can find, stop and restart each one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The default place client commands look for a cluster.
pub const DEFAULT_PATH: &str = "./data/cluster.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterFile {
    pub controllers: Vec<ProcessEntry>,
    pub nodes: Vec<ProcessEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessEntry {
    /// `controller` or `node`.
    pub role: String,
    pub id: u32,
    pub pid: u32,
    /// The physical host label (anti-affinity domain).
    pub host: String,
    /// Native protocol and peer RPC address (controllers: their RPC address).
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub data: PathBuf,
    /// The exact command line, program first: run it again to restart the process.
    pub command: Vec<String>,
}

impl ClusterFile {
    pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read {}: start a cluster with `tandem up` or pass --cluster / explicit addresses", path.display())
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tandem cluster file", path.display()))
    }

    /// Writes atomically: a reader never sees a half-written file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename to {}", path.display()))?;
        Ok(())
    }

    pub fn controller_addrs(&self) -> Vec<String> {
        self.controllers.iter().map(|c| c.listen.clone()).collect()
    }

    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.listen.clone()).collect()
    }

    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.http.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        let file = ClusterFile {
            controllers: vec![],
            nodes: vec![ProcessEntry {
                role: "node".into(),
                id: 1,
                pid: 42,
                host: "h1".into(),
                listen: "127.0.0.1:1".into(),
                graphite: Some("127.0.0.1:2".into()),
                http: Some("127.0.0.1:3".into()),
                data: "data/node-1".into(),
                command: vec!["tandem".into(), "node".into()],
            }],
        };
        file.save(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), file);
        let err = ClusterFile::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{err:#}").contains("tandem up"), "{err:#}");
    }
}
