//! `kiln rules`: every rewrite rule, its pass, what it does and whether it
//! is exact.

use super::output::write_stdout;
use super::summary::table;
use clap::Args;
use kiln::passes::approx::AttentionKind;
use kiln::passes::manager::{Pass, PASS_NAMES};
use serde::Serialize;

/// List every rule with its pass, kind and a one-line description.
#[derive(Args, Debug)]
#[command(long_about = "List every rewrite rule kiln has: its name, the pass that runs it (for --passes), \
    whether it is exact or approximate, and what it does.\n\n\
    Exact rules are equalities and run inside saturation. Approximate substitutions (softmax-free \
    attention) are not equalities: they are opt-in transformations applied after saturation \
    (`kiln optimize --attention KIND`), each measured against the exact graph.")]
pub struct RulesArgs {
    /// Print a JSON array of {"name", "pass", "kind", "description"} instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of the listing.
#[derive(Serialize, Debug, PartialEq)]
pub struct RuleInfo {
    /// The rule's name, as reports and explanations show it.
    pub name: String,
    /// The pass that runs it, or how an approximate substitution is asked for.
    pub pass: String,
    /// `exact` or `approximate`.
    pub kind: &'static str,
    /// What it does.
    pub description: String,
}

/// One line on what an approximate substitution does; the match is
/// exhaustive, so a new kind in the library needs its line here.
fn approximate_description(kind: AttentionKind) -> &'static str {
    match kind {
        AttentionKind::Linear => {
            "softmax attention -> kernelized linear attention (elu+1 features, Q(KᵀV) with a normalizer; prefix sums when causal)"
        }
        AttentionKind::Sigmoid => "softmax attention -> sigmoid attention with bias b = -log(n)",
        AttentionKind::Softplus => {
            "softmax attention -> softplus attention with l1 normalization and a length-dependent scale"
        }
        AttentionKind::Soft => {
            "softmax attention -> SOFT Gaussian-kernel attention (Nyström landmarks, Newton-Schulz pseudo-inverse)"
        }
    }
}

/// Every rule: the library's, each under the first pass that runs it, then
/// the approximate attention substitutions of `kiln_passes::approx`.
pub fn rule_listing() -> Vec<RuleInfo> {
    let passes: Vec<Pass> = PASS_NAMES.iter().filter_map(|n| Pass::named(n)).collect();
    let mut rules: Vec<RuleInfo> = kiln::passes::rules::all_rules()
        .iter()
        .map(|r| RuleInfo {
            name: r.name().to_string(),
            pass: passes
                .iter()
                .find(|p| p.rules.iter().any(|q| q.name() == r.name()))
                .map_or_else(|| "(none)".to_string(), |p| p.name.to_string()),
            kind: if r.exact() { "exact" } else { "approximate" },
            description: r.description().to_string(),
        })
        .collect();
    // The substitution library (kiln_passes::approx) runs after
    // saturation, one kind per --attention value, never as a rule.
    for kind in AttentionKind::ALL {
        rules.push(RuleInfo {
            name: format!("attention-{kind}"),
            pass: format!("--attention {kind}"),
            kind: "approximate",
            description: approximate_description(kind).to_string(),
        });
    }
    rules
}

/// Runs `kiln rules`.
pub fn rules(args: &RulesArgs) -> anyhow::Result<()> {
    let listing = rule_listing();
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&listing)?;
        json.push('\n');
        json
    } else {
        let mut rows = vec![vec!["RULE".to_string(), "PASS".into(), "KIND".into(), "DESCRIPTION".into()]];
        rows.extend(
            listing.iter().map(|r| vec![r.name.clone(), r.pass.clone(), r.kind.to_string(), r.description.clone()]),
        );
        let exact = listing.iter().filter(|r| r.kind == "exact").count();
        format!("{}\n{} rules: {exact} exact, {} approximate\n", table(&rows, 0), listing.len(), listing.len() - exact)
    };
    write_stdout(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_rule_is_listed_once_with_its_pass() {
        let listing = rule_listing();
        for r in kiln::passes::rules::all_rules() {
            let found: Vec<&RuleInfo> = listing.iter().filter(|i| i.name == r.name()).collect();
            assert_eq!(found.len(), 1, "{}", r.name());
            assert_ne!(found[0].pass, "(none)", "{} is in no pass", r.name());
        }
        assert!(listing.iter().any(|r| r.name == "attention-sigmoid" && r.kind == "approximate"));
    }
}
