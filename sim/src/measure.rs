//! Process measurements without `unsafe`: CPU time (getrusage), resident memory (/proc/self/status), disk use of a tree.

use std::path::Path;

use crate::error::{Error, Result};

/// User + system CPU seconds of this process so far (getrusage RUSAGE_SELF).
pub fn cpu_seconds() -> Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let usage = getrusage(UsageWho::RUSAGE_SELF).map_err(|e| Error::Measure {
        what: "cpu time",
        reason: e.to_string(),
    })?;
    let us = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
    Ok(us as f64 / 1e6)
}

/// Resident memory of this process, from /proc/self/status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    /// VmRSS: everything resident.
    pub rss_bytes: u64,
    /// RssAnon: the heap and other anonymous memory.
    pub anon_bytes: u64,
    /// RssFile: resident pages of mapped files (the log segments, chunk files, the binary).
    pub file_bytes: u64,
}

pub fn resident() -> Result<Resident> {
    let text = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("/proc/self/status", e))?;
    parse_status(&text).ok_or_else(|| Error::Measure {
        what: "resident memory",
        reason: "/proc/self/status lacks VmRSS/RssAnon/RssFile".into(),
    })
}

/// Reads the `kB` fields of a /proc status file.
pub fn parse_status(text: &str) -> Option<Resident> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(Resident {
        rss_bytes: field("VmRSS:")?,
        anon_bytes: field("RssAnon:")?,
        file_bytes: field("RssFile:")?,
    })
}

/// Bytes allocated on disk under `dir` (st_blocks * 512, as `du` counts), and
/// apparent bytes (file lengths), of every regular file in the tree.
pub fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    Ok((allocated, apparent))
}

/// Total and available memory of the machine, and its CPU count.
pub fn machine() -> (u32, u64, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            line["MemTotal:".len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("model name"))?.to_string();
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_default();
    (cores, ram, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes() {
        let text = "Name:\ttandem\nVmHWM:\t  2048 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     512 kB\nRssFile:\t     500 kB\nRssShmem:\t 12 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Resident {
                rss_bytes: 1 << 20,
                anon_bytes: 512 << 10,
                file_bytes: 500 << 10,
            })
        );
        assert_eq!(parse_status("VmRSS: 1 kB\n"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        let r = resident().unwrap();
        assert!(r.rss_bytes > 0 && r.anon_bytes > 0);
        let a = cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds().unwrap() >= a);
    }
}
