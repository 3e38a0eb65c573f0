//! The benchmark report: one [`Figure`] per measured number, each with the baseline it
//! is compared to in the same run, the parameters it was measured with, and its goal;
//! written as JSON (`bench-results/latest.json`) and as a Markdown table
//! (`bench-results/latest.md`).
//!
//! A figure that could not be measured says why in `not_measured` instead of carrying a
//! number: a missing figure is never filled in by an estimate.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::goal::{Goal, number};
use super::sampler::Measured;

/// One measured number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// The scenario that measured it (`initial_sync`, `agent_memory_scaling`, ...).
    pub scenario: String,
    /// Its name, unique in the report (`agent_memory_scaling.peak_rss.500`).
    pub name: String,
    /// The value; `None` when not measured.
    pub value: Option<f64>,
    /// The unit of `value`, `baseline` and the goal's limits.
    pub unit: String,
    /// The baseline measured in the same run, in the same unit.
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_what: String,
    /// Whether `baseline` is a reference the value equals by construction (the rate
    /// asked for), not a measurement to compare with: then there is no ratio.
    #[serde(default)]
    pub reference: bool,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// What it was measured with (scale, rates, durations, what shares what).
    pub parameters: BTreeMap<String, Value>,
    /// The goal, as it reads.
    pub goal: Option<String>,
    /// The goal, as numbers.
    pub goal_spec: Option<Goal>,
    /// The largest value that meets the goal.
    pub allowed: Option<f64>,
    /// Whether the goal is met; `None` without goal or value.
    pub met: Option<bool>,
    /// Why there is no value.
    pub not_measured: Option<String>,
    /// What a reader needs to read the number right.
    pub notes: Vec<String>,
}

impl Figure {
    /// A measured value.
    pub fn new(scenario: &str, name: &str, value: f64, unit: &str) -> Figure {
        Figure {
            scenario: scenario.into(),
            name: name.into(),
            value: Some(value),
            unit: unit.into(),
            baseline: None,
            baseline_what: String::new(),
            reference: false,
            ratio: None,
            parameters: BTreeMap::new(),
            goal: None,
            goal_spec: None,
            allowed: None,
            met: None,
            not_measured: None,
            notes: Vec::new(),
        }
    }

    /// A figure with no value, saying why (a part not built yet, a scenario that failed).
    pub fn not_measured(scenario: &str, name: &str, unit: &str, why: &str) -> Figure {
        Figure {
            value: None,
            not_measured: Some(why.into()),
            ..Figure::new(scenario, name, 0.0, unit)
        }
    }

    /// A measured value, or a figure not measured saying why.
    pub fn measured(scenario: &str, name: &str, value: Measured<f64>, unit: &str) -> Figure {
        match value {
            Ok(v) => Figure::new(scenario, name, v, unit),
            Err(why) => Figure::not_measured(scenario, name, unit, &why),
        }
    }

    /// Sets the baseline (and so the ratio).
    pub fn baseline(mut self, value: f64, what: &str) -> Figure {
        self.baseline = Some(value);
        self.baseline_what = what.into();
        self.reference = false;
        self.evaluate();
        self
    }

    /// Sets the baseline when it was measured; otherwise the figure has none and a note
    /// says why.
    pub fn baseline_measured(self, value: Measured<f64>, what: &str) -> Figure {
        match value {
            Ok(v) => self.baseline(v, what),
            Err(why) => self.note(format!("baseline ({what}) not measured: {why}")),
        }
    }

    /// A reference the figure equals by construction (the rate asked for, a count the
    /// scenario set up): shown next to the value, never compared with it (no ratio, no
    /// goal judged by it).
    pub fn reference(mut self, value: f64, what: &str) -> Figure {
        self.baseline = Some(value);
        self.baseline_what = what.into();
        self.reference = true;
        self.evaluate();
        self
    }

    /// Sets the goal (and so whether it is met).
    pub fn goal(mut self, goal: Goal) -> Figure {
        self.goal_spec = Some(goal);
        self.evaluate();
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Figure {
        self.parameters.insert(key.into(), value.into());
        self
    }

    /// Adds every parameter of `params`.
    pub fn params(mut self, params: &BTreeMap<String, Value>) -> Figure {
        self.parameters
            .extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.notes.push(note.into());
        self
    }

    /// The baseline a ratio or a relative goal may use: a measured one, not a reference.
    fn compared_with(&self) -> Option<f64> {
        self.baseline.filter(|_| !self.reference)
    }

    fn evaluate(&mut self) {
        self.ratio = match (self.value, self.compared_with()) {
            (Some(v), Some(b)) if b != 0.0 && b.is_finite() && v.is_finite() => Some(v / b),
            _ => None,
        };
        if let Some(goal) = self.goal_spec {
            self.goal = Some(goal.describe(&self.unit));
            self.allowed = goal.allowed(self.compared_with());
            self.met = goal.met(self.value, self.compared_with());
        }
    }

    /// For a missed goal: how far the value is from what the goal allows, as a fraction
    /// (0.42: 42 % over an upper bound, or short of a rate to reach).
    pub fn over_by(&self) -> Option<f64> {
        match (self.met, self.value, self.allowed, self.goal_spec) {
            (Some(false), Some(v), Some(a), Some(goal)) => goal.missed_by(v, a),
            _ => None,
        }
    }
}

/// How loaded the machine was: `/proc/loadavg`'s one-minute average.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Load {
    /// Before the first scenario.
    pub before: f64,
    /// Mean of the samples taken during the run (every 10 s).
    pub mean: f64,
    /// Highest sample during the run.
    pub max: f64,
    /// After the last scenario.
    pub after: f64,
}

/// One scenario's run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScenarioRun {
    /// The scenario.
    pub name: String,
    /// Wall-clock seconds it took, setup included.
    pub seconds: f64,
    /// Why it failed, if it did (its figures then say "not measured").
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// The commit of the checkout, when known.
    pub commit: Option<String>,
    /// Unix time of the start.
    pub started_unix: u64,
    /// Wall-clock seconds of the whole run (control plane start and seeding included).
    pub seconds: f64,
    /// CPUs the machine has.
    pub cpus: usize,
    /// Memory the machine has, MiB.
    pub memory_mib: u64,
    /// The machine's load during the run.
    pub load: Load,
    /// Parameters every scenario shares.
    pub parameters: BTreeMap<String, Value>,
    /// Each scenario's run.
    pub scenarios: Vec<ScenarioRun>,
    /// Every figure.
    pub figures: Vec<Figure>,
}

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A report read back from its JSON (`bench-results/latest.json`).
    pub fn from_json(text: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Where and how the run ran, in one sentence.
    pub fn machine_line(&self) -> String {
        format!(
            "{} CPUs, {} MiB; commit {}; {:.0} s in all; load average (1 min) {} before, {} mean and {} max during, {} after.",
            self.cpus,
            self.memory_mib,
            self.commit.as_deref().unwrap_or("unknown"),
            self.seconds,
            number(self.load.before),
            number(self.load.mean),
            number(self.load.max),
            number(self.load.after),
        )
    }

    /// The figures' table: one row per figure. A reference (a value the figure equals
    /// by construction) shows in the baseline column as such, with no ratio.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| figure | value | baseline | ratio | goal | met |\n|---|---|---|---|---|---|"
        );
        for f in &self.figures {
            let value = match f.value {
                Some(v) => format!("{} {}", number(v), f.unit),
                None => "not measured".into(),
            };
            let baseline = match f.baseline {
                Some(b) if f.reference => format!(
                    "reference, not a measurement: {} {} ({})",
                    number(b),
                    f.unit,
                    f.baseline_what
                ),
                Some(b) => format!("{} {} ({})", number(b), f.unit, f.baseline_what),
                None => "—".into(),
            };
            let ratio = f
                .ratio
                .map_or_else(|| "—".into(), |r| format!("{}×", number(r)));
            let goal = f.goal.clone().unwrap_or_else(|| "—".into());
            let met = match (f.met, f.over_by()) {
                (Some(true), _) => "yes".to_string(),
                (Some(false), Some(by)) => {
                    let side = if f.goal_spec.is_some_and(|g| g.higher_is_better()) {
                        "short"
                    } else {
                        "over"
                    };
                    format!("**no** ({} % {side})", number(by * 100.0))
                }
                (Some(false), None) => "**no**".to_string(),
                (None, _) => "—".to_string(),
            };
            let _ = writeln!(
                out,
                "| `{}` | {value} | {baseline} | {ratio} | {goal} | {met} |",
                f.name
            );
        }
        out
    }

    /// What the README and docs/performance.md show of the run, between
    /// [`GENERATED_BEGIN`] and [`GENERATED_END`]: the command, the machine line and the
    /// table. Written by the benchmark; a test checks the documents hold exactly this.
    pub fn published(&self) -> String {
        format!(
            "`{}` ({})\n\n{}",
            self.command.trim(),
            self.machine_line(),
            self.table()
        )
    }

    /// The report as Markdown: what ran where, one table row per figure, then the notes
    /// and parameters of each scenario.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# scale-agent system benchmark\n");
        let _ = writeln!(out, "`{}`", self.command);
        let _ = writeln!(out, "\n{}\n", self.machine_line());
        out.push_str(&self.table());
        let mut scenarios: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !scenarios.contains(&f.scenario.as_str()) {
                scenarios.push(&f.scenario);
            }
        }
        for s in scenarios {
            let run = self.scenarios.iter().find(|r| r.name == s);
            let _ = write!(out, "\n## {s}\n\n");
            if let Some(run) = run {
                let _ = writeln!(out, "Ran {:.0} s.", run.seconds);
                if let Some(e) = &run.error {
                    let _ = writeln!(out, "\nFailed: {}", one_line(e, 600));
                }
            }
            let mut params: BTreeMap<&String, &Value> = BTreeMap::new();
            for f in self.figures.iter().filter(|f| f.scenario == s) {
                params.extend(f.parameters.iter());
                if let Some(why) = &f.not_measured {
                    let _ = writeln!(out, "\n- `{}` not measured: {why}", f.name);
                }
                for n in &f.notes {
                    let _ = writeln!(out, "\n- `{}`: {n}", f.name);
                }
            }
            if !params.is_empty() {
                let list: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", compact(v)))
                    .collect();
                let _ = writeln!(out, "\nParameters: {}.", list.join(", "));
            }
        }
        if !self.parameters.is_empty() {
            let list: Vec<String> = self
                .parameters
                .iter()
                .map(|(k, v)| format!("{k} = {}", compact(v)))
                .collect();
            let _ = writeln!(out, "\n## Shared parameters\n\n{}.", list.join(", "));
        }
        out
    }
}

/// The line before the figures a document shows from `bench-results/latest.json`.
pub const GENERATED_BEGIN: &str =
    "<!-- figures from bench-results/latest.json, written by `just bench`: do not edit -->";
/// The line after them.
pub const GENERATED_END: &str = "<!-- end of the figures from bench-results/latest.json -->";

/// `doc` with the text between [`GENERATED_BEGIN`] and [`GENERATED_END`] replaced by
/// `generated`; an error when the markers are missing or out of order.
pub fn splice(doc: &str, generated: &str) -> Result<String, String> {
    let begin = doc
        .find(GENERATED_BEGIN)
        .ok_or("no figures marker in the document")?
        + GENERATED_BEGIN.len();
    let end = doc[begin..]
        .find(GENERATED_END)
        .ok_or("no end marker after the figures marker")?
        + begin;
    Ok(format!(
        "{}\n{}\n{}",
        &doc[..begin],
        generated.trim_end(),
        &doc[end..]
    ))
}

/// The documents that show the run's figures (relative to the workspace root).
pub const PUBLISHED_IN: [&str; 2] = ["README.md", "docs/performance.md"];

/// Writes `report`'s figures into each document of [`PUBLISHED_IN`] under `root`.
pub fn publish(root: &std::path::Path, report: &Report) -> Result<(), String> {
    for doc in PUBLISHED_IN {
        let path = root.join(doc);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{doc}: {e}"))?;
        let new = splice(&text, &report.published()).map_err(|e| format!("{doc}: {e}"))?;
        std::fs::write(&path, new).map_err(|e| format!("{doc}: {e}"))?;
    }
    Ok(())
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        other => other.to_string(),
    }
}

/// `text` on one line, cut at `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(figures: Vec<Figure>) -> Report {
        Report {
            command: "just bench".into(),
            commit: Some("abc".into()),
            started_unix: 1,
            seconds: 10.0,
            cpus: 2,
            memory_mib: 1024,
            load: Load::default(),
            parameters: BTreeMap::new(),
            scenarios: vec![ScenarioRun {
                name: "initial_sync".into(),
                seconds: 5.0,
                error: None,
            }],
            figures,
        }
    }

    #[test]
    fn ratio_and_goal_follow_value_and_baseline() {
        let f = Figure::new("initial_sync", "initial_sync", 26.0, "s")
            .baseline(20.0, "bare LISTs")
            .goal(Goal::RatioAtMost { ratio: 1.3 });
        assert_eq!(f.ratio, Some(1.3));
        assert_eq!(f.met, Some(true));
        assert_eq!(f.goal.as_deref(), Some("ratio ≤ 1.3"));
        let f = Figure::new("initial_sync", "initial_sync", 30.0, "s")
            .goal(Goal::RatioAtMost { ratio: 1.3 })
            .baseline(20.0, "bare LISTs");
        assert_eq!(f.met, Some(false), "the order of the calls does not matter");
        let over = f.over_by().expect("missed");
        assert!((over - (30.0 / 26.0 - 1.0)).abs() < 1e-9);
    }

    #[test]
    fn a_figure_not_measured_has_no_number_and_meets_nothing() {
        let f = Figure::not_measured("change_latency", "x", "ms", "no watch API yet")
            .baseline(3.0, "bare watcher")
            .goal(Goal::AtMost { limit: 1.0 });
        assert_eq!(f.value, None);
        assert_eq!(f.ratio, None);
        assert_eq!(f.met, None);
        let md = report(vec![f]).to_markdown();
        assert!(md.contains("| `x` | not measured |"), "{md}");
        assert!(md.contains("`x` not measured: no watch API yet"), "{md}");
    }

    #[test]
    fn the_markdown_has_one_row_per_figure_and_the_json_every_field() {
        let figures = vec![
            Figure::new("initial_sync", "initial_sync", 30.0, "s")
                .baseline(20.0, "bare LISTs")
                .goal(Goal::RatioAtMost { ratio: 1.3 })
                .param("objects", 105_000)
                .note("cold hub"),
            Figure::new("initial_sync", "hub_rss_per_object", 2.5, "KiB"),
        ];
        let r = report(figures);
        let md = r.to_markdown();
        assert_eq!(md.matches("\n| `").count(), 2, "{md}");
        assert!(md.contains("**no** (15.4 % over)"), "{md}");
        assert!(md.contains("Parameters: objects = 105000."), "{md}");
        let json: Value = serde_json::from_str(&r.to_json()).expect("json");
        let f = &json["figures"][0];
        for key in [
            "name",
            "value",
            "unit",
            "baseline",
            "ratio",
            "parameters",
            "goal",
            "met",
        ] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
        assert_eq!(f["met"], false);
        assert_eq!(json["figures"][1]["met"], Value::Null);
    }

    #[test]
    fn a_reference_is_never_a_met_comparison() {
        let f = Figure::new("armory_workload", "ops", 200.0, "operations/min")
            .reference(200.0, "asked")
            .goal(Goal::RatioAtMost { ratio: 1.0 });
        assert_eq!(f.ratio, None);
        assert_eq!(f.met, None);
        let md = report(vec![f]).to_markdown();
        assert!(
            md.contains(
                "| reference, not a measurement: 200 operations/min (asked) | — | ratio ≤ 1 | — |"
            ),
            "{md}"
        );
    }

    #[test]
    fn an_unmeasured_value_or_baseline_is_said_so() {
        let f = Figure::measured("s", "x", Err("no sample in the window".into()), "s")
            .baseline_measured(Ok(2.0), "bare");
        assert_eq!(f.value, None);
        assert_eq!(f.not_measured.as_deref(), Some("no sample in the window"));
        let f = Figure::measured("s", "y", Ok(1.0), "s")
            .baseline_measured(Err("exited".into()), "bare");
        assert_eq!((f.value, f.baseline, f.ratio), (Some(1.0), None, None));
        assert!(f.notes[0].contains("not measured: exited"), "{:?}", f.notes);
    }

    #[test]
    fn the_documents_show_the_figures_of_latest_json() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let json = std::fs::read_to_string(root.join("bench-results/latest.json"))
            .expect("bench-results/latest.json");
        let report = Report::from_json(&json).expect("latest.json is a report");
        for doc in PUBLISHED_IN {
            let text = std::fs::read_to_string(root.join(doc)).expect(doc);
            let want = splice(&text, &report.published()).expect(doc);
            assert!(
                text == want,
                "{doc} does not show the figures of bench-results/latest.json; \
                 run `cargo run -p scale-agent-e2e --bin bench-report` to write them"
            );
        }
        let md = std::fs::read_to_string(root.join("bench-results/latest.md")).expect("latest.md");
        assert_eq!(
            md,
            report.to_markdown(),
            "latest.md is latest.json's Markdown"
        );
    }

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let doc = format!("a\n{GENERATED_BEGIN}\nold\n{GENERATED_END}\nb\n");
        let out = splice(&doc, "new\n").expect("markers");
        assert_eq!(
            out,
            format!("a\n{GENERATED_BEGIN}\nnew\n{GENERATED_END}\nb\n")
        );
        assert_eq!(splice(&out, "new").expect("again"), out);
        assert!(splice("no markers", "x").is_err());
    }

    #[test]
    fn errors_are_cut_to_one_line() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
