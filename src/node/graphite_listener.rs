//! The Graphite plaintext listener: lines in, grouped by partition, written through the gateway. No acknowledgements (the protocol has none).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use controller::partition_of;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};

use super::Node;
use crate::graphite::{parse_text, LineError, LineSplitter, Piece};

const CONNECTIONS_MAX: usize = 1024;
const READ_BYTES: usize = 256 * 1024;

pub async fn serve(listener: TcpListener, node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    let limit = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let socket = tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("graphite accept failed: {e}");
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            connection(socket, node).await;
            drop(permit);
        });
    }
}

/// Samples a connection gathers from the bytes already received before it
/// writes them: bigger per-partition groups, fewer replication round trips.
/// Spread over 1 024 partitions, 50 000 made groups of about 50 samples,
/// and per-group work (a task, a log record, a forward and a replication
/// round trip) dominated: on the compare load, 200 000 took 1 node from
/// 0.94 to 1.1-1.7 M samples per CPU-second and 3 nodes from 0.36-0.41 to
/// 0.61-0.89 M, for about 6 MB more per busy connection.
const FLUSH_SAMPLES: usize = 200_000;

async fn connection(mut socket: TcpStream, node: Arc<Node>) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; READ_BYTES];
    let mut groups = Groups::new(node.map().partitions);
    let mut open = true;
    while open {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        feed(&mut splitter, &mut groups, &node, &buf[..n]);
        // Take what has already arrived too, up to a batch, without waiting.
        while groups.samples() < FLUSH_SAMPLES {
            match socket.try_read(&mut buf) {
                Ok(0) => open = false,
                Ok(n) => {
                    feed(&mut splitter, &mut groups, &node, &buf[..n]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => open = false,
            }
            break;
        }
        // Write before reading more: back-pressure.
        groups.flush(&node).await;
    }
    if let Some(rest) = splitter.finish() {
        // A half line at close: it may be whole but for its line end.
        node.metrics.add_unterminated_line();
        match std::str::from_utf8(&rest) {
            Ok(line) => groups.add(&node, line, now_ms()),
            Err(_) => groups.not_utf8(&node, &rest),
        }
        groups.flush(&node).await;
    }
}

fn feed(splitter: &mut LineSplitter, groups: &mut Groups, node: &Node, bytes: &[u8]) {
    let now_ms = now_ms();
    let max = node.graphite.line_bytes_max;
    splitter.feed(bytes, max, |piece| match piece {
        Piece::Line(line) => groups.add(node, line, now_ms),
        Piece::NotUtf8(line) => groups.not_utf8(node, line),
        Piece::TooLong => {
            node.metrics.add_graphite_lines(1);
            node.metrics
                .add_bad_line(LineError::TooLong, b"<line over the length limit>");
        }
        Piece::Empty => node.metrics.add_empty_line(),
    });
}

/// A connection's samples grouped by partition, and its line count.
struct Groups {
    builders: store::batch::PartitionBuilders,
    /// Lines since the last flush, counted into the node's metrics then
    /// (one shared counter per line was contended between connections).
    lines: u64,
}

impl Groups {
    fn new(partitions: u32) -> Groups {
        Groups {
            builders: store::batch::PartitionBuilders::new(partitions),
            lines: 0,
        }
    }

    fn samples(&self) -> usize {
        self.builders.samples()
    }

    fn add(&mut self, node: &Node, line: &str, now_ms: i64) {
        self.lines += 1;
        let mut parsed = match parse_text(line, &node.graphite, now_ms) {
            Ok(l) => l,
            Err(e) => return node.metrics.add_bad_line(e, line.as_bytes()),
        };
        let tags = &mut parsed.tags;
        tags.sort_unstable_by(|a, b| a.0.cmp(b.0));
        tags.dedup_by(|a, b| a.0 == b.0);
        let p = partition_of(parsed.resource.as_bytes(), self.builders.partitions()).0;
        let pushed = self.builders.push(
            p,
            parsed.resource,
            parsed.metric,
            &parsed.tags,
            parsed.timestamp_ms,
            parsed.value,
        );
        if pushed.is_err() {
            node.metrics
                .add_bad_line(LineError::BadTag, line.as_bytes());
        }
    }

    /// Counts a whole line that is not UTF-8.
    fn not_utf8(&mut self, node: &Node, line: &[u8]) {
        self.lines += 1;
        node.metrics.add_bad_line(LineError::NotUtf8, line);
    }

    async fn flush(&mut self, node: &Arc<Node>) {
        node.metrics
            .add_graphite_lines(std::mem::take(&mut self.lines));
        let samples = self.builders.samples();
        let groups = self.builders.finish();
        if groups.is_empty() {
            return;
        }
        match node.ingest(groups).await {
            Ok(()) => node.metrics.add_ingested(samples as u64),
            Err((code, msg)) => {
                tracing::error!(?code, "graphite write of {samples} samples failed: {msg}")
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
