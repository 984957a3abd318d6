//! Routing: which `[[routes]]` entry a job takes, read off the message that started it (a
//! ticket's project, labels and components; an alarm's account, region, namespace, name and
//! tags). The first route whose matchers all hold wins, in file order; `default = true` routes
//! are tried after every other. The same code answers `conductor routes test FILE.json` and
//! the `claim` step, so what the operator tests is what the conductor does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::{Config, Environment, Route},
    error::Error,
    jobs::Job,
    scheduling::domain::{self, Message},
};

/// What routes match on, from one message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Facts {
    /// `ticket` or `alarm`.
    pub kind: &'static str,
    pub project: Option<String>,
    pub labels: Vec<String>,
    pub components: Vec<String>,
    pub account: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    pub alarm: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Facts {
    /// The facts of a stored message body; the parser's own rejection when it is no ticket
    /// or alarm.
    pub fn of_body(body: &str) -> Result<Facts, Error> {
        let message = domain::parse_message(body)
            .map_err(|e| Error::Invalid(format!("not routable: {e}")))?;
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        Ok(match message {
            Message::Ticket(t) => Facts {
                kind: "ticket",
                project: t.project,
                labels: t.labels,
                components: components(&value),
                ..Facts::default()
            },
            Message::Alarm(a) => {
                let event = alarm_event(&value);
                Facts {
                    kind: "alarm",
                    account: Some(a.account),
                    alarm: Some(a.alarm_name),
                    region: region(&event),
                    namespace: namespace(&event),
                    tags: tags(&event),
                    ..Facts::default()
                }
            }
        })
    }
}

/// A ticket's component names (`fields.components[].name`, also inside a webhook's `issue`).
fn components(value: &Value) -> Vec<String> {
    let fields = value
        .pointer("/issue/fields")
        .or_else(|| value.pointer("/fields"));
    fields
        .and_then(|f| f.get("components"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(domain::clean_field)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The alarm's own event: the EventBridge event, the SNS notification's `Message` (itself
/// an EventBridge event or CloudWatch's alarm notification).
fn alarm_event(value: &Value) -> Value {
    match value.get("Message").and_then(Value::as_str) {
        Some(inner) if value.get("Type").and_then(Value::as_str) == Some("Notification") => {
            serde_json::from_str(inner).unwrap_or(Value::Null)
        }
        _ => value.clone(),
    }
}

fn text_at(event: &Value, pointer: &str) -> Option<String> {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(domain::clean_field)
        .filter(|s| !s.is_empty())
}

/// EventBridge's `region`; a CloudWatch notification's region from its `AlarmArn`
/// (`arn:aws:cloudwatch:REGION:ACCOUNT:alarm:NAME`), as its `Region` is a display name.
fn region(event: &Value) -> Option<String> {
    text_at(event, "/region").or_else(|| {
        text_at(event, "/AlarmArn").and_then(|arn| arn.split(':').nth(3).map(str::to_owned))
    })
}

/// The metric's namespace: EventBridge's first metric (`detail.configuration.metrics`), a
/// notification's `Trigger.Namespace` (or its first metric's).
fn namespace(event: &Value) -> Option<String> {
    let metrics = |p: &str| {
        event.pointer(p).and_then(Value::as_array).and_then(|ms| {
            ms.iter().find_map(|m| {
                text_at(m, "/metricStat/metric/namespace")
                    .or_else(|| text_at(m, "/MetricStat/Metric/Namespace"))
            })
        })
    };
    text_at(event, "/Trigger/Namespace")
        .or_else(|| metrics("/detail/configuration/metrics"))
        .or_else(|| metrics("/Trigger/Metrics"))
}

/// Tags carried by the event (`detail.tags`, or a notification's `Tags`), as an object of
/// strings. CloudWatch does not put an alarm's tags in its events: an EventBridge input
/// transformer or enrichment adds them (docs/routing.md).
fn tags(event: &Value) -> BTreeMap<String, String> {
    event
        .pointer("/detail/tags")
        .or_else(|| event.get("Tags"))
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), domain::clean_field(v))))
                .collect()
        })
        .unwrap_or_default()
}

/// One route's verdict on the facts: matched, or the first matcher that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub index: usize,
    pub label: String,
    pub matched: bool,
    /// What matched, or why not.
    pub why: String,
}

fn verdict(index: usize, route: &Route, facts: &Facts) -> Verdict {
    let result = matches(route, facts);
    Verdict {
        index,
        label: route.label(index),
        matched: result.is_ok(),
        why: result.unwrap_or_else(|e| e),
    }
}

/// Whether `route` matches: Ok(what held) or Err(the first matcher that did not).
fn matches(route: &Route, f: &Facts) -> Result<String, String> {
    if route.default {
        return Ok("default route".into());
    }
    let mut held = Vec::new();
    let want_kind = if route.for_tickets() {
        "ticket"
    } else {
        "alarm"
    };
    if f.kind != want_kind {
        return Err(format!("matches {want_kind}s, this is a {}", f.kind));
    }
    let eq = |what: &str, want: &Option<String>, got: &Option<String>, held: &mut Vec<String>| {
        if let Some(w) = want {
            if got.as_deref() != Some(w.as_str()) {
                return Err(format!(
                    "{what} {got:?} is not {w:?}",
                    got = got.as_deref().unwrap_or("(none)")
                ));
            }
            held.push(format!("{what} = {w:?}"));
        }
        Ok(())
    };
    eq("project", &route.project, &f.project, &mut held)?;
    for (what, want, got) in [
        ("label", &route.labels, &f.labels),
        ("component", &route.components, &f.components),
    ] {
        for w in want {
            if !got.contains(w) {
                return Err(format!("no {what} {w:?} (has {got:?})"));
            }
            held.push(format!("{what} {w:?}"));
        }
    }
    eq("account", &route.account, &f.account, &mut held)?;
    eq("region", &route.region, &f.region, &mut held)?;
    eq("namespace", &route.namespace, &f.namespace, &mut held)?;
    let name = f.alarm.as_deref().unwrap_or_default();
    if let Some(glob) = &route.alarm {
        // Validated at load; a pattern that fails here matches nothing.
        let ok = glob::Pattern::new(glob).is_ok_and(|p| p.matches(name));
        if !ok {
            return Err(format!("alarm {name:?} does not match {glob:?}"));
        }
        held.push(format!("alarm {name:?} matches {glob:?}"));
    }
    if let Some(re) = &route.alarm_regex {
        let ok = regex_lite::Regex::new(re).is_ok_and(|r| r.is_match(name));
        if !ok {
            return Err(format!("alarm {name:?} does not match /{re}/"));
        }
        held.push(format!("alarm {name:?} matches /{re}/"));
    }
    for (k, v) in &route.tags {
        match f.tags.get(k) {
            Some(got) if got == v => held.push(format!("tag {k}={v:?}")),
            got => return Err(format!("tag {k} is {got:?}, not {v:?}")),
        }
    }
    Ok(held.join(", "))
}

/// Every route's verdict up to and including the one taken (defaults last), and the index
/// of the one taken (None: no route matches).
pub fn explain(routes: &[Route], facts: &Facts) -> (Vec<Verdict>, Option<usize>) {
    let mut verdicts = Vec::new();
    let order = routes
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.default)
        .chain(routes.iter().enumerate().filter(|(_, r)| r.default));
    for (i, route) in order {
        let v = verdict(i, route, facts);
        let matched = v.matched;
        verdicts.push(v);
        if matched {
            return (verdicts, Some(i));
        }
    }
    (verdicts, None)
}

/// Where a job works, as `claim` stores it on the job: fixed from then on, so a later config
/// edit does not move a job in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub repo: String,
    pub base: String,
    pub forge_repo: String,
    /// The route taken (`routes[1] "payments"`).
    #[serde(default)]
    pub route: String,
    /// The route's development environment, if it names one.
    #[serde(default)]
    pub environment: Option<Environment>,
}

impl Target {
    /// The target of `config.routes[index]`.
    pub fn of_route(config: &Config, index: usize) -> Target {
        let chosen = &config.routes[index];
        Target {
            repo: chosen.repo.clone(),
            base: chosen.base.clone().unwrap_or_else(|| "main".into()),
            forge_repo: chosen
                .forge_repo
                .clone()
                .unwrap_or_else(|| forge_repo_of(&chosen.repo)),
            route: chosen.label(index),
            environment: chosen.environment.clone(),
        }
    }

    /// The target `claim` stored on the job when it routed it (None: not routed yet).
    pub fn stored(job: &Job) -> Result<Option<Target>, Error> {
        let (Some(repo), Some(base), Some(forge_repo)) =
            (&job.repo, &job.base_branch, &job.forge_repo)
        else {
            return Ok(None);
        };
        let environment = job
            .environment
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::Corrupt(format!("job {}'s stored environment: {e}", job.id)))?;
        Ok(Some(Target {
            repo: repo.clone(),
            base: base.clone(),
            forge_repo: forge_repo.clone(),
            route: job.route.clone().unwrap_or_default(),
            environment,
        }))
    }
}

/// The route the facts take, as a target.
pub fn route(config: &Config, facts: &Facts) -> Result<Target, Error> {
    match explain(&config.routes, facts).1 {
        Some(i) => Ok(Target::of_route(config, i)),
        None => Err(no_route(facts)),
    }
}

/// Why a message takes no route, and what to add.
pub fn no_route(facts: &Facts) -> Error {
    let what = match facts.kind {
        "ticket" => format!("project {:?}", facts.project.as_deref().unwrap_or("(none)")),
        _ => format!(
            "account {:?}, alarm {:?}",
            facts.account.as_deref().unwrap_or_default(),
            facts.alarm.as_deref().unwrap_or_default()
        ),
    };
    Error::Config(format!(
        "no route for this {} ({what}): add a [[routes]] entry that matches it or a default route",
        facts.kind
    ))
}

/// `owner/name` from a clone URL or path: its last two path parts, without `.git`.
pub fn forge_repo_of(url: &str) -> String {
    let parts: Vec<&str> = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .take(2)
        .collect();
    let name = parts
        .first()
        .copied()
        .unwrap_or("repo")
        .trim_end_matches(".git");
    let owner = parts.get(1).copied().unwrap_or("local");
    format!("{owner}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(toml_text: &str) -> Route {
        toml::from_str(toml_text).unwrap()
    }

    fn alarm(account: &str, name: &str, region: &str, namespace: &str) -> String {
        serde_json::json!({
            "version": "0", "id": "e-1", "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch", "account": account, "time": "2026-01-01T00:00:00Z",
            "region": region,
            "detail": {"alarmName": name, "state": {"value": "ALARM"},
                "configuration": {"metrics": [{"metricStat": {"metric": {"namespace": namespace}}}]},
                "tags": {"team": "payments"}}
        })
        .to_string()
    }

    #[test]
    fn first_match_in_file_order_defaults_last() {
        let routes = vec![
            route("default = true\nrepo = \"d\""),
            route("account = \"1\"\nalarm = \"api-*\"\nrepo = \"api\""),
            route("account = \"1\"\nalarm_regex = \"^payments-(db|queue)-\"\nrepo = \"pay\""),
            route("account = \"1\"\nrepo = \"acct\""),
        ];
        let facts = Facts::of_body(&alarm("1", "payments-db-cpu", "eu-west-1", "AWS/RDS")).unwrap();
        let (verdicts, chosen) = explain(&routes, &facts);
        assert_eq!(chosen, Some(2));
        assert!(
            verdicts[0].why.contains("does not match \"api-*\""),
            "{verdicts:?}"
        );
        let facts = Facts::of_body(&alarm("2", "x", "eu-west-1", "AWS/RDS")).unwrap();
        assert_eq!(explain(&routes, &facts).1, Some(0));
    }

    #[test]
    fn region_namespace_and_tags_from_eventbridge_and_sns() {
        let facts = Facts::of_body(&alarm("1", "a", "eu-west-1", "AWS/RDS")).unwrap();
        assert_eq!(facts.region.as_deref(), Some("eu-west-1"));
        assert_eq!(facts.namespace.as_deref(), Some("AWS/RDS"));
        assert_eq!(facts.tags.get("team").map(String::as_str), Some("payments"));
        let sns = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/alarm-sns.json"),
        )
        .unwrap();
        let facts = Facts::of_body(&sns).unwrap();
        assert_eq!(facts.kind, "alarm");
        assert!(facts.region.is_some(), "{facts:?}");
        let r = route("region = \"eu-west-1\"\nnamespace = \"AWS/RDS\"\ntags = { team = \"payments\" }\nrepo = \"x\"");
        let eb = Facts::of_body(&alarm("1", "a", "eu-west-1", "AWS/RDS")).unwrap();
        assert!(matches(&r, &eb).is_ok());
        let other = Facts::of_body(&alarm("1", "a", "us-east-1", "AWS/RDS")).unwrap();
        assert!(matches(&r, &other).unwrap_err().contains("region"));
    }

    #[test]
    fn tickets_by_project_labels_and_components() {
        let body = serde_json::json!({"key": "PAY-1", "id": "1", "fields": {
            "summary": "s", "labels": ["backend", "urgent"],
            "components": [{"name": "api"}], "project": {"key": "PAY"}}})
        .to_string();
        let facts = Facts::of_body(&body).unwrap();
        assert_eq!(facts.components, vec!["api".to_owned()]);
        let r = route(
            "project = \"PAY\"\nlabels = [\"backend\"]\ncomponents = [\"api\"]\nrepo = \"x\"",
        );
        assert!(matches(&r, &facts).is_ok());
        let r = route("project = \"PAY\"\ncomponents = [\"web\"]\nrepo = \"x\"");
        assert!(matches(&r, &facts).unwrap_err().contains("component"));
        let alarm_route = route("account = \"1\"\nrepo = \"x\"");
        assert!(matches(&alarm_route, &facts)
            .unwrap_err()
            .contains("alarms"));
    }

    #[test]
    fn forge_repo_from_urls() {
        assert_eq!(forge_repo_of("https://github.com/acme/api.git"), "acme/api");
        assert_eq!(forge_repo_of("git@github.com:acme/api.git"), "acme/api");
        assert_eq!(forge_repo_of("/srv/git/payments.git"), "git/payments");
    }
}
