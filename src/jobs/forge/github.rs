//! GitHub (or GitHub Enterprise at another base URL) through `octocrab`, as a personal token
//! or as a GitHub App.
//!
//! As an App, Conductor finds the App's installation on each repository
//! (`GET /repos/{o}/{r}/installation`, signed with the App's JWT) and acts as that
//! installation; the token a worker pushes with is minted for the one call that asks for it
//! (`POST /app/installations/{id}/access_tokens`), scoped to the job's one repository with
//! contents and pull-request write only, so no worker ever holds a long-lived credential.
//!
//! Pull requests are found by head branch before one is opened; failure issues carry the
//! configured label and are found again by the marker in their body, through every page of
//! the label's issues. Every answer's status goes through [`crate::jobs::remote::error_for`],
//! so a `Retry-After` or a spent rate limit is waited out for as long as GitHub says.

use std::{collections::HashMap, sync::Mutex};

use futures::{future::BoxFuture, FutureExt};
use http::Uri;
use octocrab::{models::InstallationId, FromResponse, Octocrab, Page};
use serde::Deserialize;
use serde_json::json;

use super::{
    issue_marker, Forge, GitCredentials, GitPurpose, IssueSpec, Opened, PullRequestSpec,
    PullRequestState,
};
use crate::{config::ForgeConfig, error::Error};

type Reply = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

pub struct GithubForge {
    base_url: String,
    label: String,
    auth: Auth,
}

/// Who Conductor is on GitHub.
enum Auth {
    /// A personal access token: one client for every repository.
    Token(Octocrab),
    /// A GitHub App: the App's own client (JWT) and, per installation, a client acting as it.
    App {
        app: Octocrab,
        installations: Mutex<HashMap<String, (InstallationId, Octocrab)>>,
    },
}

impl std::fmt::Debug for GithubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubForge")
            .field("base_url", &self.base_url)
            .field("app", &matches!(self.auth, Auth::App { .. }))
            .finish()
    }
}

#[derive(Deserialize)]
struct Item {
    number: i64,
    html_url: String,
    #[serde(default)]
    body: Option<String>,
    /// Present on the pull requests the issues API lists too.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
    /// `open` or `closed` (a merged pull request is closed, with `merged_at`).
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    merged_at: Option<String>,
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    #[serde(default)]
    expires_at: Option<String>,
}

/// An octocrab error: a transport failure may pass; GitHub's own refusal of the App's
/// credentials (minting an installation token) will not.
fn transport(what: &str, e: octocrab::Error) -> Error {
    match &e {
        octocrab::Error::GitHub { source, .. } => crate::jobs::remote::error_for(
            what,
            source.status_code.as_u16(),
            &source.headers.clone().unwrap_or_default(),
            &source.message,
        ),
        // A URL or a reply octocrab could not make sense of will not improve by waiting.
        octocrab::Error::Uri { .. }
        | octocrab::Error::UriParse { .. }
        | octocrab::Error::Serde { .. }
        | octocrab::Error::SerdeUrlEncoded { .. }
        | octocrab::Error::InvalidUtf8 { .. } => Error::Refused(format!("{what}: {e}")),
        _ => Error::Unavailable(format!("{what}: {e}")),
    }
}

impl GithubForge {
    pub fn new(config: &ForgeConfig) -> Result<Self, Error> {
        // Shared by octocrab's TLS: ring, once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = config.base_url.trim_end_matches('/').to_owned();
        let builder = || {
            Octocrab::builder()
                .base_uri(base.as_str())
                .map_err(|e| Error::Config(format!("forge.base_url {base:?}: {e}")))
                .map(|b| {
                    b.set_connect_timeout(Some(std::time::Duration::from_secs(10)))
                        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                        .set_write_timeout(Some(std::time::Duration::from_secs(30)))
                })
        };
        let auth = match config.app_id {
            Some(app_id) => {
                let pem = crate::secrets::get(&config.app_key_env).ok_or_else(|| {
                    Error::Config(format!(
                        "forge.app_id is set: the App's private key (PEM) must be in the environment variable {}",
                        config.app_key_env
                    ))
                })?;
                let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                    Error::Config(format!(
                        "the GitHub App key in {} is not an RSA private key in PEM: {e}",
                        config.app_key_env
                    ))
                })?;
                let app = builder()?
                    .app(app_id.into(), key)
                    .build()
                    .map_err(|e| Error::Config(format!("GitHub client: {e}")))?;
                Auth::App {
                    app,
                    installations: Mutex::new(HashMap::new()),
                }
            }
            None => {
                let token = crate::secrets::get(&config.token_env).ok_or_else(|| {
                    Error::Config(format!(
                        "forge.kind = \"github\" needs a token in the environment variable {} (or a GitHub App: forge.app_id)",
                        config.token_env
                    ))
                })?;
                Auth::Token(
                    builder()?
                        .personal_token(token)
                        .build()
                        .map_err(|e| Error::Config(format!("GitHub client: {e}")))?,
                )
            }
        };
        Ok(GithubForge {
            base_url: base,
            label: config.label.clone(),
            auth,
        })
    }

    /// The App's installation on `repo` (`owner/name`) and a client acting as it, looked up
    /// once per repository.
    async fn installation(&self, repo: &str) -> Result<(InstallationId, Octocrab), Error> {
        let Auth::App { app, installations } = &self.auth else {
            return Err(Error::Corrupt("not a GitHub App".into()));
        };
        if let Some(found) = installations.lock().expect("lock").get(repo) {
            return Ok(found.clone());
        }
        let what = format!("finding the GitHub App's installation on {repo}");
        let reply = app
            ._get(format!("/repos/{repo}/installation"))
            .await
            .map_err(|e| transport(&what, e))?;
        let inst: Installation = json_of(app, check(reply, &what).await?, &what).await?;
        let id = InstallationId(inst.id);
        // Conductor's own calls for this repository use a token scoped to it alone.
        let name = repo.rsplit('/').next().unwrap_or(repo).to_owned();
        let client = app
            .installation_builder(id)
            .repositories(vec![name])
            .build()
            .map_err(|e| Error::Config(format!("GitHub App installation {}: {e}", inst.id)))?;
        installations
            .lock()
            .expect("lock")
            .insert(repo.to_owned(), (id, client.clone()));
        Ok((id, client))
    }

    /// The client to call `repo`'s API with.
    async fn client(&self, repo: &str) -> Result<Octocrab, Error> {
        match &self.auth {
            Auth::Token(c) => Ok(c.clone()),
            Auth::App { .. } => Ok(self.installation(repo).await?.1),
        }
    }

    /// The path and query of a `Link: rel="next"` URL, which must be on the forge's own host:
    /// octocrab sends its credentials only with relative requests to a GitHub Enterprise host,
    /// and nothing should be sent anywhere else.
    fn same_host(&self, next: &Uri, what: &str) -> Result<Uri, Error> {
        let base: Uri = self
            .base_url
            .parse()
            .map_err(|e| Error::Config(format!("forge.base_url: {e}")))?;
        if next.authority().is_some() && next.authority() != base.authority() {
            return Err(Error::Refused(format!(
                "{what}: the next page {next} is not on {}",
                self.base_url
            )));
        }
        next.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| Error::Corrupt(format!("{what}: {next}: {e}")))
    }

    /// Every item of a listing, following its `Link: rel="next"` pages.
    async fn all_pages<T: serde::de::DeserializeOwned>(
        &self,
        crab: &Octocrab,
        first: String,
        what: &str,
        mut stop: impl FnMut(&T) -> bool,
    ) -> Result<Option<T>, Error> {
        let mut next: Option<Uri> = Some(
            first
                .parse()
                .map_err(|e| Error::Corrupt(format!("{what}: {first}: {e}")))?,
        );
        while let Some(uri) = next.take() {
            let reply = crab._get(uri).await.map_err(|e| transport(what, e))?;
            let page: Page<T> = Page::from_response(check(reply, what).await?)
                .await
                .map_err(|e| Error::Unavailable(format!("{what}: unreadable reply: {e}")))?;
            next = match page.next {
                Some(n) => Some(self.same_host(&n, what)?),
                None => None,
            };
            if let Some(found) = page.items.into_iter().find(&mut stop) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// The reply if it succeeded, else the error its status means (with its headers' wait).
async fn check(reply: Reply, what: &str) -> Result<Reply, Error> {
    let status = reply.status();
    if status.is_success() {
        return Ok(reply);
    }
    let headers = reply.headers().clone();
    let body = http_body_util::BodyExt::collect(reply.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(crate::jobs::remote::error_for(
        what,
        status.as_u16(),
        &headers,
        &body,
    ))
}

async fn json_of<T: serde::de::DeserializeOwned>(
    crab: &Octocrab,
    reply: Reply,
    what: &str,
) -> Result<T, Error> {
    let text = crab
        .body_to_string(reply)
        .await
        .map_err(|e| Error::Unavailable(format!("{what}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Unavailable(format!("{what}: unreadable reply: {e}")))
}

impl GithubForge {
    /// The pull request on `repo` whose head is `head` (any state), following every page.
    async fn pull_by_head(
        &self,
        crab: &Octocrab,
        repo: &str,
        head: &str,
    ) -> Result<Option<Item>, Error> {
        let owner = repo.split('/').next().unwrap_or_default();
        let query = serde_urlencoded::to_string([
            ("head", format!("{owner}:{head}")),
            ("state", "all".into()),
            ("per_page", "100".into()),
        ])
        .map_err(|e| Error::Corrupt(e.to_string()))?;
        self.all_pages::<Item>(
            crab,
            format!("/repos/{repo}/pulls?{query}"),
            "looking up the pull request",
            |_| true,
        )
        .await
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
            let crab = self.client(&pr.repo).await?;
            let found = self.pull_by_head(&crab, &pr.repo, &pr.head).await?;
            if let Some(existing) = found {
                return Ok(Opened {
                    number: existing.number,
                    url: existing.html_url,
                    existed: true,
                });
            }
            let what = "opening the pull request";
            let reply = crab
                ._post(
                    format!("/repos/{}/pulls", pr.repo),
                    Some(&json!({
                        "title": pr.title, "head": pr.head, "base": pr.base, "body": pr.body,
                    })),
                )
                .await
                .map_err(|e| transport(what, e))?;
            let item: Item = json_of(&crab, check(reply, what).await?, what).await?;
            if !self.label.is_empty() {
                // A pull request is an issue to the labels API. A failure here leaves the pull
                // request without its label; the next run finds it and does not retry.
                let what = "labelling the pull request";
                let reply = crab
                    ._post(
                        format!("/repos/{}/issues/{}/labels", pr.repo, item.number),
                        Some(&json!({"labels": [self.label]})),
                    )
                    .await
                    .map_err(|e| transport(what, e))?;
                if let Err(e) = check(reply, what).await {
                    tracing::warn!(error = %e, "could not label the pull request");
                }
            }
            Ok(Opened {
                number: item.number,
                url: item.html_url,
                existed: false,
            })
        }
        .boxed()
    }

    fn pull_request_for<'a>(
        &'a self,
        repo: &'a str,
        head: &'a str,
    ) -> BoxFuture<'a, Result<Option<PullRequestState>, Error>> {
        async move {
            let crab = self.client(repo).await?;
            Ok(self
                .pull_by_head(&crab, repo, head)
                .await?
                .map(|item| PullRequestState {
                    open: item.state.as_deref() != Some("closed") && item.merged_at.is_none(),
                    url: item.html_url,
                }))
        }
        .boxed()
    }

    fn open_issue<'a>(&'a self, issue: &'a IssueSpec) -> BoxFuture<'a, Result<Opened, Error>> {
        async move {
            let crab = self.client(&issue.repo).await?;
            let marker = issue_marker(&issue.key);
            let what = "looking up the failure issue";
            let query = serde_urlencoded::to_string([
                ("labels", self.label.as_str()),
                ("state", "all"),
                ("per_page", "100"),
            ])
            .map_err(|e| Error::Corrupt(e.to_string()))?;
            let found = self
                .all_pages::<Item>(
                    &crab,
                    format!("/repos/{}/issues?{query}", issue.repo),
                    what,
                    // Pull requests are issues to this API, and their bodies are agents'
                    // reports: only issues count.
                    |i| {
                        i.pull_request.is_none()
                            && i.body.as_deref().is_some_and(|b| b.contains(&marker))
                    },
                )
                .await?;
            if let Some(i) = found {
                return Ok(Opened {
                    number: i.number,
                    url: i.html_url,
                    existed: true,
                });
            }
            let what = "opening the failure issue";
            let labels: Vec<&str> = Some(self.label.as_str())
                .filter(|l| !l.is_empty())
                .into_iter()
                .collect();
            let reply = crab
                ._post(
                    format!("/repos/{}/issues", issue.repo),
                    Some(&json!({
                        "title": issue.title,
                        "body": format!("{}\n\n{marker}", issue.body),
                        "labels": labels,
                    })),
                )
                .await
                .map_err(|e| transport(what, e))?;
            let item: Item = json_of(&crab, check(reply, what).await?, what).await?;
            Ok(Opened {
                number: item.number,
                url: item.html_url,
                existed: false,
            })
        }
        .boxed()
    }

    fn git_credentials<'a>(
        &'a self,
        repo: &'a str,
        purpose: GitPurpose,
    ) -> BoxFuture<'a, Result<Option<GitCredentials>, Error>> {
        async move {
            let Auth::App { app, .. } = &self.auth else {
                return Ok(None);
            };
            let (id, _) = self.installation(repo).await?;
            let name = repo.rsplit('/').next().unwrap_or(repo);
            let (what, permissions) = match purpose {
                GitPurpose::Clone => (
                    format!("minting a clone token for {repo}"),
                    json!({"contents": "read"}),
                ),
                GitPurpose::Push => (
                    format!("minting a push token for {repo}"),
                    json!({"contents": "write", "pull_requests": "write"}),
                ),
            };
            let reply = app
                ._post(
                    format!("/app/installations/{}/access_tokens", id.0),
                    Some(&json!({"repositories": [name], "permissions": permissions})),
                )
                .await
                .map_err(|e| transport(&what, e))?;
            let token: AccessToken = match check(reply, &what).await {
                Ok(reply) => json_of(app, reply, &what).await?,
                Err(e) => {
                    // The App may have been reinstalled (a new installation id): look it up
                    // again next time.
                    if matches!(e, Error::Refused(_)) {
                        if let Auth::App { installations, .. } = &self.auth {
                            installations.lock().expect("lock").remove(repo);
                        }
                    }
                    return Err(e);
                }
            };
            let expires_ms = token
                .expires_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            Ok(Some(GitCredentials {
                username: "x-access-token".into(),
                password: token.token,
                expires_ms,
            }))
        }
        .boxed()
    }
}
