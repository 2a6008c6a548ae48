//! The HTTP API: Prometheus-compatible queries (so Grafana's Prometheus data source works unchanged), `/metrics`, health.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::msg::FoldRequest;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value as Json};
use store::query::{
    format_value, FetchedSource, FoldPlan, Folded, QueryError, QueryOptions, Value,
};
use store::{Labels, Matcher};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::Node;

/// Longest range a query may ask for without a step (series/labels endpoints).
const ALL_TIME: (i64, i64) = (i64::MIN / 4, i64::MAX / 4);

pub async fn serve(listener: TcpListener, node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    let app = router(node);
    let stop = async move {
        let _ = shutdown.recv().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!("http server failed: {e}");
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/health", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/flush", axum::routing::post(flush))
        .with_state(node)
}

/// An API error, mapped to its HTTP status in one place.
enum ApiError {
    BadData(String),
    Execution(String),
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e.kind() {
            store::query::ErrorKind::BadData => ApiError::BadData(e.to_string()),
            store::query::ErrorKind::Execution => ApiError::Execution(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, msg) = match self {
            ApiError::BadData(m) => (StatusCode::BAD_REQUEST, "bad_data", m),
            ApiError::Execution(m) => (StatusCode::UNPROCESSABLE_ENTITY, "execution", m),
        };
        (
            status,
            axum::Json(json!({"status": "error", "errorType": kind, "error": msg})),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// GET query string and POST form body, as Prometheus takes them.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: Option<String>, body: &Bytes) -> Params {
        let mut pairs: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            pairs.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        pairs.extend(form_urlencoded::parse(body).into_owned());
        Params(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::BadData(format!("missing parameter {name:?}")))
    }

    fn time(&self, name: &str, default_ms: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None | Some("") => Ok(default_ms),
            Some(t) => parse_time(t).ok_or_else(|| {
                ApiError::BadData(format!(
                    "invalid parameter {name:?}: cannot parse {t:?} to a valid timestamp"
                ))
            }),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix seconds (possibly fractional) or RFC 3339.
fn parse_time(t: &str) -> Option<i64> {
    if let Ok(secs) = t.parse::<f64>() {
        return secs.is_finite().then(|| (secs * 1000.0).round() as i64);
    }
    let st = humantime::parse_rfc3339_weak(t).ok()?;
    Some(st.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// Seconds (possibly fractional) or a Prometheus duration (`15s`, `1m`).
fn parse_step(t: &str) -> Option<i64> {
    if let Ok(secs) = t.parse::<f64>() {
        return (secs.is_finite() && secs > 0.0).then(|| (secs * 1000.0).round() as i64);
    }
    humantime::parse_duration(t)
        .ok()
        .map(|d| d.as_millis() as i64)
}

fn metric(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(n, v)| (n.to_string(), Json::String(v.to_string())))
            .collect(),
    )
}

/// A query's answer as the Prometheus API's JSON, written straight into
/// the response body: building a `serde_json::Value` tree first took
/// several allocations per sample, most of a one-series query's time.
#[derive(serde::Serialize)]
struct Answer<'a> {
    status: &'static str,
    data: AnswerData<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

struct AnswerData<'a>(&'a Value);

impl serde::Serialize for AnswerData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        match self.0 {
            Value::Scalar(t, v) => {
                map.serialize_entry("resultType", "scalar")?;
                map.serialize_entry("result", &Point(*t, *v))?;
            }
            Value::String(t, text) => {
                map.serialize_entry("resultType", "string")?;
                map.serialize_entry("result", &(*t as f64 / 1000.0, text))?;
            }
            Value::Vector(v) => {
                map.serialize_entry("resultType", "vector")?;
                let elems = v.iter().map(|(l, t, x)| Elem {
                    metric: Metric(l),
                    value: Point(*t, *x),
                });
                map.serialize_entry("result", &Seq::new(elems))?;
            }
            Value::Matrix(m) => {
                map.serialize_entry("resultType", "matrix")?;
                let series = m.iter().map(|s| Series {
                    metric: Metric(&s.labels),
                    values: Seq::new(s.samples.iter().map(|&(t, x)| Point(t, x))),
                });
                map.serialize_entry("result", &Seq::new(series))?;
            }
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Elem<'a> {
    metric: Metric<'a>,
    value: Point,
}

#[derive(serde::Serialize)]
#[serde(bound(serialize = "I: Iterator<Item = Point>"))]
struct Series<'a, I: Iterator<Item = Point>> {
    metric: Metric<'a>,
    values: Seq<I>,
}

/// `[seconds, "value"]`.
struct Point(i64, f64);

impl serde::Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&(self.0 as f64 / 1000.0))?;
        t.serialize_element(&format_value(self.1))?;
        t.end()
    }
}

struct Metric<'a>(&'a Labels);

impl serde::Serialize for Metric<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// A sequence written from an iterator, once.
struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I> Seq<I> {
    fn new(items: I) -> Seq<I> {
        Seq(std::cell::Cell::new(Some(items)))
    }
}

impl<I: Iterator<Item = T>, T: serde::Serialize> serde::Serialize for Seq<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.take().into_iter().flatten())
    }
}

fn success_value(value: &Value, warnings: Vec<String>) -> Response {
    let answer = Answer {
        status: "success",
        data: AnswerData(value),
        warnings,
    };
    match serde_json::to_vec(&answer) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn success(data: Json, warnings: Vec<String>) -> Response {
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    axum::Json(body).into_response()
}

/// What a query needs from the cluster: its aggregations that fold,
/// folded where the data lives, and for the rest what every selector
/// needs, once per distinct selection (the engine then takes the series
/// over without a copy).
async fn fetch(
    node: &Arc<Node>,
    expr: &str,
    (start_ms, end_ms, step_ms): (i64, i64, i64),
    opts: &QueryOptions,
) -> Result<(FetchedSource, Folded, Vec<String>), ApiError> {
    let mut warnings = BTreeSet::new();
    let mut folded = Folded::new();
    for index in 0..store::query::foldable_count(expr)? {
        let plan = FoldPlan::new(expr, index, start_ms, end_ms, step_ms, opts)?;
        let req = FoldRequest {
            partitions: Vec::new(),
            expr: expr.to_string(),
            index,
            start_ms,
            end_ms,
            step_ms,
        };
        let answer = node.gather_fold(&plan, req).await;
        node.metrics.add_fold(answer.is_some());
        if let Some((partial, w)) = answer {
            warnings.extend(w);
            folded.insert(index, partial);
        }
    }
    let selections = store::query::selectors(expr, start_ms, end_ms, opts, &folded)?;
    let mut source = FetchedSource::new(selections);
    for (i, sel) in source.selections().into_iter().enumerate() {
        let gathered = node.gather(&sel.matchers, sel.start_ms, sel.end_ms).await;
        warnings.extend(gathered.warnings());
        source.fill(i, gathered.parts.into_iter().flatten().collect());
    }
    Ok((source, folded, warnings.into_iter().collect()))
}

async fn query(State(node): State<Arc<Node>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    let params = Params::new(q, &body);
    let parsed = (|| -> Result<_, ApiError> {
        let expr = params.required("query")?.to_string();
        let t = params.time("time", now_ms())?;
        Ok((expr, t))
    })();
    timed(&node, async {
        let (expr, t) = parsed?;
        // One step; its length does not matter.
        evaluate(&node, expr, (t, t, 1), move |source, expr, opts, folded| {
            store::query::instant_query_folded(source, expr, t, opts, folded)
        })
        .await
    })
    .await
}

async fn query_range(
    State(node): State<Arc<Node>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let params = Params::new(q, &body);
    let parsed = (|| -> Result<_, ApiError> {
        let expr = params.required("query")?.to_string();
        let start = parse_time(params.required("start")?)
            .ok_or_else(|| ApiError::BadData("invalid parameter \"start\"".into()))?;
        let end = parse_time(params.required("end")?)
            .ok_or_else(|| ApiError::BadData("invalid parameter \"end\"".into()))?;
        let step = parse_step(params.required("step")?).ok_or_else(|| {
            ApiError::BadData(
                "invalid parameter \"step\": a positive duration or number of seconds".into(),
            )
        })?;
        Ok((expr, start, end, step))
    })();
    timed(&node, async {
        let (expr, start, end, step) = parsed?;
        evaluate(
            &node,
            expr,
            (start, end, step),
            move |source, expr, opts, folded| {
                store::query::range_query_folded(source, expr, start, end, step, opts, folded)
            },
        )
        .await
    })
    .await
}

/// Counts a query and its time in the node's metrics.
async fn timed(node: &Node, query: impl std::future::Future<Output = ApiResult>) -> ApiResult {
    let started = Instant::now();
    let result = query.await;
    node.metrics
        .add_query(started.elapsed().as_micros() as u64, result.is_ok());
    result
}

/// Gathers what `expr` needs over `[start, end]` and evaluates it off the
/// async workers.
async fn evaluate(
    node: &Arc<Node>,
    expr: String,
    steps: (i64, i64, i64),
    eval: impl FnOnce(&FetchedSource, &str, &QueryOptions, Folded) -> Result<Value, QueryError>
        + Send
        + 'static,
) -> ApiResult {
    let opts = QueryOptions::default();
    let (source, folded, warnings) = fetch(node, &expr, steps, &opts).await?;
    let value = tokio::task::spawn_blocking(move || eval(&source, &expr, &opts, folded))
        .await
        .map_err(|e| ApiError::Execution(e.to_string()))??;
    Ok(success_value(&value, warnings))
}

/// The series matching any `match[]` selector (all series without one).
async fn matching_series(
    node: &Arc<Node>,
    params: &Params,
) -> Result<(Vec<Labels>, Vec<String>), ApiError> {
    let start = params.time("start", ALL_TIME.0)?;
    let end = params.time("end", ALL_TIME.1)?;
    let mut selectors: Vec<String> = params
        .all("match[]")
        .into_iter()
        .map(str::to_string)
        .collect();
    if selectors.is_empty() {
        selectors.push("{__name__=~\".+\"}".into());
    }
    let mut out = BTreeSet::new();
    let mut warnings = BTreeSet::new();
    for sel in selectors {
        let selections =
            store::query::selectors(&sel, end, end, &QueryOptions::default(), &Folded::new())?;
        for s in selections {
            let matchers: Vec<Matcher> = s.matchers;
            let gathered = node.gather(&matchers, start, end).await;
            warnings.extend(gathered.warnings());
            out.extend(gathered.parts.into_iter().flatten().map(|s| s.labels));
        }
    }
    Ok((out.into_iter().collect(), warnings.into_iter().collect()))
}

async fn series(State(node): State<Arc<Node>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    let params = Params::new(q, &body);
    if params.all("match[]").is_empty() {
        return Err(ApiError::BadData("no match[] parameter provided".into()));
    }
    let (series, warnings) = matching_series(&node, &params).await?;
    Ok(success(
        Json::Array(series.iter().map(metric).collect()),
        warnings,
    ))
}

async fn labels(State(node): State<Arc<Node>>, RawQuery(q): RawQuery, body: Bytes) -> ApiResult {
    let params = Params::new(q, &body);
    let (series, warnings) = matching_series(&node, &params).await?;
    let names: BTreeSet<&str> = series
        .iter()
        .flat_map(|l| l.iter().map(|(n, _)| n))
        .collect();
    Ok(success(json!(names), warnings))
}

async fn label_values(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let params = Params::new(q, &Bytes::new());
    let (series, warnings) = matching_series(&node, &params).await?;
    let values: BTreeSet<&str> = series.iter().filter_map(|l| l.get(&name)).collect();
    Ok(success(json!(values), warnings))
}

async fn buildinfo() -> Response {
    success(
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "revision": "",
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
        }),
        Vec::new(),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut extra = String::new();
    let mem = node.store.memory_stats();
    let _ = writeln!(
        extra,
        "# TYPE tandem_store_series gauge\ntandem_store_series {}",
        mem.series
    );
    let _ = writeln!(
        extra,
        "# TYPE tandem_store_samples gauge\ntandem_store_samples {}",
        mem.head_samples
    );
    let _ = writeln!(
        extra,
        "# TYPE tandem_store_index_bytes gauge\ntandem_store_index_bytes {}",
        mem.index_bytes
    );
    let _ = writeln!(
        extra,
        "# TYPE tandem_store_head_bytes gauge\ntandem_store_head_bytes {}",
        mem.head_bytes
    );
    let _ = writeln!(
        extra,
        "# HELP tandem_heap_allocated_bytes Bytes the process has allocated and not freed (the store, buffers, connections); resident memory adds the allocator's free pages and the mapped files.\n# TYPE tandem_heap_allocated_bytes gauge\ntandem_heap_allocated_bytes {}",
        crate::alloc::heap_bytes()
    );
    let _ = writeln!(
        extra,
        "# TYPE tandem_map_epoch gauge\ntandem_map_epoch {}",
        node.map().epoch.0
    );
    let _ = writeln!(extra, "# HELP tandem_partition_last_lsn Last log position per local partition copy (replication lag = primary's minus secondary's).\n# TYPE tandem_partition_last_lsn gauge");
    for p in node.store.partition_ids() {
        if let Some(part) = node.store.partition(p) {
            let _ = writeln!(
                extra,
                "tandem_partition_last_lsn{{partition=\"{}\"}} {}",
                p.0,
                part.last_lsn().0
            );
        }
    }
    let _ = writeln!(extra, "# HELP tandem_partition_written_bytes_total Bytes of records appended to this copy by live writes, as primary or replica (not catch-up).\n# TYPE tandem_partition_written_bytes_total counter");
    for (p, w) in node.written.iter().enumerate() {
        let w = w.load(std::sync::atomic::Ordering::Relaxed);
        if w > 0 {
            let _ = writeln!(
                extra,
                "tandem_partition_written_bytes_total{{partition=\"{p}\"}} {w}"
            );
        }
    }
    let (lagging, resync_bytes, corrupted) = {
        let progress = node.catchup.lock().expect("poisoned");
        (
            progress.report().1,
            progress.bytes_received,
            progress.corrupted(),
        )
    };
    let _ = writeln!(
        extra,
        "# HELP tandem_partitions_corrupted Local partition copies found damaged at open and not yet refetched.\n# TYPE tandem_partitions_corrupted gauge\ntandem_partitions_corrupted {corrupted}"
    );
    let _ = writeln!(
        extra,
        "# HELP tandem_catchup_bytes_received_total Log and snapshot bytes this node pulled while catching up.\n# TYPE tandem_catchup_bytes_received_total counter\ntandem_catchup_bytes_received_total {resync_bytes}"
    );
    let _ = writeln!(extra, "# TYPE tandem_catchup_lag_lsn gauge");
    for (p, lag) in lagging {
        let _ = writeln!(
            extra,
            "tandem_catchup_lag_lsn{{partition=\"{}\"}} {lag}",
            p.0
        );
    }
    let body = node.metrics.render(&extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Seals every local partition's head into a chunk file now (and trims its
/// log), as the seal policy would later: for backups and for measuring the
/// bytes on disk. Answers how many partitions were sealed.
async fn flush(State(node): State<Arc<Node>>) -> Response {
    let sealed = tokio::task::spawn_blocking(move || node.seal_all()).await;
    match sealed {
        Ok(Ok(n)) => (StatusCode::OK, format!("sealed {n} partitions\n")).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flush failed: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("flush failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthy() -> &'static str {
    "tandem is healthy\n"
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    let map = node.map();
    match map.state_of(node.id) {
        Some(controller::NodeState::Active) => {
            (StatusCode::OK, "tandem is ready\n").into_response()
        }
        state => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {} is {:?}, not Active\n", node.id, state),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_prometheus() {
        for (v, s) in [
            (1.0, "1"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1e21, "1000000000000000000000"),
        ] {
            assert_eq!(format_value(v), s);
        }
        assert_eq!(
            serde_json::to_value(Point(1_435_781_451_781, 1.0)).unwrap(),
            json!([1435781451.781, "1"])
        );
        // A whole answer, as Prometheus shapes it.
        let m = Value::Matrix(vec![store::SeriesData {
            labels: Labels::new(vec![
                ("__name__".into(), "m".into()),
                ("a".into(), "b".into()),
            ]),
            samples: vec![(1_000, 2.5), (2_000, f64::NAN)],
        }]);
        let answer = Answer {
            status: "success",
            data: AnswerData(&m),
            warnings: vec!["w".into()],
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"status": "success", "warnings": ["w"], "data": {"resultType": "matrix", "result": [
                {"metric": {"__name__": "m", "a": "b"}, "values": [[1.0, "2.5"], [2.0, "NaN"]]}
            ]}})
        );
        let v = Value::Vector(vec![(Labels::default(), 3_000, 1.0)]);
        let answer = Answer {
            status: "success",
            data: AnswerData(&v),
            warnings: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {}, "value": [3.0, "1"]}
            ]}})
        );
    }

    #[test]
    fn parses_times_and_steps() {
        assert_eq!(parse_time("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Some(1_435_781_451_781)
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_step("15"), Some(15_000));
        assert_eq!(parse_step("1m"), Some(60_000));
        assert_eq!(parse_step("-1"), None);
    }
}
