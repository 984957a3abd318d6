//! `conductor routes test FILE.json...`: the route each message takes, and why — the same
//! matching the `claim` step does ([`conductor::jobs::routing`]).

use anyhow::{bail, Context, Result};
use conductor::jobs::routing::{self, Facts, Target};

use super::args::{ConfigArg, RoutesCmd};

pub fn run(arg: &ConfigArg, action: RoutesCmd) -> Result<()> {
    let RoutesCmd::Test { files, json } = action;
    let config = arg.load()?;
    let mut unrouted = 0;
    let mut docs = Vec::new();
    for file in &files {
        let body =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let facts = match Facts::of_body(&body) {
            Ok(f) => f,
            Err(e) => {
                unrouted += 1;
                if json {
                    docs.push(serde_json::json!({"file": file, "error": e.to_string()}));
                } else {
                    println!("{}: {e}", file.display());
                }
                continue;
            }
        };
        let (verdicts, chosen) = routing::explain(&config.routes, &facts);
        let target = chosen
            .map(|i| Target::of_route(&config, i))
            .ok_or_else(|| routing::no_route(&facts));
        if chosen.is_none() {
            unrouted += 1;
        }
        if json {
            docs.push(serde_json::json!({
                "file": file,
                "facts": facts,
                "tried": verdicts.iter().map(|v| serde_json::json!({
                    "route": v.label, "matched": v.matched, "why": v.why,
                })).collect::<Vec<_>>(),
                "route": chosen.map(|_| target.as_ref().ok().map(|t| serde_json::json!({
                    "name": t.route, "repo": t.repo, "base": t.base, "forge_repo": t.forge_repo,
                    "environment": t.environment,
                }))),
            }));
            continue;
        }
        println!("{}: {}", file.display(), describe(&facts));
        // Routes for the other kind of message are one line, not one each.
        let other_kind = verdicts
            .iter()
            .filter(|v| !v.matched && v.why.starts_with("matches "))
            .count();
        if other_kind > 0 {
            println!(
                "  (skipped {other_kind} route(s) for {})",
                other(facts.kind)
            );
        }
        for v in verdicts
            .iter()
            .filter(|v| v.matched || !v.why.starts_with("matches "))
        {
            let mark = if v.matched { "MATCH" } else { "no" };
            println!("  {mark:<5} {}: {}", v.label, v.why);
        }
        match target {
            Ok(t) => {
                println!("  → {} (base {}, forge {})", t.repo, t.base, t.forge_repo);
                if let Some(env) = &t.environment {
                    println!("    environment: {}", serde_json::to_string(env)?);
                }
            }
            Err(e) => println!("  → {e}"),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    }
    if unrouted > 0 {
        bail!("{unrouted} of {} message(s) take no route", files.len());
    }
    Ok(())
}

/// The other kind's name, plural.
fn other(kind: &str) -> &'static str {
    if kind == "ticket" {
        "alarms"
    } else {
        "tickets"
    }
}

/// One line of what the message is, as routes see it.
fn describe(f: &Facts) -> String {
    let mut parts = vec![f.kind.to_owned()];
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    };
    add("project", &f.project);
    add("account", &f.account);
    add("region", &f.region);
    add("namespace", &f.namespace);
    add("alarm", &f.alarm);
    if !f.labels.is_empty() {
        parts.push(format!("labels={}", f.labels.join(",")));
    }
    if !f.components.is_empty() {
        parts.push(format!("components={}", f.components.join(",")));
    }
    for (k, v) in &f.tags {
        parts.push(format!("tag:{k}={v}"));
    }
    parts.join(" ")
}
