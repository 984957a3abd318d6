//! The local tracker (the embedded default): the `notices` table is the record and nothing is
//! sent anywhere; `conductor demo` prints what would have been posted.

use futures::{future::BoxFuture, FutureExt};

use super::{Comment, IncidentIssue, Posted, Tracker};
use crate::error::Error;

pub struct LocalTracker;

impl Tracker for LocalTracker {
    fn name(&self) -> &'static str {
        "local"
    }

    fn post<'a>(&'a self, comment: &'a Comment<'a>) -> BoxFuture<'a, Result<Posted, Error>> {
        async move {
            Ok(Posted {
                url: format!("local://{}#{}", comment.issue_key, comment.marker),
                transition: comment.transition.map(str::to_owned),
                existed: false,
            })
        }
        .boxed()
    }

    fn incident_issue<'a>(
        &'a self,
        issue: &'a IncidentIssue<'a>,
    ) -> BoxFuture<'a, Result<String, Error>> {
        async move { Ok(format!("{}:{}", issue.project, issue.label)) }.boxed()
    }
}
