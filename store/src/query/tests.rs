//! Unit tests of the PromQL engine: data-driven cases checked against Prometheus' documented semantics.

use super::*;
use crate::source::SeriesData;

/// Builds a series from `metric{k=v,...}` and `(seconds, value)` samples.
fn s(spec: &str, points: &[(i64, f64)]) -> SeriesData {
    let (name, rest) = spec.split_once('{').unwrap_or((spec, "}"));
    let mut pairs = vec![];
    if !name.is_empty() {
        pairs.push(("__name__".to_string(), name.to_string()));
    }
    for kv in rest
        .trim_end_matches('}')
        .split(',')
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap();
        pairs.push((k.to_string(), v.to_string()));
    }
    SeriesData {
        labels: Labels::new(pairs),
        samples: points.iter().map(|&(t, v)| (t * 1000, v)).collect(),
    }
}

fn render_labels(l: &Labels) -> String {
    let name = l.get("__name__").unwrap_or("");
    let rest: Vec<String> = l
        .iter()
        .filter(|(n, _)| *n != "__name__")
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// One line per element, `labels value` (matrices: `labels v@t ...`).
fn render(r: Result<Value>) -> Vec<String> {
    match r {
        Err(e) => vec![format!("error: {e}")],
        Ok(Value::Scalar(_, v)) => vec![format!("scalar {v}")],
        Ok(Value::String(_, s)) => vec![format!("string {s}")],
        Ok(Value::Vector(v)) => v
            .iter()
            .map(|(l, _, v)| format!("{} {v}", render_labels(l)))
            .collect(),
        Ok(Value::Matrix(m)) => m
            .iter()
            .map(|s| {
                let pts: Vec<String> = s
                    .samples
                    .iter()
                    .map(|(t, v)| format!("{v}@{}", t / 1000))
                    .collect();
                format!("{} {}", render_labels(&s.labels), pts.join(" "))
            })
            .collect(),
    }
}

fn lines(expected: &str) -> Vec<String> {
    expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Runs an instant query at `time_s` over `data` and compares the result,
/// in any order, with `expected` (one element per line).
fn check(data: &[SeriesData], query: &str, time_s: i64, expected: &str) {
    let source = VecSource::new(data.to_vec());
    let mut got = render(instant_query(
        &source,
        query,
        time_s * 1000,
        &QueryOptions::default(),
    ));
    let mut want = lines(expected);
    got.sort();
    want.sort();
    assert_eq!(got, want, "query {query} at {time_s}s");
}

/// Like [`check`] but the order of the result matters.
fn check_ordered(data: &[SeriesData], query: &str, time_s: i64, expected: &str) {
    let source = VecSource::new(data.to_vec());
    let got = render(instant_query(
        &source,
        query,
        time_s * 1000,
        &QueryOptions::default(),
    ));
    assert_eq!(got, lines(expected), "query {query} at {time_s}s");
}

fn cpu() -> Vec<SeriesData> {
    vec![
        s("cpu{resource=vm1,mode=user}", &[(60, 1.0)]),
        s("cpu{resource=vm1,mode=sys}", &[(60, 2.0)]),
        s("cpu{resource=vm2,mode=user}", &[(60, 3.0)]),
        s("cpu{resource=vm2,mode=sys}", &[(60, 4.0)]),
    ]
}

#[test]
fn selectors_lookback_offset_and_at() {
    let d = [s("m{resource=a}", &[(0, 1.0), (60, 2.0), (120, 3.0)])];
    check(&d, "m", 60, "m{resource=a} 2");
    check(&d, "m", 119, "m{resource=a} 2");
    // The lookback window is left-open: (t-5m, t].
    check(&d, "m", 419, "m{resource=a} 3");
    check(&d, "m", 420, "");
    check(&d, "m", 299, "m{resource=a} 3");
    check(&d, "m", 59, "m{resource=a} 1");
    check(&d, "m offset 1m", 120, "m{resource=a} 2");
    check(&d, "m @ 60", 1000, "m{resource=a} 2");
    check(&d, "m @ 120 offset 1m", 0, "m{resource=a} 2");
    check(&d, "m{resource!=\"a\"}", 60, "");
    check(&d, "m{resource=~\"a|b\"}", 60, "m{resource=a} 2");
    check(&d, "{resource=\"a\"}", 60, "m{resource=a} 2");
    check(
        &d,
        "m{resource=\"x\" or resource=\"a\"}",
        60,
        "m{resource=a} 2",
    );
    // Range selectors: (t-range, t], and an instant query returns the matrix.
    check(&d, "m[1m]", 120, "m{resource=a} 3@120");
    check(&d, "m[61s]", 120, "m{resource=a} 2@60 3@120");
}

#[test]
fn a_moved_range_selector_answers_as_a_copied_one() {
    let d = [
        s(
            "m{resource=a}",
            &[(0, 1.0), (60, 2.0), (120, 3.0), (180, 4.0)],
        ),
        s("m{resource=b}", &[(30, 5.0), (200, 6.0)]),
        s("n{resource=a}", &[(60, 7.0)]),
    ];
    /// Answers with every sample, whatever the range asked: a source may
    /// hold more than a selection (as a `FetchedSource` does).
    struct Unbounded(VecSource);
    impl crate::Source for Unbounded {
        fn select(&self, m: &[crate::Matcher], _: i64, _: i64) -> Vec<SeriesData> {
            self.0.select(m, i64::MIN, i64::MAX)
        }
    }
    let source = Unbounded(VecSource::new(d.to_vec()));
    let o = QueryOptions::default();
    for q in [
        "m[1m]",
        "((m[2m]))",
        "m[90s] offset 1m",
        "m[3m] @ 200",
        "{resource=\"a\"}[10m]",
        "m{resource=\"c\"}[1m]",
    ] {
        for t in [0, 60, 119, 120, 121, 200, 500] {
            let t = t * 1000;
            let ast = super::parse(q).unwrap();
            let copied = super::eval::Ctx::load_folded(&source, &ast, t, t, &o, Folded::new())
                .and_then(|ctx| ctx.instant(&ast, t));
            let moved = instant_query(&source, q, t, &o);
            assert_eq!(format!("{moved:?}"), format!("{copied:?}"), "{q} at {t} ms");
        }
    }
}

#[test]
fn dotted_metric_names() {
    let d = [s("load.shortterm{resource=web01}", &[(10, 0.5)])];
    check(
        &d,
        "{__name__=\"load.shortterm\"}",
        10,
        "load.shortterm{resource=web01} 0.5",
    );
    check(
        &d,
        "{\"load.shortterm\"}",
        10,
        "load.shortterm{resource=web01} 0.5",
    );
    check(
        &d,
        "{\"load.shortterm\", resource=\"web01\"}",
        10,
        "load.shortterm{resource=web01} 0.5",
    );
    check(&d, "sum(rate({\"load.shortterm\"}[1m]))", 10, "");
    // promql-parser's lexer refuses a bare dotted name; the engine retries quoted.
    check(
        &d,
        "load.shortterm",
        10,
        "load.shortterm{resource=web01} 0.5",
    );
    check(
        &d,
        "load.shortterm{resource=\"web01\"} * 2",
        10,
        "{resource=web01} 1",
    );
    check(
        &d,
        "load.shortterm{resource=\"web01\"",
        10,
        "error: parse error: unexpected character after '.': 's'",
    );
}

#[test]
fn rate_increase_delta_follow_extrapolated_rate() {
    let steady = [s(
        "c",
        &[
            (10, 10.0),
            (20, 20.0),
            (30, 30.0),
            (40, 40.0),
            (50, 50.0),
            (60, 60.0),
        ],
    )];
    // Starts 10 s after the window start (< 1.1 x interval): extrapolate to it.
    check(&steady, "increase(c[1m])", 60, "{} 60");
    check(&steady, "rate(c[1m])", 60, "{} 1");
    check(&steady, "delta(c[1m])", 60, "{} 60");
    // Counter reset: 30 -> 5 adds 30.
    let reset = [s(
        "c",
        &[
            (10, 10.0),
            (20, 20.0),
            (30, 30.0),
            (40, 5.0),
            (50, 15.0),
            (60, 25.0),
        ],
    )];
    check(&reset, "increase(c[1m])", 60, "{} 54");
    check(&reset, "rate(c[1m])", 60, "{} 0.9");
    check(&reset, "resets(c[1m])", 60, "{} 1");
    // Starts inside the window: extrapolate by half an interval only.
    let late = [s("c", &[(40, 100.0), (50, 110.0), (60, 120.0)])];
    check(&late, "increase(c[1m])", 60, "{} 25");
    // ... and never below the counter's zero point.
    let from_one = [s("c", &[(40, 1.0), (50, 11.0), (60, 21.0)])];
    check(&from_one, "increase(c[1m])", 60, "{} 21");
    // Ends early: half an interval after the last sample.
    let early = [s("c", &[(10, 10.0), (20, 20.0), (30, 30.0)])];
    check(&early, "increase(c[1m])", 60, "{} 35");
    // A gauge may fall, and delta has no zero point.
    let gauge = [s("g", &[(20, 10.0), (40, 5.0), (60, 20.0)])];
    check(&gauge, "delta(g[1m])", 60, "{} 15");
    // One sample is not enough.
    check(&gauge, "rate(g[20s])", 60, "");
    let i = [s("c", &[(10, 10.0), (20, 20.0), (30, 30.0), (40, 5.0)])];
    check(&i, "irate(c[1m])", 40, "{} 0.5");
    check(&i, "idelta(c[1m])", 40, "{} -25");
    check(&i, "irate(c[1m])", 30, "{} 1");
}

#[test]
fn over_time_functions() {
    let d = [s(
        "g{resource=a}",
        &[(15, 1.0), (30, 2.0), (45, 3.0), (60, 4.0)],
    )];
    check(&d, "avg_over_time(g[1m])", 60, "{resource=a} 2.5");
    check(&d, "sum_over_time(g[1m])", 60, "{resource=a} 10");
    check(&d, "count_over_time(g[1m])", 60, "{resource=a} 4");
    check(&d, "min_over_time(g[1m])", 60, "{resource=a} 1");
    check(&d, "max_over_time(g[1m])", 60, "{resource=a} 4");
    check(&d, "last_over_time(g[1m])", 60, "g{resource=a} 4");
    check(&d, "present_over_time(g[1m])", 60, "{resource=a} 1");
    check(&d, "quantile_over_time(0.5, g[1m])", 60, "{resource=a} 2.5");
    check(&d, "quantile_over_time(2, g[1m])", 60, "{resource=a} inf");
    check(&d, "stdvar_over_time(g[1m])", 60, "{resource=a} 1.25");
    check(
        &d,
        "stddev_over_time(g[1m])",
        60,
        "{resource=a} 1.118033988749895",
    );
    check(&d, "changes(g[1m])", 60, "{resource=a} 3");
    // Subqueries: steps aligned to multiples of the step in (t - range, t].
    check(&d, "max_over_time(g[1m:15s])", 60, "{resource=a} 4");
    check(&d, "avg_over_time(g[1m:30s])", 60, "{resource=a} 3");
    check(&d, "g[1m:30s]", 60, "g{resource=a} 2@30 4@60");
    check(
        &d,
        "max_over_time(g[30s:15s] offset 15s)",
        60,
        "{resource=a} 3",
    );
    check(&d, "increase(g[1m:15s])", 60, "{resource=a} 4");
    check(
        &d,
        "max_over_time(deriv(g[30s])[1m:15s])",
        60,
        "{resource=a} 0.06666666666666667",
    );
    check(&d, "g[1d:1s]", 60, "error: exceeded maximum resolution of 11000 points per timeseries (86400 requested), try decreasing the query resolution (?step=XX)");
    // One per 15 s: slope 1/15 per second; at 60 s the line is at 4.
    check(&d, "deriv(g[1m])", 60, "{resource=a} 0.06666666666666667");
    check(&d, "predict_linear(g[1m], 150)", 60, "{resource=a} 14");
    check(&d, "deriv(g[15s])", 60, "");
    check(&d, "deriv(g[1m] offset 1m)", 60, "");
    check(&d, "avg_over_time(g[30s])", 60, "{resource=a} 3.5");
    check(
        &d,
        "avg_over_time(g[30s] offset 30s)",
        60,
        "{resource=a} 1.5",
    );
    let nan = [s("g", &[(10, f64::NAN), (20, 3.0), (30, 1.0)])];
    check(&nan, "min_over_time(g[1m])", 30, "{} 1");
    check(&nan, "max_over_time(g[1m])", 30, "{} 3");
}

#[test]
fn instant_vector_functions() {
    let d = [
        s("g{resource=a}", &[(10, -2.5)]),
        s("h{resource=a}", &[(10, 2.5)]),
    ];
    check(&d, "abs(g)", 10, "{resource=a} 2.5");
    check(&d, "ceil(g)", 10, "{resource=a} -2");
    check(&d, "floor(g)", 10, "{resource=a} -3");
    check(&d, "round(g)", 10, "{resource=a} -2");
    check(&d, "round(h)", 10, "{resource=a} 3");
    check(&d, "round(h, 2)", 10, "{resource=a} 2");
    check(&d, "clamp_min(g, 0)", 10, "{resource=a} 0");
    check(&d, "clamp_max(h, 1)", 10, "{resource=a} 1");
    check(&d, "clamp(h, 0, 1)", 10, "{resource=a} 1");
    check(&d, "clamp(h, 1, 0)", 10, "");
    check(&d, "time()", 10, "scalar 10");
    check(&d, "vector(time())", 10, "{} 10");
    check(&d, "scalar(h)", 10, "scalar 2.5");
    check(&d, "scalar({resource=\"a\"})", 10, "scalar NaN");
    check(&d, "absent_over_time(h[1m])", 30, "");
    check(&d, "absent_over_time(h[1m])", 71, "{} 1");
    check(
        &d,
        "absent_over_time(nope{resource=\"b\"}[1m])",
        10,
        "{resource=b} 1",
    );
    check(&d, "absent_over_time(h[1m:10s])", 30, "");
    check(&d, "absent(h)", 10, "");
    check(
        &d,
        "absent(nope{resource=\"b\",x=~\"y\"})",
        10,
        "{resource=b} 1",
    );
    check(&d, "absent(nope{a=\"1\",a=\"2\"})", 10, "{} 1");
    check(
        &d,
        "abs({resource=\"a\"})",
        10,
        "error: vector cannot contain metrics with the same labelset",
    );
    check(&d, "timestamp(g)", 70, "{resource=a} 10");
    check(&d, "timestamp(g offset 30s)", 70, "{resource=a} 10");
    check(&d, "timestamp(abs(g))", 70, "{resource=a} 70");
    check(
        &d,
        "histogram_quantile(0.9, g)",
        10,
        "error: unsupported: unsupported function: histogram_quantile",
    );
    check(
        &d,
        "label_replace(g, \"host\", \"$1-${1}\", \"resource\", \"(.*)\")",
        10,
        "g{host=a-a,resource=a} -2.5",
    );
    check(
        &d,
        "label_replace(g, \"host\", \"$1\", \"resource\", \"b\")",
        10,
        "g{resource=a} -2.5",
    );
    check(
        &d,
        "label_replace(g, \"host\", \"x\", \"nope\", \"\")",
        10,
        "g{host=x,resource=a} -2.5",
    );
    check(
        &d,
        "label_replace(g, \"resource\", \"\", \"resource\", \".*\")",
        10,
        "g{} -2.5",
    );
    check(
        &d,
        "label_replace({resource=\"a\"}, \"__name__\", \"\", \"resource\", \".*\")",
        10,
        "error: vector cannot contain metrics with the same labelset",
    );
    check(
        &d,
        "label_replace(g, \"bad-name\", \"\", \"resource\", \".*\")",
        10,
        "error: invalid destination label name in label_replace(): bad-name",
    );
    let source = VecSource::new(d.to_vec());
    let e = instant_query(
        &source,
        "label_replace(g, \"a\", \"b\", \"c\", \"(\")",
        10_000,
        &QueryOptions::default(),
    );
    assert!(
        matches!(e, Err(QueryError::Execution(m)) if m.starts_with("invalid regular expression"))
    );
    check_ordered(&cpu(), "sort(cpu)", 60, "cpu{mode=user,resource=vm1} 1\ncpu{mode=sys,resource=vm1} 2\ncpu{mode=user,resource=vm2} 3\ncpu{mode=sys,resource=vm2} 4");
    check_ordered(&cpu(), "sort_desc(cpu)", 60, "cpu{mode=sys,resource=vm2} 4\ncpu{mode=user,resource=vm2} 3\ncpu{mode=sys,resource=vm1} 2\ncpu{mode=user,resource=vm1} 1");
}

/// The parser panics on a bare number duration that is out of range; the
/// query answers a parse error instead (found by the token-soup proptest).
#[test]
fn out_of_range_number_durations_are_parse_errors() {
    let source = VecSource::new(cpu());
    for q in [
        "cpu offset 1e308",
        "cpu offset -1e308",
        "cpu[1e308]",
        "avg_over_time(cpu[1e300])",
    ] {
        let e = instant_query(&source, q, 60_000, &QueryOptions::default());
        assert!(matches!(e, Err(QueryError::Parse(_))), "{q}: {e:?}");
    }
}

/// A FetchedSource asked for a selection it was not filled for answers
/// from what it still holds, as a VecSource over it would.
#[test]
fn fetched_source_answers_an_unlisted_selection_from_what_it_holds() {
    let data = vec![
        s("m{resource=a}", &[(0, 1.0), (30, 2.0)]),
        s("m{resource=b}", &[(10, 3.0)]),
    ];
    let listed = selectors("m", 0, 60_000, &QueryOptions::default(), &Folded::new()).unwrap();
    let mut f = FetchedSource::new(listed);
    f.fill(0, data.clone());
    let only_a = [crate::Matcher::new("resource", crate::MatchOp::Equal, "a").unwrap()];
    let want = VecSource::new(data).select(&only_a, 0, 20_000);
    assert_eq!(want.len(), 1);
    assert_eq!(f.select(&only_a, 0, 20_000), want);
}

/// avg_over_time sums directly while the sum stays finite and otherwise
/// takes Prometheus' incremental mean, exactly as `Mean` does.
#[test]
fn avg_over_time_is_the_mean_with_and_without_overflow() {
    let cases: [&[f64]; 5] = [
        &[1.5, 2.25, -3.0, 7.0],
        &[1e308, 1e308, -1e308],
        &[f64::INFINITY, 1.0],
        &[f64::INFINITY, f64::NEG_INFINITY],
        &[1.0, f64::NAN, 2.0],
    ];
    for values in cases {
        let points: Vec<(i64, f64)> = (1..).zip(values.iter().copied()).collect();
        let source = VecSource::new(vec![s("m", &points)]);
        let got = match instant_query(
            &source,
            "avg_over_time(m[1m])",
            10_000,
            &QueryOptions::default(),
        ) {
            Ok(Value::Vector(v)) => v[0].2,
            other => panic!("{other:?}"),
        };
        let mut want = functions::Mean::default();
        values.iter().for_each(|&v| want.add(v));
        assert_eq!(
            got.to_bits(),
            want.value().to_bits(),
            "{values:?}: {got} vs {}",
            want.value()
        );
    }
}

#[test]
fn aggregations() {
    let d = cpu();
    check(&d, "sum(cpu)", 60, "{} 10");
    check(
        &d,
        "sum by (resource) (cpu)",
        60,
        "{resource=vm1} 3\n{resource=vm2} 7",
    );
    check(
        &d,
        "sum without (mode) (cpu)",
        60,
        "{resource=vm1} 3\n{resource=vm2} 7",
    );
    check(&d, "sum by (__name__) (cpu)", 60, "cpu{} 10");
    check(&d, "avg by (mode) (cpu)", 60, "{mode=user} 2\n{mode=sys} 3");
    check(&d, "min(cpu)", 60, "{} 1");
    check(
        &d,
        "max by (resource) (cpu)",
        60,
        "{resource=vm1} 2\n{resource=vm2} 4",
    );
    check(&d, "count(cpu)", 60, "{} 4");
    check(
        &d,
        "group by (resource) (cpu)",
        60,
        "{resource=vm1} 1\n{resource=vm2} 1",
    );
    check(&d, "stddev(cpu)", 60, "{} 1.118033988749895");
    check(&d, "stdvar(cpu)", 60, "{} 1.25");
    check(&d, "quantile(0.5, cpu)", 60, "{} 2.5");
    check(
        &d,
        "quantile by (resource) (0, cpu)",
        60,
        "{resource=vm1} 1\n{resource=vm2} 3",
    );
    check(&d, "count_values(\"v\", cpu > 2)", 60, "{v=3} 1\n{v=4} 1");
    check(
        &d,
        "count_values(\"v\", vector(1) or vector(1))",
        60,
        "{v=1} 1",
    );
    check(
        &d,
        "count_values(\"bad-name\", cpu)",
        60,
        "error: invalid label name \"bad-name\"",
    );
    check(&d, "sum(nothing)", 60, "");
    check_ordered(
        &d,
        "topk(2, cpu)",
        60,
        "cpu{mode=sys,resource=vm2} 4\ncpu{mode=user,resource=vm2} 3",
    );
    check_ordered(&d, "bottomk(1, cpu)", 60, "cpu{mode=user,resource=vm1} 1");
    check_ordered(
        &d,
        "topk by (resource) (1, cpu)",
        60,
        "cpu{mode=sys,resource=vm1} 2\ncpu{mode=sys,resource=vm2} 4",
    );
    check(&d, "topk(0, cpu)", 60, "");
    check(
        &d,
        "topk(scalar(nothing), cpu)",
        60,
        "error: parameter value is NaN",
    );
}

#[test]
fn topk_ties_keep_the_first_series_in_label_order() {
    let d = [
        s("m{resource=a}", &[(1, 5.0)]),
        s("m{resource=b}", &[(1, 5.0)]),
        s("m{resource=c}", &[(1, 5.0)]),
    ];
    check_ordered(&d, "topk(2, m)", 1, "m{resource=a} 5\nm{resource=b} 5");
    check_ordered(&d, "bottomk(1, m)", 1, "m{resource=a} 5");
}

#[test]
fn nan_handling() {
    let d = [
        s("m{resource=a}", &[(1, f64::NAN)]),
        s("m{resource=b}", &[(1, 1.0)]),
        s("m{resource=c}", &[(1, 3.0)]),
    ];
    check(&d, "m > 1", 1, "m{resource=c} 3");
    check(&d, "m != 1", 1, "m{resource=a} NaN\nm{resource=c} 3");
    check(
        &d,
        "m > bool 1",
        1,
        "{resource=a} 0\n{resource=b} 0\n{resource=c} 1",
    );
    check(&d, "max(m)", 1, "{} 3");
    check(&d, "min(m)", 1, "{} 1");
    check(&d, "max(m{resource=\"a\"})", 1, "{} NaN");
    check(&d, "sum(m)", 1, "{} NaN");
    check_ordered(&d, "topk(1, m)", 1, "m{resource=c} 3");
    check_ordered(
        &d,
        "bottomk(3, m)",
        1,
        "m{resource=b} 1\nm{resource=c} 3\nm{resource=a} NaN",
    );
    check_ordered(
        &d,
        "sort(m)",
        1,
        "m{resource=b} 1\nm{resource=c} 3\nm{resource=a} NaN",
    );
    check_ordered(
        &d,
        "sort_desc(m)",
        1,
        "m{resource=c} 3\nm{resource=b} 1\nm{resource=a} NaN",
    );
    check(&d, "quantile(0, m)", 1, "{} NaN");
}

#[test]
fn scalar_and_vector_scalar_operators() {
    let d = cpu();
    check(&d, "1 + 2 * 3", 60, "scalar 7");
    check(&d, "2 ^ 3 ^ 2", 60, "scalar 512");
    check(&d, "7 % 4", 60, "scalar 3");
    check(&d, "-7 % 4", 60, "scalar -3");
    check(&d, "1 / 0", 60, "scalar inf");
    check(&d, "1 > bool 2", 60, "scalar 0");
    check(&d, "-(1)", 60, "scalar -1");
    check(
        &d,
        "cpu{mode=\"user\"} * 2",
        60,
        "{mode=user,resource=vm1} 2\n{mode=user,resource=vm2} 6",
    );
    check(
        &d,
        "10 - cpu{mode=\"user\"}",
        60,
        "{mode=user,resource=vm1} 9\n{mode=user,resource=vm2} 7",
    );
    check(
        &d,
        "-cpu{mode=\"user\"}",
        60,
        "{mode=user,resource=vm1} -1\n{mode=user,resource=vm2} -3",
    );
    // A comparison filters and keeps the name; the vector's value survives on either side.
    check(
        &d,
        "cpu > 2",
        60,
        "cpu{mode=user,resource=vm2} 3\ncpu{mode=sys,resource=vm2} 4",
    );
    check(
        &d,
        "2 < cpu",
        60,
        "cpu{mode=user,resource=vm2} 3\ncpu{mode=sys,resource=vm2} 4",
    );
    check(
        &d,
        "cpu{resource=\"vm1\"} == bool 2",
        60,
        "{mode=user,resource=vm1} 0\n{mode=sys,resource=vm1} 1",
    );
}

#[test]
fn vector_matching() {
    let d = vec![
        s("used{resource=vm1}", &[(60, 1.0)]),
        s("used{resource=vm2}", &[(60, 3.0)]),
        s("total{resource=vm1}", &[(60, 4.0)]),
        s("total{resource=vm2}", &[(60, 4.0)]),
        s("total{resource=vm3}", &[(60, 8.0)]),
    ];
    check(
        &d,
        "used / total",
        60,
        "{resource=vm1} 0.25\n{resource=vm2} 0.75",
    );
    check(
        &d,
        "used / on(resource) total",
        60,
        "{resource=vm1} 0.25\n{resource=vm2} 0.75",
    );
    check(
        &d,
        "total > used",
        60,
        "total{resource=vm1} 4\ntotal{resource=vm2} 4",
    );
    check(
        &d,
        "total > bool used",
        60,
        "{resource=vm1} 1\n{resource=vm2} 1",
    );
    check(&d, "used / on() total", 60, "error: found duplicate series for the match group [] on the right hand-side of the operation: [Labels([(\"__name__\", \"total\"), (\"resource\", \"vm2\")]), Labels([(\"__name__\", \"total\"), (\"resource\", \"vm1\")])];many-to-many matching not allowed: matching labels must be unique on one side");
    check(&d, "sum(used) / on() group_left sum(total)", 60, "{} 0.25");
    check(
        &d,
        "total and used",
        60,
        "total{resource=vm1} 4\ntotal{resource=vm2} 4",
    );
    check(&d, "total unless used", 60, "total{resource=vm3} 8");
    check(
        &d,
        "used or total",
        60,
        "used{resource=vm1} 1\nused{resource=vm2} 3\ntotal{resource=vm3} 8",
    );
    check(
        &d,
        "total and on() vector(1)",
        60,
        "total{resource=vm1} 4\ntotal{resource=vm2} 4\ntotal{resource=vm3} 8",
    );
    let c = cpu();
    // Share of each mode in its resource: many-to-one with group_left.
    check(&c, "cpu / ignoring(mode) group_left sum by (resource) (cpu)", 60,
        "{mode=user,resource=vm1} 0.3333333333333333\n{mode=sys,resource=vm1} 0.6666666666666666\n{mode=user,resource=vm2} 0.42857142857142855\n{mode=sys,resource=vm2} 0.5714285714285714");
    check(&c, "sum by (resource) (cpu) / ignoring(mode) group_right cpu", 60,
        "{mode=user,resource=vm1} 3\n{mode=sys,resource=vm1} 1.5\n{mode=user,resource=vm2} 2.3333333333333335\n{mode=sys,resource=vm2} 1.75");
    check(&c, "cpu / ignoring(mode) sum by (resource) (cpu)", 60,
        "error: multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)");
    // group_left(label) copies the label from the one side.
    let info = vec![
        s("cpu{resource=vm1}", &[(60, 1.0)]),
        s("info{resource=vm1,os=linux}", &[(60, 1.0)]),
    ];
    check(
        &info,
        "cpu * on(resource) group_left(os) info",
        60,
        "{os=linux,resource=vm1} 1",
    );
    // Dropping names can collide.
    let two = vec![
        s("a{resource=x}", &[(60, 1.0)]),
        s("b{resource=x}", &[(60, 2.0)]),
    ];
    check(
        &two,
        "{resource=\"x\"} * 2",
        60,
        "error: vector cannot contain metrics with the same labelset",
    );
    check(&two, "rate({resource=\"x\"}[5m])", 60, "");
    check(
        &two,
        "{resource=\"x\"} > 0",
        60,
        "a{resource=x} 1\nb{resource=x} 2",
    );
}

#[test]
fn dashboard_queries() {
    let mut d = vec![];
    for r in ["vm1", "vm2"] {
        let pts: Vec<(i64, f64)> = (0..=30).map(|i| (i * 10, (i * 10) as f64)).collect();
        d.push(s(&format!("x{{resource={r}}}"), &pts));
    }
    // 290 * (300 / 290) / 300 in floating point, as Prometheus computes it.
    check(
        &d,
        "sum(rate(x[5m])) / count(x)",
        300,
        "{} 1.0000000000000002",
    );
    check(
        &d,
        "x > 290",
        300,
        "x{resource=vm1} 300\nx{resource=vm2} 300",
    );
}

#[test]
fn errors_and_limits() {
    let d = cpu();
    let source = VecSource::new(d);
    let o = QueryOptions::default();
    let e = instant_query(&source, "sum(", 0, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
    let e = instant_query(&source, "cpu[5m] @ 1 + x", 0, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
    let few = QueryOptions {
        max_series: 3,
        ..QueryOptions::default()
    };
    let e = instant_query(&source, "cpu", 60_000, &few).unwrap_err();
    assert_eq!(e, QueryError::TooManySeries { series: 4, max: 3 });
    assert_eq!(e.kind(), ErrorKind::Execution);
    // Prometheus bounds (end - start) / step by 11 000, so 11 001 points pass.
    let e = range_query(&source, "cpu", 0, 11_001_000, 1000, &o).unwrap_err();
    assert_eq!(
        e,
        QueryError::TooManyPoints {
            points: 11_002,
            max: 11_000
        }
    );
    assert!(range_query(&source, "cpu", 0, 11_000_000, 1000, &o).is_ok());
    assert!(matches!(
        range_query(&source, "cpu", 0, 10, 0, &o),
        Err(QueryError::BadParam(_))
    ));
    assert!(matches!(
        range_query(&source, "cpu", 10, 0, 1, &o),
        Err(QueryError::BadParam(_))
    ));
    assert!(matches!(
        range_query(&source, "cpu[5m]", 0, 10, 1, &o),
        Err(QueryError::BadParam(_))
    ));
    let e = instant_query(&source, "cpu{resource=~\"(\"}", 0, &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadData);
}

#[test]
fn range_query_steps() {
    let d = [s("m{resource=a}", &[(0, 1.0), (60, 2.0), (120, 3.0)])];
    let source = VecSource::new(d.to_vec());
    let got = render(range_query(
        &source,
        "m",
        0,
        480_000,
        60_000,
        &QueryOptions::default(),
    ));
    assert_eq!(
        got,
        vec!["m{resource=a} 1@0 2@60 3@120 3@180 3@240 3@300 3@360"]
    );
    let got = render(range_query(
        &source,
        "time()",
        0,
        120_000,
        60_000,
        &QueryOptions::default(),
    ));
    assert_eq!(got, vec!["{} 0@0 60@60 120@120"]);
}

#[test]
fn selectors_report_what_to_fetch() {
    let o = QueryOptions::default();
    let sel = selectors(
        "rate(a[5m]) / b offset 1m",
        600_000,
        900_000,
        &o,
        &Folded::new(),
    )
    .unwrap();
    let spans: Vec<(String, i64, i64)> = sel
        .iter()
        .map(|s| {
            (
                s.matchers
                    .iter()
                    .map(|m| format!("{}={}", m.name, m.value))
                    .collect(),
                s.start_ms,
                s.end_ms,
            )
        })
        .collect();
    assert_eq!(
        spans,
        vec![
            ("__name__=a".to_string(), 300_001, 900_000),
            ("__name__=b".to_string(), 240_001, 840_000),
        ]
    );
    assert_eq!(
        selectors("m{a=\"1\" or b=\"2\"}", 0, 0, &o, &Folded::new())
            .unwrap()
            .len(),
        2
    );
}

/// A source that hands out a wrong series and then says it could not
/// finish (as a partition rebuilt meanwhile does).
struct Unfinished(VecSource);

impl Source for Unfinished {
    fn select(&self, matchers: &[crate::Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        self.0.select(matchers, start_ms, end_ms)
    }

    fn for_each_series(
        &self,
        _: &[crate::Matcher],
        _: i64,
        _: i64,
        f: &mut crate::source::SeriesVisitor<'_>,
    ) -> bool {
        f(&Labels::default, &[(1_000, 1e9)]);
        false
    }
}

/// A streamed fold falls back to loading the series where it cannot
/// finish, or where a limit is exceeded (the loading path reports it with
/// the whole count).
#[test]
fn a_streamed_fold_that_cannot_finish_loads_the_series_instead() {
    let data = vec![
        s("m{resource=a}", &[(1, 1.0), (2, 2.0)]),
        s("m{resource=b,dc=eu}", &[(1, 10.0), (3, 30.0)]),
    ];
    let o = QueryOptions::default();
    let answer =
        |plan: &FoldPlan, source: &dyn Source| plan.fold(source).unwrap().unwrap().finish();
    for q in ["sum(m)", "max by (dc) (m)"] {
        let plan = FoldPlan::new(q, 0, 0, 4_000, 1_000, &o).unwrap();
        let want = answer(&plan, &VecSource::new(data.clone()));
        assert!(want.iter().any(|s| !s.samples.is_empty()), "{q}");
        let got = answer(&plan, &Unfinished(VecSource::new(data.clone())));
        assert_eq!(got, want, "{q}");
    }
    let one = QueryOptions {
        max_series: 1,
        ..QueryOptions::default()
    };
    let plan = FoldPlan::new("sum(m)", 0, 0, 4_000, 1_000, &one).unwrap();
    let Err(err) = plan.fold(&VecSource::new(data)) else {
        panic!("a fold over more series than the limit succeeded");
    };
    assert!(
        matches!(err, QueryError::TooManySeries { series: 2, max: 1 }),
        "{err}"
    );
}

#[test]
fn sources_merge_series() {
    let a = VecSource::new(vec![s("m{resource=a}", &[(1, 1.0), (3, 3.0)])]);
    let b = VecSource::new(vec![
        s("m{resource=a}", &[(2, 2.0), (3, 30.0)]),
        s("m{resource=b}", &[(1, 5.0)]),
    ]);
    let u = UnionSource::new(vec![&a, &b]);
    let m = crate::Matcher::new("__name__", crate::MatchOp::Equal, "m").unwrap();
    let got = u.select(&[m], 0, 2_000);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].samples, vec![(1_000, 1.0), (2_000, 2.0)]);
    // Unsorted input and a repeated series are merged, the later sample winning.
    let v = VecSource::new(vec![
        s("m", &[(3, 3.0), (1, 1.0)]),
        s("m", &[(1, 10.0), (2, 2.0)]),
    ]);
    assert_eq!(v.series_count(), 1);
    assert_eq!(
        v.select(&[], 0, 5_000)[0].samples,
        vec![(1_000, 10.0), (2_000, 2.0), (3_000, 3.0)]
    );
    let all = u.select(&[], 0, 10_000);
    assert_eq!(
        all[0].samples,
        vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0)]
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    const QUERIES: &[&str] = &[
        "m",
        "rate(m[1m])",
        "increase(m[90s] offset 30s)",
        "sum by (resource) (avg_over_time(m[2m]))",
        "max_over_time(m[1m]) > bool 5",
        "m * 2 + on(resource) group_left m{k=\"0\"}",
        "topk(1, m)",
        "m and m{k=\"1\"}",
        "count(m) + time()",
        "max_over_time(rate(m[1m])[2m:20s])",
        "sum_over_time(m[1m:7s] offset 10s)",
        // Shapes the series-major path takes (series_major.rs) and their
        // neighbours that it leaves to the generic one.
        "sum(m)",
        "avg by (k) (m offset 20s)",
        "min without (k) ((m))",
        "stddev(m @ 50)",
        "count by (__name__) ({__name__=~\"m|n\"})",
        "sum(rate({__name__=~\"m|n\"}[1m]))",
        "max(quantile_over_time(0.3, m[1m]))",
        "sum by (resource) (predict_linear(m[2m], 30))",
        "group(last_over_time({__name__=~\"m|n\"}[1m]))",
        "stdvar by (resource) (irate(m[1m] offset -10s))",
        "quantile by (resource) (0.5, n)",
        "max(avg_over_time(m[1m] @ 100))",
        // One selection asked for twice (FetchedSource copies, then moves).
        "sum(m) / count(m)",
        // A foldable aggregation under one that does not fold, and one
        // under a subquery (evaluated at its own steps: not folded).
        "topk(1, sum by (resource) (m))",
        "avg(m) - max_over_time(sum(m)[1m:10s])",
        // topk/bottomk fold with a literal k: ties, groups, names dropped.
        "bottomk by (k) (2, rate(m[1m]))",
        "topk(2, last_over_time({__name__=~\"m|n\"}[1m])) * 2",
    ];

    fn series() -> impl Strategy<Value = Vec<SeriesData>> {
        proptest::collection::vec(
            (
                0..3usize,
                0..2usize,
                // Now and then a gap about as long as the 5 min lookback.
                proptest::collection::vec(
                    (prop_oneof![9 => 1i64..40, 1 => 280i64..330], -5i32..20),
                    0..12,
                ),
                0..2usize,
            ),
            1..6,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .map(|(r, k, pts, name)| {
                    let mut t = 0;
                    let pts: Vec<(i64, f64)> = pts
                        .into_iter()
                        .map(|(dt, v)| {
                            t += dt;
                            (t, f64::from(v))
                        })
                        .collect();
                    let name = ["m", "n"][name];
                    s(&format!("{name}{{resource=r{r},k={k}}}"), &pts)
                })
                .collect()
        })
    }

    fn norm(v: f64) -> u64 {
        if v.is_nan() {
            u64::MAX
        } else {
            v.to_bits()
        }
    }

    const TOKENS: &[&str] = &[
        "m",
        "load.shortterm",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "5m",
        ":",
        "1s",
        "\"a\"",
        "resource",
        "=",
        "=~",
        "!=",
        ",",
        "+",
        "/",
        ">",
        "bool",
        "on",
        "(resource)",
        "group_left",
        "sum",
        "by",
        "topk",
        "rate",
        "avg_over_time",
        "offset",
        "@",
        "-",
        "1e308",
        "NaN",
        "0",
        "or",
        "unless",
        "label_replace",
        "count_values",
        "quantile",
        "absent",
        "scalar",
        "vector",
        "time()",
        "start()",
        "-1",
        "Inf",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any token soup is an answer or an error, never a panic.
        #[test]
        fn arbitrary_queries_never_panic(tokens in proptest::collection::vec(0..TOKENS.len(), 1..14), t in -1_000i64..1_000) {
            let source = VecSource::new(vec![s("m{resource=a}", &[(0, 1.0), (30, 2.0)])]);
            let q: Vec<&str> = tokens.iter().map(|&i| TOKENS[i]).collect();
            let q = q.join(" ");
            let _ = instant_query(&source, &q, t * 1000, &QueryOptions::default());
            let _ = range_query(&source, &q, t * 1000, t * 1000 + 60_000, 15_000, &QueryOptions::default());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// A query over what was fetched for each of its selections (how a
        /// node runs it, FetchedSource) answers as over all the data.
        #[test]
        fn fetched_selections_answer_as_the_whole_source(data in series(), q in 0..QUERIES.len(), start in 0i64..200, steps in 1i64..8, step in 1i64..40) {
            let all = VecSource::new(data);
            let o = QueryOptions::default();
            let (start, step) = (start * 1000, step * 1000);
            let end = start + (steps - 1) * step;
            let fetched = |start, end| {
                let mut f = FetchedSource::new(selectors(QUERIES[q], start, end, &o, &Folded::new()).unwrap());
                for (i, sel) in f.selections().into_iter().enumerate() {
                    f.fill(i, all.select(&sel.matchers, sel.start_ms, sel.end_ms));
                }
                f
            };
            let want = format!("{:?}", range_query(&all, QUERIES[q], start, end, step, &o));
            prop_assert_eq!(format!("{:?}", range_query(&fetched(start, end), QUERIES[q], start, end, step, &o)), want);
            let want = format!("{:?}", instant_query(&all, QUERIES[q], end, &o));
            prop_assert_eq!(format!("{:?}", instant_query(&fetched(end, end), QUERIES[q], end, &o)), want);
        }
    }

    /// Values equal up to rounding (sums folded in another order), NaN
    /// equal to NaN.
    fn close(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0 == y.0
                    && (x.1.to_bits() == y.1.to_bits()
                        || (x.1.is_nan() && y.1.is_nan())
                        || (x.1 - y.1).abs() <= 1e-9 * x.1.abs().max(y.1.abs()).max(1.0))
            })
    }

    fn close_values(got: &Value, want: &Value) -> bool {
        let as_series = |v: &Value| -> Vec<(Labels, Vec<(i64, f64)>)> {
            let mut out: Vec<_> = match v {
                Value::Matrix(m) => m
                    .iter()
                    .map(|s| (s.labels.clone(), s.samples.clone()))
                    .collect(),
                Value::Vector(v) => v
                    .iter()
                    .map(|(l, t, v)| (l.clone(), vec![(*t, *v)]))
                    .collect(),
                Value::Scalar(t, v) => vec![(Labels::default(), vec![(*t, *v)])],
                Value::String(..) => Vec::new(),
            };
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let (g, w) = (as_series(got), as_series(want));
        g.len() == w.len()
            && g.iter()
                .zip(&w)
                .all(|(a, b)| a.0 == b.0 && close(&a.1, &b.1))
    }

    /// The same values at the same steps, whatever their labels: topk
    /// over folded groups breaks ties in label order, not in the order in
    /// which one evaluator first saw each group.
    fn same_values(got: &Value, want: &Value) -> bool {
        let values = |v: &Value| -> Vec<(i64, u64)> {
            let mut out: Vec<(i64, u64)> = match v {
                Value::Matrix(m) => m
                    .iter()
                    .flat_map(|s| s.samples.iter().map(|&(t, v)| (t, norm(v))))
                    .collect(),
                Value::Vector(v) => v.iter().map(|(_, t, v)| (*t, norm(*v))).collect(),
                _ => Vec::new(),
            };
            out.sort_unstable();
            out
        };
        values(got) == values(want)
    }

    /// How a cluster answers `q`: every aggregation that folds is folded
    /// over each resource's series on its own (as nodes fold each
    /// partition) and the partials merged, last partition first; the rest
    /// is evaluated over what was fetched for it. `None` when some
    /// partition declined to fold.
    fn folded_query(
        data: &[SeriesData],
        q: &str,
        start: i64,
        end: i64,
        step: i64,
        instant: bool,
    ) -> Option<Result<Value>> {
        let o = QueryOptions::default();
        let mut parts: std::collections::BTreeMap<String, Vec<SeriesData>> = Default::default();
        for s in data {
            parts
                .entry(s.labels.get("resource").unwrap().to_string())
                .or_default()
                .push(s.clone());
        }
        let parts: Vec<VecSource> = parts.into_values().map(VecSource::new).collect();
        let mut folded = Folded::new();
        for i in 0..foldable_count(q).unwrap() {
            let plan = FoldPlan::new(q, i, start, end, step, &o).unwrap();
            let mut merged = plan.empty();
            for p in parts.iter().rev() {
                merged.merge(plan.fold(p).unwrap()?).unwrap();
            }
            // Across nodes: the merged partial travels as bytes.
            let mut bytes = Vec::new();
            merged.encode(&mut bytes);
            folded.insert(i, Partial::decode(&bytes).unwrap());
        }
        let all = VecSource::new(data.to_vec());
        let mut f = FetchedSource::new(selectors(q, start, end, &o, &folded).unwrap());
        for (i, sel) in f.selections().into_iter().enumerate() {
            f.fill(i, all.select(&sel.matchers, sel.start_ms, sel.end_ms));
        }
        Some(if instant {
            instant_query_folded(&f, q, end, &o, folded)
        } else {
            range_query_folded(&f, q, start, end, step, &o, folded)
        })
    }

    /// `fold_all` folds sources in runs and merges the runs: over more
    /// sources than a run holds it answers as one evaluator.
    #[test]
    fn fold_all_merges_runs_of_sources() {
        let parts: Vec<Box<VecSource>> = (0..40)
            .map(|r| {
                let series = s(&format!("m{{resource=r{r}}}"), &[(10, r as f64)]);
                Box::new(VecSource::new(vec![series]))
            })
            .collect();
        let o = QueryOptions::default();
        for (q, want) in [("sum(m)", "{} 780"), ("topk(1, m)", "m{resource=r39} 39")] {
            let plan = FoldPlan::new(q, 0, 10_000, 10_000, 1, &o).unwrap();
            let folded = Folded::from([(0, plan.fold_all(&parts).unwrap().unwrap())]);
            let got = instant_query_folded(&VecSource::default(), q, 10_000, &o, folded);
            assert_eq!(render(got), [want], "{q}");
        }
    }

    /// A folded topk lists what it keeps as the evaluator does: group by
    /// group (in label order), best first, equal values in label order.
    #[test]
    fn a_folded_topk_lists_its_elements_best_first() {
        let data = [
            s("m{resource=a,g=1}", &[(10, 1.0)]),
            s("m{resource=b,g=1}", &[(10, 3.0)]),
            s("m{resource=c,g=1}", &[(10, 2.0)]),
            s("m{resource=d,g=1}", &[(10, 3.0)]),
            s("m{resource=e,g=2}", &[(10, 4.0)]),
            s("m{resource=f,g=2}", &[(10, 5.0)]),
        ];
        let q = "topk by (g) (3, m)";
        let folded = render(folded_query(&data, q, 10_000, 10_000, 1, true).expect("topk folds"));
        let one = instant_query(
            &VecSource::new(data.to_vec()),
            q,
            10_000,
            &QueryOptions::default(),
        );
        assert_eq!(folded, render(one));
        assert_eq!(
            folded,
            [
                "m{g=1,resource=b} 3",
                "m{g=1,resource=d} 3",
                "m{g=1,resource=c} 2",
                "m{g=2,resource=f} 5",
                "m{g=2,resource=e} 4",
            ]
        );
        let folded = folded_query(&data, "bottomk(1, m)", 10_000, 10_000, 1, true);
        assert_eq!(
            render(folded.expect("bottomk folds")),
            ["m{g=1,resource=a} 1"]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// A query whose aggregations were folded partition by partition
        /// and merged answers as one evaluator over all the data, but for
        /// rounding; a partition declines only where one evaluator fails.
        #[test]
        fn folded_aggregations_answer_as_one_evaluator(data in series(), q in 0..QUERIES.len(), start in 0i64..200, steps in 1i64..8, step in 1i64..40) {
            let all = VecSource::new(data.clone());
            let o = QueryOptions::default();
            let (start, step) = (start * 1000, step * 1000);
            let end = start + (steps - 1) * step;
            let want = range_query(&all, QUERIES[q], start, end, step, &o);
            match folded_query(&data, QUERIES[q], start, end, step, false) {
                None => prop_assert!(want.is_err() || foldable_count(QUERIES[q]).unwrap() > 0),
                Some(Err(e)) => prop_assert_eq!(Err(e), want),
                Some(Ok(got)) => {
                    let want = want.unwrap();
                    let ties = QUERIES[q].starts_with("topk") && same_values(&got, &want);
                    prop_assert!(ties || close_values(&got, &want), "{:?}\nvs one evaluator: {:?}", got, want);
                }
            }
            let want = instant_query(&all, QUERIES[q], end, &o);
            if let Some(got) = folded_query(&data, QUERIES[q], end, end, 1, true) {
                match (got, want) {
                    (Ok(got), Ok(want)) => {
                        let ties = QUERIES[q].starts_with("topk") && same_values(&got, &want);
                        prop_assert!(ties || close_values(&got, &want), "{:?}\nvs one evaluator: {:?}", got, want);
                    }
                    (got, want) => prop_assert_eq!(got, want),
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// A range query equals the instant query at each of its steps.
        #[test]
        fn range_equals_instant_at_each_step(data in series(), q in 0..QUERIES.len(), start in 0i64..200, steps in 1i64..8, step in 1i64..40) {
            let source = VecSource::new(data);
            let o = QueryOptions::default();
            let (start, step) = (start * 1000, step * 1000);
            let end = start + (steps - 1) * step;
            let range = range_query(&source, QUERIES[q], start, end, step, &o);
            let mut expected: std::collections::BTreeMap<Labels, Vec<(i64, u64)>> = Default::default();
            let mut error = None;
            for k in 0..steps {
                let t = start + k * step;
                match instant_query(&source, QUERIES[q], t, &o) {
                    Ok(Value::Vector(v)) => for (l, _, v) in v { expected.entry(l).or_default().push((t, norm(v))) },
                    Ok(Value::Scalar(_, v)) => expected.entry(Labels::default()).or_default().push((t, norm(v))),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => { error = Some(e); break; }
                }
            }
            match (range, error) {
                (Err(e), Some(want)) => prop_assert_eq!(e, want),
                (Ok(Value::Matrix(m)), None) => {
                    let got: std::collections::BTreeMap<Labels, Vec<(i64, u64)>> = m.into_iter()
                        .map(|s| (s.labels, s.samples.into_iter().map(|(t, v)| (t, norm(v))).collect()))
                        .collect();
                    prop_assert_eq!(got, expected);
                }
                (got, want) => prop_assert!(false, "range {:?} vs instant error {:?}", got, want),
            }
        }
    }
}
