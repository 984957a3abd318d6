//! Jira's REST API: Cloud's v3 (comments in Atlassian Document Format, Basic auth with the
//! account's email and an API token) or Data Center's v2 (plain comments, a personal access
//! token as Bearer). Credentials come from the environment and are sent only in the
//! Authorization header.
//!
//! A comment is found again by its marker (read through every page of the issue's comments),
//! a transition is skipped when the issue already is in the status it leads to (or when the
//! workflow offers no transition of that name from where the issue is: a re-run after the
//! transition was made), and an incident's issue is found again by its label through JQL.

use futures::{future::BoxFuture, FutureExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Comment, IncidentIssue, Posted, Tracker};
use crate::{
    config::{JiraApi, TrackerConfig},
    error::Error,
};

pub struct JiraTracker {
    base_url: String,
    api: JiraApi,
    user: Option<String>,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for JiraTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraTracker")
            .field("base_url", &self.base_url)
            .field("api", &self.api)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct CommentPage {
    #[serde(default, rename = "startAt")]
    start_at: u64,
    #[serde(default)]
    total: u64,
    #[serde(default)]
    comments: Vec<Value>,
}

#[derive(Deserialize)]
struct TransitionList {
    #[serde(default)]
    transitions: Vec<TransitionItem>,
}

#[derive(Deserialize)]
struct TransitionItem {
    id: String,
    name: String,
    #[serde(default)]
    to: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct Keyed {
    key: String,
}

#[derive(Deserialize)]
struct SearchResult {
    #[serde(default)]
    issues: Vec<Keyed>,
}

impl JiraTracker {
    pub fn new(config: &TrackerConfig) -> Result<Self, Error> {
        let token = crate::secrets::get(&config.token_env).ok_or_else(|| {
            Error::Config(format!(
                "tracker.kind = \"jira\" needs a token in the environment variable {}",
                config.token_env
            ))
        })?;
        let user = crate::secrets::get(&config.user_env);
        if config.api == JiraApi::Cloud && user.is_none() {
            return Err(Error::Config(format!(
                "tracker.api = \"cloud\" needs the account's email in the environment variable {}",
                config.user_env
            )));
        }
        // reqwest is built without a bundled crypto provider; use ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent("conductor")
            .timeout(std::time::Duration::from_secs(30))
            // A redirect would turn a POST into a GET that "succeeds": a wrong base URL must
            // show as one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(JiraTracker {
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            api: config.api,
            user,
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        let version = match self.api {
            JiraApi::Cloud => 3,
            JiraApi::Datacenter => 2,
        };
        format!("{}/rest/api/{version}/{path}", self.base_url)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let req = match &self.user {
            Some(user) => req.basic_auth(user, Some(&self.token)),
            None => req.bearer_auth(&self.token),
        };
        let resp = req
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("Jira, {what}: {}", e.without_url())))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            return Err(Error::Config(format!(
                "Jira, {what}: HTTP {status} redirects to {}: is tracker.base_url ({}) right?",
                resp.headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("?"),
                self.base_url
            )));
        }
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Err(crate::jobs::remote::error_for(
            &format!("Jira, {what}"),
            status.as_u16(),
            &headers,
            &text,
        ))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, Error> {
        self.send(req, what).await?.json().await.map_err(|e| {
            Error::Unavailable(format!(
                "Jira, {what}: unreadable reply: {}",
                e.without_url()
            ))
        })
    }

    /// Whether a comment on `key` carries `marker`, looking through every page.
    async fn has_comment(&self, key: &str, marker: &str) -> Result<bool, Error> {
        let url = self.url(&format!("issue/{key}/comment"));
        let mut start = 0u64;
        loop {
            let page: CommentPage = self
                .json(
                    self.http
                        .get(&url)
                        .query(&[("startAt", start.to_string()), ("maxResults", "100".into())]),
                    "reading comments",
                )
                .await?;
            if page.comments.iter().any(|c| {
                c.get("body")
                    .is_some_and(|b| b.to_string().contains(marker))
            }) {
                return Ok(true);
            }
            let seen = page.start_at + page.comments.len() as u64;
            if page.comments.is_empty() || seen >= page.total {
                return Ok(false);
            }
            start = seen;
        }
    }

    /// A comment's body: ADF for Cloud, wiki text for Data Center.
    fn comment_body(&self, c: &Comment<'_>) -> Value {
        match self.api {
            JiraApi::Cloud => {
                let mut first = vec![json!({"type": "text", "text": c.text})];
                if let Some(link) = c.link {
                    first.push(json!({"type": "text", "text": " "}));
                    first.push(json!({"type": "text", "text": "The job in Conductor",
                        "marks": [{"type": "link", "attrs": {"href": link}}]}));
                }
                adf(vec![
                    json!({"type": "paragraph", "content": first}),
                    json!({"type": "paragraph", "content": [
                        {"type": "text", "text": c.marker, "marks": [{"type": "code"}]}
                    ]}),
                ])
            }
            JiraApi::Datacenter => {
                let mut text = c.text.to_owned();
                if let Some(link) = c.link {
                    text.push_str(&format!(" [The job in Conductor|{link}]"));
                }
                text.push_str(&format!("\n\n{{{{{}}}}}", c.marker));
                Value::String(text)
            }
        }
    }

    /// Makes transition `name` unless the issue is already where it leads; returns the
    /// transition made or found made.
    async fn transition(&self, key: &str, name: &str) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Issue {
            fields: Fields,
        }
        #[derive(Deserialize)]
        struct Fields {
            status: Named,
        }
        let issue: Issue = self
            .json(
                self.http
                    .get(self.url(&format!("issue/{key}")))
                    .query(&[("fields", "status")]),
                "reading the status",
            )
            .await?;
        let list: TransitionList = self
            .json(
                self.http.get(self.url(&format!("issue/{key}/transitions"))),
                "listing transitions",
            )
            .await?;
        let Some(t) = list
            .transitions
            .into_iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
        else {
            // Not offered from here: made already (a re-run), or not in this workflow.
            tracing::info!(issue = key, transition = name, status = %issue.fields.status.name, "transition not offered from the issue's status; leaving it");
            return Ok(None);
        };
        if t.to
            .as_ref()
            .is_some_and(|to| to.name.eq_ignore_ascii_case(&issue.fields.status.name))
        {
            return Ok(Some(t.name));
        }
        self.send(
            self.http
                .post(self.url(&format!("issue/{key}/transitions")))
                .json(&json!({"transition": {"id": t.id}})),
            "making the transition",
        )
        .await?;
        Ok(Some(t.name))
    }
}

/// Refuses an issue key that is not `PROJECT-123` (or a numeric id): it goes into URL paths,
/// and a ticket's key is whatever its sender wrote.
fn check_key(key: &str) -> Result<(), Error> {
    let plain = match key.split_once('-') {
        Some((project, number)) => {
            !project.is_empty()
                && project
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !number.is_empty()
                && number.chars().all(|c| c.is_ascii_digit())
        }
        None => !key.is_empty() && key.chars().all(|c| c.is_ascii_digit()),
    };
    if plain {
        Ok(())
    } else {
        Err(Error::Refused(format!("{key:?} is not a Jira issue key")))
    }
}

/// An Atlassian Document Format document of `content` blocks.
fn adf(content: Vec<Value>) -> Value {
    json!({"type": "doc", "version": 1, "content": content})
}

impl Tracker for JiraTracker {
    fn name(&self) -> &'static str {
        "jira"
    }

    fn post<'a>(&'a self, c: &'a Comment<'a>) -> BoxFuture<'a, Result<Posted, Error>> {
        async move {
            check_key(c.issue_key)?;
            let existed = self.has_comment(c.issue_key, c.marker).await?;
            if !existed {
                self.send(
                    self.http
                        .post(self.url(&format!("issue/{}/comment", c.issue_key)))
                        .json(&json!({"body": self.comment_body(c)})),
                    "posting a comment",
                )
                .await?;
            }
            let transition = match c.transition {
                Some(name) => self.transition(c.issue_key, name).await?,
                None => None,
            };
            Ok(Posted {
                url: format!("{}/browse/{}", self.base_url, c.issue_key),
                transition,
                existed,
            })
        }
        .boxed()
    }

    fn incident_issue<'a>(
        &'a self,
        issue: &'a IncidentIssue<'a>,
    ) -> BoxFuture<'a, Result<String, Error>> {
        async move {
            let jql = format!(
                "project = \"{}\" AND labels = \"{}\"",
                issue.project, issue.label
            );
            let search = match self.api {
                JiraApi::Cloud => "search/jql",
                JiraApi::Datacenter => "search",
            };
            let found: SearchResult = self
                .json(
                    self.http
                        .post(self.url(search))
                        .json(&json!({"jql": jql, "fields": ["key"], "maxResults": 1})),
                    "looking up the incident's issue",
                )
                .await?;
            if let Some(i) = found.issues.into_iter().next() {
                return Ok(i.key);
            }
            let description = match self.api {
                JiraApi::Cloud => adf(vec![json!({"type": "paragraph", "content": [
                    {"type": "text", "text": issue.description}
                ]})]),
                JiraApi::Datacenter => Value::String(issue.description.to_owned()),
            };
            let created: Keyed = self
                .json(
                    self.http.post(self.url("issue")).json(&json!({"fields": {
                        "project": {"key": issue.project},
                        "issuetype": {"name": issue.issue_type},
                        "summary": issue.summary,
                        "labels": [crate::scheduling::domain::INCIDENT_LABEL, issue.label],
                        "description": description,
                    }})),
                    "opening the incident's issue",
                )
                .await?;
            Ok(created.key)
        }
        .boxed()
    }
}
