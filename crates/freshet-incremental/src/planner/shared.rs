//! Finding the subqueries a plan holds more than once, so that their operators are built and
//! stepped once ([`crate::operator::Shared`]).
//!
//! Two subplans are the same when their plans are equal but for the names DataFusion's
//! optimizer generates (`__common_expr_3` in one, `__common_expr_7` in the other) and read the
//! same source tables. The comparison is of the plans' full `Debug` text (every expression,
//! literal and schema; only a scan's table is left out there, which the source names stand in
//! for), with the generated names numbered by first appearance. Only stateful nodes
//! (aggregates, joins, DISTINCT, window functions) are shared: a stateless one costs its
//! readers little, and sharing the largest repeated subtrees covers what is below them.

use std::collections::HashMap;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;

use super::SourceResolver;
use crate::operator::{Operator, Readers, Reuse, Shared};

/// Names DataFusion's optimizer and decorrelation give to the expressions and subqueries they
/// introduce, numbered across the whole plan.
const GENERATED: [&str; 4] = [
    "__common_expr_",
    "__datafusion_extracted_",
    "__scalar_sq_",
    "__correlated_sq_",
];

/// The repeated subplans of one plan.
#[derive(Default)]
pub(crate) struct SharedPlans {
    /// By key: how many times the plan holds it (at least twice), and once its first copy is
    /// built, what makes its further readers.
    repeated: HashMap<String, Option<Readers>>,
}

impl SharedPlans {
    /// The stateful subplans `plan` holds more than once. A subplan inside a repeated one is
    /// counted in its first copy only (the further copies are not built).
    pub(crate) fn find(plan: &LogicalPlan, resolve: SourceResolver<'_>) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let _ = plan.apply(|node| {
            let Some(key) = key(node, resolve) else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let count = counts.entry(key).or_default();
            *count += 1;
            Ok(match count {
                1 => TreeNodeRecursion::Continue,
                _ => TreeNodeRecursion::Jump,
            })
        });
        Self {
            repeated: counts
                .into_iter()
                .filter(|(_, count)| *count > 1)
                .map(|(key, _)| (key, None))
                .collect(),
        }
    }

    /// The key of `plan` when the plan holds it more than once.
    pub(crate) fn repeated_key(&self, plan: &LogicalPlan, resolve: SourceResolver<'_>) -> Option<String> {
        if self.repeated.is_empty() {
            return None;
        }
        key(plan, resolve).filter(|key| self.repeated.contains_key(key))
    }

    /// A further reader of the subplan of `key`, if its first copy is built.
    pub(crate) fn reuse(
        &self,
        key: &str,
        schema: datafusion::arrow::datatypes::SchemaRef,
    ) -> Option<freshet_common::Result<Reuse>> {
        self.repeated.get(key)?.as_ref().map(|readers| readers.reuse(schema))
    }

    /// Makes the first copy of the subplan of `key` shared.
    pub(crate) fn share(&mut self, key: String, operator: Box<dyn Operator>) -> Box<dyn Operator> {
        let (shared, readers) = Shared::new(operator);
        self.repeated.insert(key, Some(readers));
        Box::new(shared)
    }
}

/// What identifies a stateful subplan up to generated names, with the tables its scans read;
/// `None` for other nodes and for plans reading a table that is not a source.
fn key(plan: &LogicalPlan, resolve: SourceResolver<'_>) -> Option<String> {
    if !matches!(
        plan,
        LogicalPlan::Aggregate(_) | LogicalPlan::Join(_) | LogicalPlan::Distinct(_) | LogicalPlan::Window(_)
    ) {
        return None;
    }
    let mut sources = Vec::new();
    let mut resolved = true;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match resolve(scan) {
                Some(source) => sources.push(source),
                None => {
                    resolved = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    resolved.then(|| generated_names_numbered(&format!("{sources:?}\n{plan:?}")))
}

/// `text` with each generated name (see [`GENERATED`]) renumbered by its first appearance.
pub(super) fn generated_names_numbered(text: &str) -> String {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("__") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let generated = GENERATED.iter().find_map(|prefix| {
            let digits = tail
                .strip_prefix(prefix)?
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            (digits > 0).then_some((prefix, prefix.len() + digits))
        });
        match generated {
            Some((prefix, len)) => {
                let next = seen.len();
                let number = *seen.entry(&tail[..len]).or_insert(next);
                out.push_str(prefix);
                out.push_str(&number.to_string());
                rest = &tail[len..];
            }
            None => {
                out.push_str("__");
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_numbered_by_first_appearance() {
        assert_eq!(
            generated_names_numbered("a: __common_expr_18 + __common_expr_3 as __common_expr_18, __x_1, t.__"),
            "a: __common_expr_0 + __common_expr_1 as __common_expr_0, __x_1, t.__"
        );
        assert_eq!(
            generated_names_numbered("__datafusion_extracted_61@0 __datafusion_extracted_"),
            "__datafusion_extracted_0@0 __datafusion_extracted_"
        );
    }
}
