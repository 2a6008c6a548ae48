//! Binary operators: arithmetic, comparisons (filter or `bool`), set operators, and vector matching (`on`, `ignoring`, `group_left/right`).

use std::collections::{HashMap, HashSet};

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::{check_unique, Ctx, Elem, Val};
use super::{QueryError, Result};
use crate::source::{Labels, METRIC_LABEL};

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Result<Op> {
        Ok(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            other => {
                return Err(QueryError::Unsupported(format!(
                    "unsupported binary operator {other}"
                )))
            }
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    /// Arithmetic yields a new quantity, so the metric name goes.
    fn drops_name(self) -> bool {
        matches!(
            self,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow | Op::Atan2
        )
    }

    /// `(value, keep)`: arithmetic always keeps; a comparison keeps the
    /// left value when it holds (NaN compares false, except `!=`).
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Op::Add => (l + r, true),
            Op::Sub => (l - r, true),
            Op::Mul => (l * r, true),
            Op::Div => (l / r, true),
            Op::Mod => (l % r, true),
            Op::Pow => (l.powf(r), true),
            Op::Atan2 => (l.atan2(r), true),
            Op::Eq => (l, l == r),
            Op::Ne => (l, l != r),
            Op::Gt => (l, l > r),
            Op::Lt => (l, l < r),
            Op::Ge => (l, l >= r),
            Op::Le => (l, l <= r),
            Op::And | Op::Or | Op::Unless => (f64::NAN, false),
        }
    }
}

pub(crate) fn binary(ctx: &Ctx, b: &BinaryExpr, t: i64) -> Result<Val> {
    let op = Op::parse(&b.op.to_string())?;
    let return_bool = b.return_bool();
    if let Some(m) = &b.modifier {
        if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
            return Err(QueryError::Unsupported(
                "fill modifiers are not supported".into(),
            ));
        }
    }
    let lhs = ctx.eval(&b.lhs, t)?;
    let rhs = ctx.eval(&b.rhs, t)?;
    let out = match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            let (v, keep) = op.apply(l, r);
            return Ok(Val::Scalar(if op.is_comparison() {
                f64::from(u8::from(keep))
            } else {
                v
            }));
        }
        (Val::Vector(v), Val::Scalar(s)) => vector_scalar(op, v, s, false, return_bool),
        (Val::Scalar(s), Val::Vector(v)) => vector_scalar(op, v, s, true, return_bool),
        (Val::Vector(l), Val::Vector(r)) => vector_vector(op, b, l, r, return_bool)?,
        _ => {
            return Err(QueryError::Execution(
                "binary operators need scalars or instant vectors".into(),
            ))
        }
    };
    check_unique(&out)?;
    Ok(Val::Vector(out))
}

fn vector_scalar(op: Op, v: Vec<Elem>, s: f64, scalar_left: bool, return_bool: bool) -> Vec<Elem> {
    v.into_iter()
        .filter_map(|e| {
            let (l, r) = if scalar_left {
                (s, e.value)
            } else {
                (e.value, s)
            };
            let (mut value, mut keep) = op.apply(l, r);
            if op.is_comparison() {
                // The vector's value survives a filter, whichever side it is on.
                value = e.value;
            }
            if return_bool {
                value = f64::from(u8::from(keep));
                keep = true;
            }
            keep.then(|| {
                if op.drops_name() || return_bool {
                    e.unnamed(value)
                } else {
                    Elem { value, ..e }
                }
            })
        })
        .collect()
}

/// The labels two elements are matched on.
struct Matching<'a> {
    on: bool,
    names: &'a [String],
}

impl Matching<'_> {
    fn signature<'l>(&self, l: &'l Labels) -> Vec<(&'l str, &'l str)> {
        l.iter()
            .filter(|(n, _)| {
                let listed = self.names.iter().any(|x| x == n);
                if self.on {
                    listed
                } else {
                    !listed && *n != METRIC_LABEL
                }
            })
            .collect()
    }
}

fn vector_vector(
    op: Op,
    b: &BinaryExpr,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    return_bool: bool,
) -> Result<Vec<Elem>> {
    let modifier = b.modifier.as_ref();
    let matching = match modifier.and_then(|m| m.matching.as_ref()) {
        Some(LabelModifier::Include(l)) => Matching {
            on: true,
            names: &l.labels,
        },
        Some(LabelModifier::Exclude(l)) => Matching {
            on: false,
            names: &l.labels,
        },
        None => Matching {
            on: false,
            names: &[],
        },
    };
    match op {
        Op::And | Op::Or | Op::Unless => return Ok(set_op(op, &matching, lhs, rhs)),
        _ => {}
    }
    let card = modifier
        .map(|m| &m.card)
        .unwrap_or(&VectorMatchCardinality::OneToOne);
    let (include, one_to_many): (&[String], bool) = match card {
        VectorMatchCardinality::OneToOne => (&[], false),
        VectorMatchCardinality::ManyToOne(l) => (&l.labels, false),
        VectorMatchCardinality::OneToMany(l) => (&l.labels, true),
        VectorMatchCardinality::ManyToMany => {
            return Err(QueryError::Execution(
                "many-to-many matching is only for set operators".into(),
            ))
        }
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let (many, one) = if one_to_many {
        (&rhs, &lhs)
    } else {
        (&lhs, &rhs)
    };
    let mut one_sigs: HashMap<Vec<(&str, &str)>, &Elem> = HashMap::with_capacity(one.len());
    for e in one {
        let sig = matching.signature(&e.labels);
        if let Some(dup) = one_sigs.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group {sig:?} on the {side} hand-side of the operation: [{:?}, {:?}];many-to-many matching not allowed: matching labels must be unique on one side",
                e.labels, dup.labels
            )));
        }
        one_sigs.insert(sig, e);
    }
    let mut matched: HashMap<Vec<(&str, &str)>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for m in many {
        let sig = matching.signature(&m.labels);
        let Some(o) = one_sigs.get(&sig) else {
            continue;
        };
        let (l, r) = if one_to_many {
            (o.value, m.value)
        } else {
            (m.value, o.value)
        };
        let (mut value, keep) = op.apply(l, r);
        if return_bool {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let labels = result_labels(
            &m.labels,
            &o.labels,
            op,
            one_to_one,
            &matching,
            include,
            return_bool,
        );
        let seen = matched.entry(sig).or_default();
        if one_to_one && !seen.is_empty() {
            return Err(QueryError::Execution(
                "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
            ));
        }
        if !seen.insert(labels.clone()) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Elem::new(labels, value));
    }
    Ok(out)
}

/// Prometheus' `resultMetric`: the "many" side's labels, without the name
/// for arithmetic (or `bool`), reduced to the matching labels for
/// one-to-one matching, plus the `group_x` labels copied from the "one" side.
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: Op,
    one_to_one: bool,
    matching: &Matching,
    include: &[String],
    return_bool: bool,
) -> Labels {
    let mut pairs: Vec<(String, String)> = many
        .iter()
        .filter(|(n, _)| !(*n == METRIC_LABEL && (op.drops_name() || return_bool)))
        .filter(|(n, _)| {
            if !one_to_one {
                return true;
            }
            let listed = matching.names.iter().any(|x| x == n);
            listed == matching.on
        })
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for name in include {
        pairs.retain(|(n, _)| n != name);
        if let Some(v) = one.get(name).filter(|v| !v.is_empty()) {
            pairs.push((name.clone(), v.to_string()));
        }
    }
    Labels::new(pairs)
}

/// `and`, `or`, `unless`: match on labels (all but the name by default) and
/// keep elements as they are.
fn set_op(op: Op, matching: &Matching, lhs: Vec<Elem>, rhs: Vec<Elem>) -> Vec<Elem> {
    let rhs_sigs: HashSet<Vec<(&str, &str)>> =
        rhs.iter().map(|e| matching.signature(&e.labels)).collect();
    match op {
        Op::And => lhs
            .iter()
            .filter(|e| rhs_sigs.contains(&matching.signature(&e.labels)))
            .cloned()
            .collect(),
        Op::Unless => lhs
            .iter()
            .filter(|e| !rhs_sigs.contains(&matching.signature(&e.labels)))
            .cloned()
            .collect(),
        _ => {
            let lhs_sigs: HashSet<Vec<(&str, &str)>> =
                lhs.iter().map(|e| matching.signature(&e.labels)).collect();
            let extra: Vec<Elem> = rhs
                .iter()
                .filter(|e| !lhs_sigs.contains(&matching.signature(&e.labels)))
                .cloned()
                .collect();
            lhs.iter().cloned().chain(extra).collect()
        }
    }
}
