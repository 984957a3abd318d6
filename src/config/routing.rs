//! `[[routes]]` and `[caps]`: where a job works, in what environment its agent runs, and how
//! many agents may run at once or start in a day. The matching itself is
//! [`crate::jobs::routing`]; the admission against the caps is [`crate::jobs::caps`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// One routing rule. Its matchers all have to hold (a route without any is `default = true`,
/// tried after every other route); the first route that matches, in file order, wins.
/// Ticket matchers (`project`, `labels`, `components`) and alarm matchers (`account`,
/// `region`, `namespace`, `alarm`, `alarm_regex`, `tags`) are never mixed in one route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// What `conductor routes test` and the job history call this route (default `routes[i]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tried last, for whatever no other route matches.
    pub default: bool,
    /// The ticket's Jira project key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Labels the ticket must all carry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Components the ticket must all name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// The alarm's AWS account id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The alarm's region (`eu-west-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The alarm's metric namespace (`AWS/RDS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A glob on the alarm's name (`payments-*`, `?` for one character).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// A regular expression on the alarm's name (searched, so anchor it with `^…$`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm_regex: Option<String>,
    /// Tags the alarm's event must carry with these values (`detail.tags` of the event).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Clone URL (or a path to a repository on disk).
    pub repo: String,
    /// The branch agents start from and pull requests target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// `owner/name` on the forge (default: the repo URL's last two path parts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forge_repo: Option<String>,
    /// Where this route's agents run (default: where every worker runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
}

/// A route's development environment: the worker (and so its agent) runs inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Environment {
    /// Local spawner: the worker's argv is appended to this prefix (its variables travel in a
    /// private file the worker deletes at once). An element that holds `{command}` gets the
    /// whole worker command as one shell string instead, for tools that take one:
    /// `["vagrant", "ssh", "-c", "{command}"]`,
    /// `["devcontainer", "exec", "--workspace-folder", "/src/payments", "sh", "-c", "{command}"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command_prefix: Vec<String>,
    /// Local spawner: a container image the worker runs in, with `worker.container_engine`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// ECS spawner: the task definition (family, `family:revision` or ARN) of this route's
    /// workers, instead of `ecs.task_definition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_definition: Option<String>,
    /// ECS spawner: the worker's container in that task definition (default `ecs.container`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl Route {
    /// Whether the route matches tickets (has a ticket matcher).
    pub fn for_tickets(&self) -> bool {
        self.project.is_some() || !self.labels.is_empty() || !self.components.is_empty()
    }

    /// Whether the route matches alarms (has an alarm matcher).
    pub fn for_alarms(&self) -> bool {
        self.account.is_some()
            || self.region.is_some()
            || self.namespace.is_some()
            || self.alarm.is_some()
            || self.alarm_regex.is_some()
            || !self.tags.is_empty()
    }

    /// The route's name as reports show it.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("routes[{index}] {n:?}"),
            None => format!("routes[{index}]"),
        }
    }

    pub(crate) fn validate(&self, i: usize) -> Result<(), Error> {
        let at = self.label(i);
        match (self.default, self.for_tickets(), self.for_alarms()) {
            (true, false, false) | (false, true, false) | (false, false, true) => {}
            (true, _, _) => {
                return Err(Error::Config(format!(
                    "{at}: default = true takes no matchers (it catches what no other route does)"
                )))
            }
            (false, false, false) => {
                return Err(Error::Config(format!(
                    "{at} matches nothing: give it project/labels/components (tickets), \
                     account/region/namespace/alarm/alarm_regex/tags (alarms), or default = true"
                )))
            }
            (false, true, true) => {
                return Err(Error::Config(format!(
                    "{at} mixes ticket matchers (project, labels, components) with alarm \
                     matchers (account, region, namespace, alarm, alarm_regex, tags)"
                )))
            }
        }
        if self.repo.is_empty() {
            return Err(Error::Config(format!("{at} has no repo")));
        }
        if let Some(glob) = &self.alarm {
            glob::Pattern::new(glob)
                .map_err(|e| Error::Config(format!("{at}: alarm = {glob:?}: {e}")))?;
        }
        if let Some(re) = &self.alarm_regex {
            regex_lite::Regex::new(re)
                .map_err(|e| Error::Config(format!("{at}: alarm_regex = {re:?}: {e}")))?;
        }
        if let Some(env) = &self.environment {
            if env.image.is_some() && !env.command_prefix.is_empty() {
                return Err(Error::Config(format!(
                    "{at}: environment has both image and command_prefix; choose one"
                )));
            }
            if env.command_prefix.first().is_some_and(|p| p.is_empty()) {
                return Err(Error::Config(format!(
                    "{at}: environment.command_prefix starts with an empty program"
                )));
            }
        }
        Ok(())
    }
}

/// `[caps]`: how many agents run at once, and how many an account starts in a day. A job over
/// a concurrency cap waits its turn, in order; a job over its account's daily budget ends
/// `over_budget` (`conductor retry` starts it anyway).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    /// Agents running at once, in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u32>,
    /// Agents running at once on one repository. 1 (the default) keeps two agents off one
    /// repository.
    pub per_repo: u32,
    /// Agents running at once for one AWS account (incident jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_account: Option<u32>,
    /// Agents one AWS account may start in a UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_per_account: Option<u32>,
    /// Per-account overrides of `per_account` and `daily_per_account`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub accounts: BTreeMap<String, AccountCaps>,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            total: None,
            per_repo: 1,
            per_account: None,
            daily_per_account: None,
            accounts: BTreeMap::new(),
        }
    }
}

/// `[caps.accounts."123456789012"]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccountCaps {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily: Option<u32>,
}

impl Caps {
    /// Agents `account` may run at once (None: no cap).
    pub fn concurrent_for(&self, account: &str) -> Option<u32> {
        self.accounts
            .get(account)
            .and_then(|a| a.concurrent)
            .or(self.per_account)
    }

    /// Agents `account` may start in a day (None: no budget).
    pub fn daily_for(&self, account: &str) -> Option<u32> {
        self.accounts
            .get(account)
            .and_then(|a| a.daily)
            .or(self.daily_per_account)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let zero = |what: &str| Error::Config(format!("caps.{what} must be at least 1"));
        if self.per_repo == 0 {
            return Err(zero("per_repo"));
        }
        if self.total == Some(0) {
            return Err(zero("total"));
        }
        if self.per_account == Some(0) {
            return Err(zero("per_account"));
        }
        for (account, caps) in &self.accounts {
            if caps.concurrent == Some(0) {
                return Err(zero(&format!("accounts.{account:?}.concurrent")));
            }
        }
        Ok(())
    }
}
