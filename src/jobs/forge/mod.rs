//! Where pull requests (and failure issues) are opened: GitHub's REST API ([`github`]) or, for
//! the embedded default, the database ([`local`]). Both look for what they would open before
//! opening it, so a retried `open PR` step finds the first one instead of duplicating it.

pub mod github;
pub mod local;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestSpec {
    /// `owner/name`.
    pub repo: String,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueSpec {
    pub repo: String,
    /// Identifies the issue across retries (written into its body).
    pub key: String,
    pub title: String,
    pub body: String,
}

/// A pull request or issue on the forge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub number: i64,
    pub url: String,
    /// Found rather than created.
    pub existed: bool,
}

/// A pull request found by its head branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestState {
    pub url: String,
    /// Neither merged nor closed.
    pub open: bool,
}

/// What a worker clones and pushes with, minted for the one call that asked (a GitHub App's
/// installation token scoped to the job's repository). Never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
    /// When the password stops working (0: unknown).
    pub expires_ms: i64,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// What a worker's git credentials are for: each gets the least the transfer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitPurpose {
    /// Reading the repository.
    Clone,
    /// Pushing the agent's branch.
    Push,
}

impl GitPurpose {
    /// The purpose a worker names (`clone`, `push`).
    pub fn parse(s: &str) -> Option<GitPurpose> {
        match s {
            "clone" => Some(GitPurpose::Clone),
            "push" => Some(GitPurpose::Push),
            _ => None,
        }
    }
}

pub trait Forge: Send + Sync {
    fn name(&self) -> &'static str;
    fn open_pull_request<'a>(
        &'a self,
        pr: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<Opened, Error>>;
    fn open_issue<'a>(&'a self, issue: &'a IssueSpec) -> BoxFuture<'a, Result<Opened, Error>>;
    /// The pull request on `repo` whose head is `head`, if there is one, and whether it is
    /// still open: a new attempt continues an open one's branch, never a merged one's.
    fn pull_request_for<'a>(
        &'a self,
        repo: &'a str,
        head: &'a str,
    ) -> BoxFuture<'a, Result<Option<PullRequestState>, Error>>;
    /// Credentials for a worker to clone and push `repo` (`owner/name`) with, minted now; None
    /// when this forge mints none (the worker then uses what its environment holds).
    fn git_credentials<'a>(
        &'a self,
        _repo: &'a str,
        _purpose: GitPurpose,
    ) -> BoxFuture<'a, Result<Option<GitCredentials>, Error>> {
        Box::pin(async { Ok(None) })
    }
}

/// The marker that identifies an issue Conductor opened, kept in the issue body.
pub fn issue_marker(key: &str) -> String {
    format!("<!-- conductor:{key} -->")
}
