//! The read path: scatter a selection over the Active copies of the partitions, fall back to another copy when one does not answer, gather.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller::{partition_of, NodeId, PartitionId};
use store::{MatchOp, Matcher, SeriesData, SeriesKey};

use super::msg::{FoldReply, FoldRequest, SelectReply, SelectRequest};
use super::{Lane, Node};
use crate::net::ReplyFuture;
use crate::proto::{ErrorCode, Kind};

/// How long the coordinator waits for one node's answer before it asks
/// another copy.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// A future answering for some partitions: its part, and the partitions
/// it could not serve.
type PartFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(T, Vec<u32>), String>> + Send>>;

/// What each node answered for a query, and what the answer must warn about.
#[derive(Debug)]
pub struct Gathered<T> {
    /// One part per answer, in a fixed order for a given map.
    pub parts: Vec<T>,
    /// Partitions answered by a copy other than the primary.
    pub fallback: Vec<u32>,
    /// Partitions no Active copy answered for: their series are missing.
    pub unavailable: Vec<u32>,
}

impl<T> Gathered<T> {
    /// Prometheus `warnings` for the response.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.fallback.is_empty() {
            w.push(format!(
                "partitions {} were served by a secondary copy",
                ranges(&self.fallback)
            ));
        }
        if !self.unavailable.is_empty() {
            w.push(format!(
                "partitions {} have no Active copy: their series are missing from this result",
                ranges(&self.unavailable)
            ));
        }
        w
    }
}

fn ranges(ids: &[u32]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 20 {
        return format!("{:?}... ({} in all)", &ids[..20], ids.len());
    }
    format!("{ids:?}")
}

pub fn matcher_triples(matchers: &[Matcher]) -> Vec<(String, String, String)> {
    matchers
        .iter()
        .map(|m| {
            let op = match m.op {
                MatchOp::Equal => "=",
                MatchOp::NotEqual => "!=",
                MatchOp::Regex => "=~",
                MatchOp::NotRegex => "!~",
            };
            (m.name.clone(), op.to_string(), m.value.clone())
        })
        .collect()
}

fn parse_matchers(
    triples: &[(String, String, String)],
) -> Result<Vec<Matcher>, (ErrorCode, String)> {
    triples
        .iter()
        .map(|(name, op, value)| {
            let op = match op.as_str() {
                "=" => MatchOp::Equal,
                "!=" => MatchOp::NotEqual,
                "=~" => MatchOp::Regex,
                "!~" => MatchOp::NotRegex,
                other => {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("unknown matcher operator {other:?}"),
                    ))
                }
            };
            Matcher::new(name, op, value)
                .map_err(|e| (ErrorCode::BadRequest, format!("bad regex {value:?}: {e}")))
        })
        .collect()
}

/// Peer side: aggregation `index` of the query folded over the listed
/// partitions this node holds as an Active copy.
pub fn handle_fold(node: &Arc<Node>, payload: Bytes) -> ReplyFuture {
    let node = node.clone();
    Box::pin(async move {
        let req: FoldRequest = serde_json::from_slice(&payload)
            .map_err(|e| (ErrorCode::BadRequest, format!("malformed fold: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let (partial, missing) = node.fold_local(&req)?;
            let bytes = partial.map(|p| {
                let mut out = Vec::new();
                p.encode(&mut out);
                out
            });
            Ok(FoldReply::encode(&missing, bytes.as_deref()))
        })
        .await
        .map_err(|e| (ErrorCode::Internal, format!("fold task failed: {e}")))?
    })
}

/// Peer side: the matching series of the listed partitions this node holds
/// as an Active copy; the others are listed as missing.
pub fn handle_select(node: &Arc<Node>, payload: Bytes) -> ReplyFuture {
    let node = node.clone();
    Box::pin(async move {
        let req: SelectRequest = serde_json::from_slice(&payload)
            .map_err(|e| (ErrorCode::BadRequest, format!("malformed select: {e}")))?;
        let matchers = parse_matchers(&req.matchers)?;
        tokio::task::spawn_blocking(move || {
            let (series, missing) =
                node.select_local(&req.partitions, &matchers, req.start_ms, req.end_ms);
            Ok(SelectReply::encode(&missing, &encode_series(&series)?))
        })
        .await
        .map_err(|e| (ErrorCode::Internal, format!("select task failed: {e}")))?
    })
}

/// Series data as a batch (the same encoding as writes).
fn encode_series(series: &[SeriesData]) -> Result<Vec<u8>, (ErrorCode, String)> {
    let mut keyed = Vec::with_capacity(series.len());
    for s in series {
        let resource = s.labels.get(store::source::RESOURCE_LABEL).unwrap_or("");
        let metric = s.labels.get(store::source::METRIC_LABEL).unwrap_or("");
        let tags: Vec<(&str, &str)> = s
            .labels
            .iter()
            .filter(|(n, _)| {
                *n != store::source::RESOURCE_LABEL && *n != store::source::METRIC_LABEL
            })
            .collect();
        let key = SeriesKey::new(resource, metric, &tags)
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        keyed.push((key, &s.samples));
    }
    let mut out = Vec::new();
    store::batch::encode(keyed.iter().map(|(k, s)| (k, s.as_slice())), &mut out);
    Ok(out)
}

fn decode_series(batch: &[u8]) -> Result<Vec<SeriesData>, String> {
    let view = store::batch::decode(batch).map_err(|e| e.to_string())?;
    Ok(view
        .series()
        .map(|s| SeriesData {
            labels: s.key().labels(),
            samples: s.samples.collect(),
        })
        .collect())
}

impl Node {
    fn select_local(
        &self,
        partitions: &[u32],
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> (Vec<SeriesData>, Vec<u32>) {
        let (serve, missing) = self.servable(partitions);
        let series = if serve.is_empty() {
            Vec::new()
        } else {
            let serve: Vec<_> = serve.iter().map(|p| p.id()).collect();
            store::Source::select(&self.store.source(&serve), matchers, start_ms, end_ms)
        };
        (series, missing)
    }

    /// The copies among `partitions` this node may answer reads for, and
    /// the ids of the others.
    fn servable(&self, partitions: &[u32]) -> (Vec<Arc<store::Partition>>, Vec<u32>) {
        let map = self.map();
        let progress = self.catchup.lock().expect("poisoned");
        let (mut serve, mut missing) = (Vec::new(), Vec::new());
        for &p in partitions {
            // Only an Active, uncorrupted copy answers: a Recovering replica never serves reads.
            // A new primary that has not yet taken over its peers' records
            // may lack acknowledged samples: let another copy answer.
            let unsynced = map.primary(PartitionId(p)) == Some(self.id)
                && map
                    .partition(PartitionId(p))
                    .is_some_and(|i| self.synced_term(p) < i.term.0);
            if map.is_active_copy(PartitionId(p), self.id) && !progress.is_corrupted(p) && !unsynced
            {
                serve.push(store::PartitionId(p));
            } else {
                missing.push(p);
            }
        }
        drop(progress);
        let serve = serve
            .into_iter()
            .filter_map(|p| self.store.partition(p))
            .collect();
        (serve, missing)
    }

    /// Gathers the series matching `matchers` in `[start_ms, end_ms]` from
    /// the whole cluster: each partition from its primary, or from another
    /// Active copy when the primary does not answer in time.
    pub async fn gather(
        self: &Arc<Self>,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Gathered<Vec<SeriesData>> {
        let triples = matcher_triples(matchers);
        self.scatter(resource_of(matchers), move |node, n, partitions| {
            let req = SelectRequest {
                partitions,
                matchers: triples.clone(),
                start_ms,
                end_ms,
            };
            Box::pin(node.select_on(n, req))
        })
        .await
    }

    /// Folds aggregation `index` of `expr` over the whole cluster (see
    /// `store::query::FoldPlan`): each node folds the partitions it serves,
    /// and their partials are merged here. `None` when a node declined (the
    /// aggregation does not fold over its data) or a partial did not merge:
    /// the caller then gathers raw series instead.
    pub async fn gather_fold(
        self: &Arc<Self>,
        plan: &store::query::FoldPlan,
        req: FoldRequest,
    ) -> Option<(store::query::Partial, Vec<String>)> {
        let selections = plan.selections();
        let resource = pinned_resource(&selections).map(str::to_string);
        let gathered = self
            .scatter(resource.as_deref(), move |node, n, partitions| {
                let req = FoldRequest {
                    partitions,
                    ..req.clone()
                };
                Box::pin(node.fold_on(n, req))
            })
            .await;
        let warnings = gathered.warnings();
        let mut merged = plan.empty();
        for partial in gathered.parts {
            merged.merge(partial?)?;
        }
        Some((merged, warnings))
    }

    /// Asks each partition of the cluster (only the one of `resource`, if
    /// given) of its primary, or of another Active copy when the primary
    /// does not answer in time, with one `call` per node for all the
    /// partitions asked of it. The parts come in a fixed order, node by
    /// node, for a given map.
    async fn scatter<T: Send + 'static>(
        self: &Arc<Self>,
        resource: Option<&str>,
        call: impl Fn(Arc<Node>, NodeId, Vec<u32>) -> PartFuture<T>,
    ) -> Gathered<T> {
        let map = self.map();
        let candidates = |p: u32| -> Vec<NodeId> {
            let pid = PartitionId(p);
            let mut c: Vec<NodeId> = map.active_replicas(pid);
            // The primary first.
            if let Some(primary) = map.primary(pid) {
                if let Some(i) = c.iter().position(|&n| n == primary) {
                    c.swap(0, i);
                }
            }
            c
        };
        let partitions: Vec<u32> = match resource {
            Some(resource) => vec![partition_of(resource.as_bytes(), map.partitions).0],
            None => (0..map.partitions).collect(),
        };
        let mut out = Gathered {
            parts: Vec::new(),
            fallback: Vec::new(),
            unavailable: Vec::new(),
        };
        let mut todo: BTreeMap<u32, Vec<NodeId>> =
            partitions.into_iter().map(|p| (p, candidates(p))).collect();
        let mut round = 0;
        while !todo.is_empty() {
            // Group the next candidate of every partition by node.
            let mut by_node: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
            for (&p, c) in &todo {
                match c.get(round) {
                    Some(&n) => by_node.entry(n).or_default().push(p),
                    None => out.unavailable.push(p),
                }
            }
            todo.retain(|_, c| c.len() > round);
            if by_node.is_empty() {
                break;
            }
            let mut calls = Vec::new();
            for (n, ps) in by_node {
                let part = call(self.clone(), n, ps.clone());
                calls.push(tokio::spawn(async move { (ps, part.await) }));
            }
            for call in calls {
                let Ok((ps, result)) = call.await else {
                    continue;
                };
                match result {
                    Ok((part, missing)) => {
                        out.parts.push(part);
                        for p in ps {
                            if !missing.contains(&p) {
                                todo.remove(&p);
                                if round > 0 {
                                    out.fallback.push(p);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!("query part failed, trying other copies: {e}"),
                }
            }
            round += 1;
        }
        out
    }

    async fn fold_on(
        self: Arc<Self>,
        n: NodeId,
        req: FoldRequest,
    ) -> Result<(Option<store::query::Partial>, Vec<u32>), String> {
        if n == self.id {
            return tokio::task::spawn_blocking(move || self.fold_local(&req))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.1);
        }
        let bytes = self.ask(n, Kind::Fold, &req).await?;
        let reply = FoldReply::decode(&bytes).map_err(|e| e.1)?;
        let partial = reply
            .partial
            .map(store::query::Partial::decode)
            .transpose()?;
        Ok((partial, reply.missing))
    }

    /// Folds what `req` asks over the partitions this node serves, each
    /// on its own and on every core ([`store::query::FoldPlan::fold_all`]).
    fn fold_local(
        &self,
        req: &FoldRequest,
    ) -> Result<(Option<store::query::Partial>, Vec<u32>), (ErrorCode, String)> {
        let plan = store::query::FoldPlan::new(
            &req.expr,
            req.index,
            req.start_ms,
            req.end_ms,
            req.step_ms,
            &store::query::QueryOptions::default(),
        )
        .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        let (serve, missing) = self.servable(&req.partitions);
        let merged = plan
            .fold_all(&serve)
            .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        Ok((merged, missing))
    }

    async fn select_on(
        self: Arc<Self>,
        n: NodeId,
        req: SelectRequest,
    ) -> Result<(Vec<SeriesData>, Vec<u32>), String> {
        if n == self.id {
            let matchers = parse_matchers(&req.matchers).map_err(|e| e.1)?;
            let node = self.clone();
            return tokio::task::spawn_blocking(move || {
                node.select_local(&req.partitions, &matchers, req.start_ms, req.end_ms)
            })
            .await
            .map_err(|e| e.to_string());
        }
        let bytes = self.ask(n, Kind::Select, &req).await?;
        let reply = SelectReply::decode(&bytes).map_err(|e| e.1)?;
        Ok((decode_series(reply.batch)?, reply.missing))
    }

    /// Sends a query part to node `n` as JSON and waits for its answer.
    async fn ask(
        &self,
        n: NodeId,
        kind: Kind,
        req: &impl serde::Serialize,
    ) -> Result<Bytes, String> {
        let client = self
            .peer(n, Lane::Requests)
            .ok_or_else(|| format!("node {n} is not in the map"))?;
        let payload = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        client
            .request(kind, &payload, READ_DEADLINE)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The resource every one of `selections` pins, if they all pin the same
/// one (`{a="1" or b="2"}` is one selection per alternative).
fn pinned_resource(selections: &[store::query::Selection]) -> Option<&str> {
    let first = resource_of(&selections.first()?.matchers)?;
    selections
        .iter()
        .all(|s| resource_of(&s.matchers) == Some(first))
        .then_some(first)
}

/// The resource a query pins with `resource="..."`, if any: then only its partition is asked.
fn resource_of(matchers: &[Matcher]) -> Option<&str> {
    matchers
        .iter()
        .find(|m| m.name == store::source::RESOURCE_LABEL && m.op == MatchOp::Equal)
        .map(|m| m.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::query::{selectors, Folded, QueryOptions};

    #[test]
    fn a_resource_is_pinned_only_when_every_alternative_pins_it() {
        let pinned = |q: &str| {
            let s = selectors(q, 0, 0, &QueryOptions::default(), &Folded::new()).unwrap();
            pinned_resource(&s).map(str::to_string)
        };
        assert_eq!(pinned(r#"m{resource="a"}"#).as_deref(), Some("a"));
        assert_eq!(
            pinned(r#"m{resource="a" or resource="a", k="1"}"#).as_deref(),
            Some("a")
        );
        assert_eq!(pinned(r#"m{resource="a" or resource="b"}"#), None);
        assert_eq!(pinned(r#"m{resource="a" or k="1"}"#), None);
        assert_eq!(pinned("m"), None);
    }
}
