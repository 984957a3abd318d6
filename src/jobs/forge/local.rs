//! The local forge: pull requests and issues recorded in `forge_records`, shown by
//! `conductor jobs`. One per (kind, repository, head branch or issue key).

use futures::{future::BoxFuture, FutureExt};

use super::{Forge, IssueSpec, Opened, PullRequestSpec, PullRequestState};
use crate::{
    db::{now_ms, Db},
    error::Error,
    with_pool,
};

pub struct LocalForge {
    pub db: Db,
}

impl LocalForge {
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        kind: &str,
        repo: &str,
        key: &str,
        head: Option<&str>,
        base: Option<&str>,
        title: &str,
        body: &str,
    ) -> Result<Opened, Error> {
        const INSERT: &str =
            "INSERT INTO forge_records (kind, repo, key, head, base, title, body, created_ms)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (kind, repo, key) DO NOTHING";
        const FIND: &str =
            "SELECT id FROM forge_records WHERE kind = $1 AND repo = $2 AND key = $3";
        let inserted = with_pool!(&self.db, |p| sqlx::query(INSERT)
            .bind(kind)
            .bind(repo)
            .bind(key)
            .bind(head)
            .bind(base)
            .bind(title)
            .bind(body)
            .bind(now_ms())
            .execute(p)
            .await?
            .rows_affected());
        let id: i64 = with_pool!(&self.db, |p| sqlx::query_scalar(FIND)
            .bind(kind)
            .bind(repo)
            .bind(key)
            .fetch_one(p)
            .await?);
        let path = if kind == "pull" { "pull" } else { "issues" };
        Ok(Opened {
            number: id,
            url: format!("local://{repo}/{path}/{id}"),
            existed: inserted == 0,
        })
    }
}

impl Forge for LocalForge {
    fn name(&self) -> &'static str {
        "local"
    }

    fn open_pull_request<'a>(
        &'a self,
        pr: &'a PullRequestSpec,
    ) -> BoxFuture<'a, Result<Opened, Error>> {
        self.record(
            "pull",
            &pr.repo,
            &pr.head,
            Some(&pr.head),
            Some(&pr.base),
            &pr.title,
            &pr.body,
        )
        .boxed()
    }

    /// The local forge never merges: a recorded pull request stays open.
    fn pull_request_for<'a>(
        &'a self,
        repo: &'a str,
        head: &'a str,
    ) -> BoxFuture<'a, Result<Option<PullRequestState>, Error>> {
        async move {
            const FIND: &str =
                "SELECT id FROM forge_records WHERE kind = 'pull' AND repo = $1 AND key = $2";
            let id: Option<i64> = with_pool!(&self.db, |p| sqlx::query_scalar(FIND)
                .bind(repo)
                .bind(head)
                .fetch_optional(p)
                .await?);
            Ok(id.map(|id| PullRequestState {
                url: format!("local://{repo}/pull/{id}"),
                open: true,
            }))
        }
        .boxed()
    }

    fn open_issue<'a>(&'a self, issue: &'a IssueSpec) -> BoxFuture<'a, Result<Opened, Error>> {
        self.record(
            "issue",
            &issue.repo,
            &issue.key,
            None,
            None,
            &issue.title,
            &issue.body,
        )
        .boxed()
    }
}
