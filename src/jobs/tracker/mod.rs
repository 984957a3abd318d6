//! Where notices go (docs/design.md section 11): Jira's REST API ([`jira`]: Cloud's v3 or Data
//! Center's v2) or, for the embedded default, nowhere beyond the database ([`local`]). Like the
//! forge, a tracker looks for what it would post before posting it: a comment carries its
//! notice's marker, an incident's issue its label, so a re-run after a crash between posting
//! and recording finds the first instead of posting a second.

pub mod jira;
pub mod local;

use futures::future::BoxFuture;

use crate::error::Error;

/// One notice, ready to post on `issue_key`.
#[derive(Debug, Clone)]
pub struct Comment<'a> {
    pub issue_key: &'a str,
    /// Identifies the comment across retries; written into it.
    pub marker: &'a str,
    pub text: &'a str,
    /// The job's page in the console, when `http.public_url` is set.
    pub link: Option<&'a str>,
    /// A workflow transition to make after commenting, by name.
    pub transition: Option<&'a str>,
}

/// Where a comment went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The issue's page.
    pub url: String,
    /// The transition made, or found made already.
    pub transition: Option<String>,
    /// The comment was found rather than posted.
    pub existed: bool,
}

/// What an incident's issue is opened with.
#[derive(Debug, Clone)]
pub struct IncidentIssue<'a> {
    pub project: &'a str,
    pub issue_type: &'a str,
    /// Identifies the issue across retries (a label).
    pub label: &'a str,
    pub summary: &'a str,
    pub description: &'a str,
}

pub trait Tracker: Send + Sync {
    fn name(&self) -> &'static str;
    /// Comments on the issue unless a comment carrying the marker is there, then makes the
    /// transition unless the issue already is where it leads.
    fn post<'a>(&'a self, comment: &'a Comment<'a>) -> BoxFuture<'a, Result<Posted, Error>>;
    /// The key of the incident's issue: found by its label, or opened.
    fn incident_issue<'a>(
        &'a self,
        issue: &'a IncidentIssue<'a>,
    ) -> BoxFuture<'a, Result<String, Error>>;
}

/// The marker of a notice, as written into its comment.
pub fn marker(notice_key: &str) -> String {
    format!("conductor:{notice_key}")
}
