//! The pipeline options `kiln optimize` and `kiln explain` share: level or
//! pass list, and saturation limits.

use clap::Args;
use kiln::passes::manager::{OptLevel, Pipeline};
use std::time::Duration;

/// Which passes to run and how far.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// Optimization level: -O0 (no rewriting), -O1 (algebraic clean-up), -O2 (everything).
    #[arg(short = 'O', value_name = "LEVEL", value_parser = ["0", "1", "2"], default_value = "2")]
    level: String,
    /// Run these passes, in order, instead of a level (comma-separated; `kiln rules` lists them).
    #[arg(long, value_name = "LIST", value_delimiter = ',', conflicts_with = "level")]
    passes: Option<Vec<String>>,
    /// Stop each pass's saturation after N rule-application rounds.
    #[arg(long, value_name = "N")]
    iter_limit: Option<usize>,
    /// Stop saturation once the e-graph holds N e-nodes.
    #[arg(long, value_name = "N")]
    node_limit: Option<usize>,
    /// Stop saturation after this many seconds in all (the result then depends on the machine).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    time_limit: Option<f64>,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(format!("expected a non-negative number of seconds, got `{s}`")),
    }
}

impl PipelineArgs {
    /// The pipeline these options describe; an unknown pass name is an
    /// error that lists the known ones.
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let mut pipeline = match &self.passes {
            Some(names) => {
                let names: Vec<&str> = names.iter().map(|n| n.trim()).collect();
                Pipeline::from_names(&names)?
            }
            None => Pipeline::level(match self.level.as_str() {
                "0" => OptLevel::O0,
                "1" => OptLevel::O1,
                _ => OptLevel::O2,
            }),
        };
        if let Some(n) = self.iter_limit {
            pipeline.limits.iterations = n;
        }
        if let Some(n) = self.node_limit {
            pipeline.limits.nodes = n;
        }
        if let Some(s) = self.time_limit {
            pipeline.limits.time = Duration::from_secs_f64(s);
        }
        Ok(pipeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_finite_and_non_negative() {
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
