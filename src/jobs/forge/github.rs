//! GitHub's REST API (or GitHub Enterprise at another base URL): `GET /repos/{o}/{r}/pulls`
//! by head branch, then `POST /repos/{o}/{r}/pulls`; failure issues are labelled `conductor`
//! and found again by the marker in their body. The token comes from the environment and is
//! sent only in the Authorization header.

use futures::{future::BoxFuture, FutureExt};
use serde::Deserialize;
use serde_json::json;

use super::{issue_marker, Forge, IssueSpec, Opened, PullRequestSpec};
use crate::error::Error;

pub struct GithubForge {
    base_url: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubForge")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct Item {
    number: i64,
    html_url: String,
    #[serde(default)]
    body: Option<String>,
}

impl GithubForge {
    /// `token_env` names the environment variable holding the token.
    pub fn new(base_url: &str, token_env: &str) -> Result<Self, Error> {
        let token = crate::secrets::get(token_env).ok_or_else(|| {
            Error::Config(format!(
                "forge.kind = \"github\" needs a token in the environment variable {token_env}"
            ))
        })?;
        // reqwest is built without a bundled crypto provider; use ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent("conductor")
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(GithubForge {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let resp = req
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("{what}: {}", e.without_url())))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        let rate_limited =
            status.as_u16() == 429 || (status.as_u16() == 403 && text.contains("rate limit"));
        if rate_limited {
            // The step waits out its retry backoff and asks again.
            crate::telemetry::forge_rate_limited();
        }
        if status.is_server_error() || rate_limited {
            Err(Error::Unavailable(format!("{what}: HTTP {status}: {text}")))
        } else {
            Err(Error::Refused(format!("{what}: HTTP {status}: {text}")))
        }
    }

    async fn items(&self, resp: reqwest::Response, what: &str) -> Result<Vec<Item>, Error> {
        resp.json().await.map_err(|e| {
            Error::Unavailable(format!("{what}: unreadable reply: {}", e.without_url()))
        })
    }
}

impl Forge for GithubForge {
    fn name(&self) -> &'static str {
        "github"
    }

    fn open_pull_request<'a>(
        &'a self,
        pr: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<Opened, Error>> {
        async move {
            let url = format!("{}/repos/{}/pulls", self.base_url, pr.repo);
            let owner = pr.repo.split('/').next().unwrap_or_default();
            let head = format!("{owner}:{}", pr.head);
            let found = self
                .send(
                    self.http
                        .get(&url)
                        .query(&[("head", head.as_str()), ("state", "all")]),
                    "looking up the pull request",
                )
                .await?;
            if let Some(existing) = self
                .items(found, "looking up the pull request")
                .await?
                .into_iter()
                .next()
            {
                return Ok(Opened {
                    number: existing.number,
                    url: existing.html_url,
                    existed: true,
                });
            }
            let created = self
                .send(
                    self.http.post(&url).json(&json!({
                        "title": pr.title, "head": pr.head, "base": pr.base, "body": pr.body,
                    })),
                    "opening the pull request",
                )
                .await?;
            let item: Item = created.json().await.map_err(|e| {
                Error::Unavailable(format!("opening the pull request: {}", e.without_url()))
            })?;
            Ok(Opened {
                number: item.number,
                url: item.html_url,
                existed: false,
            })
        }
        .boxed()
    }

    fn open_issue<'a>(&'a self, issue: &'a IssueSpec) -> BoxFuture<'a, Result<Opened, Error>> {
        async move {
            let url = format!("{}/repos/{}/issues", self.base_url, issue.repo);
            let marker = issue_marker(&issue.key);
            let found = self
                .send(
                    self.http.get(&url).query(&[
                        ("labels", "conductor"),
                        ("state", "all"),
                        ("per_page", "100"),
                    ]),
                    "looking up the failure issue",
                )
                .await?;
            let existing = self
                .items(found, "looking up the failure issue")
                .await?
                .into_iter()
                .find(|i| i.body.as_deref().is_some_and(|b| b.contains(&marker)));
            if let Some(i) = existing {
                return Ok(Opened {
                    number: i.number,
                    url: i.html_url,
                    existed: true,
                });
            }
            let created = self
                .send(
                    self.http.post(&url).json(&json!({
                        "title": issue.title,
                        "body": format!("{}\n\n{marker}", issue.body),
                        "labels": ["conductor"],
                    })),
                    "opening the failure issue",
                )
                .await?;
            let item: Item = created.json().await.map_err(|e| {
                Error::Unavailable(format!("opening the failure issue: {}", e.without_url()))
            })?;
            Ok(Opened {
                number: item.number,
                url: item.html_url,
                existed: false,
            })
        }
        .boxed()
    }
}
