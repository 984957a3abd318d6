//! Status back on the ticket (docs/design.md section 11), against a local server speaking
//! Jira Cloud's REST v3 (common/jira.rs): a comment and a transition when the agent starts and
//! when the job ends, each exactly once across a SIGKILL between posting and recording; a Jira
//! outage that holds up no job; an incident's own Jira issue, opened once.

use std::time::Duration;

use crate::common::{
    self,
    jira::{self, Jira},
    jobs::Bench,
};
use conductor::config::{TrackerKind, Transitions};

const JOB_DONE: &str =
    "SELECT COUNT(*) FROM agent_jobs WHERE state IN ('succeeded', 'failed', 'quarantined')";
const POSTED: &str = "SELECT COUNT(*) FROM notices WHERE state = 'posted'";
const JIRA_ENV: [(&str, &str); 2] = [("JIRA_USER", jira::USER), ("JIRA_TOKEN", jira::TOKEN)];

async fn jira_bench(postgres: bool, mode: &str, jira_url: &str) -> Bench {
    let url = jira_url.to_owned();
    Bench::new(postgres, mode, move |c, _| {
        c.tracker.kind = TrackerKind::Jira;
        c.tracker.base_url = url;
        c.tracker.retry_interval = Duration::from_secs(1);
        c.tracker.transitions.insert(
            "PAY".into(),
            Transitions {
                started: Some("Start Progress".into()),
                succeeded: Some("Ready for Review".into()),
                failed: Some("Stop Progress".into()),
            },
        );
        c.http.public_url = Some("https://conductor.example.com".into());
    })
    .await
}

/// The conductor dies (SIGKILL) right after the "started" comment and transition reached Jira
/// and before it recorded them; the restarted one finds the comment by its marker and the
/// issue already in progress, posts neither again, and goes on to the "ended" notice.
async fn told_once_each_across_a_kill(postgres: bool) {
    let (server, jira) = Jira::start().await;
    let mut bench = jira_bench(postgres, "ok", &server.uri()).await;
    bench.submit(&["ticket-bare.json"]);
    let mut env = JIRA_ENV.to_vec();
    env.push(("CONDUCTOR_FAILPOINTS", "notify.after_post"));
    bench.start_with(&env);
    bench.wait_exit();
    assert_eq!(jira.comments("PAY-42").len(), 1, "posted before the kill");
    assert_eq!(bench.count(POSTED).await, 0, "not recorded before the kill");

    bench.start_with(&JIRA_ENV);
    bench.wait_for(JOB_DONE, 1).await;
    bench.wait_for(POSTED, 2).await;
    bench.stop();

    let comments = jira.comments("PAY-42");
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert_eq!(
        comments
            .iter()
            .filter(|c| c.contains("conductor:job-1-run-") && c.contains("-started"))
            .count(),
        1,
        "{comments:#?}"
    );
    assert!(
        comments[0].contains("Conductor started an agent on job 1"),
        "{}",
        comments[0]
    );
    assert!(
        comments[0].contains("https://conductor.example.com/jobs/1"),
        "the job's page is linked: {}",
        comments[0]
    );
    assert!(
        comments[1]
            .contains("Conductor job 1 finished: pull request https://forge.test/acme/app/pull/7"),
        "{}",
        comments[1]
    );
    assert_eq!(
        jira.transitions(),
        vec![
            ("PAY-42".to_owned(), "11".to_owned()),
            ("PAY-42".to_owned(), "21".to_owned())
        ],
        "Start Progress once, then Ready for Review once"
    );
    assert_eq!(jira.status("PAY-42"), "In Review");
    // The ended notice records the transition it made. (The started one's re-run found
    // "Start Progress" no longer offered from "In Progress", so it records none.)
    assert_eq!(
        bench
            .text("SELECT transition FROM notices WHERE event = 'ended'")
            .await,
        "Ready for Review"
    );
    assert_eq!(
        bench
            .text("SELECT url FROM notices WHERE event = 'ended'")
            .await,
        format!("{}/browse/PAY-42", server.uri())
    );
    // The ticket's key is linked from the pull request, beside the job.
    let pulls = bench.posts_to("/repos/acme/app/pulls").await;
    let body = pulls[0]["body"].as_str().unwrap();
    assert!(
        body.contains(&format!(
            "Opened by Conductor for ticket [PAY-42]({}/browse/PAY-42), [job 1](https://conductor.example.com/jobs/1)",
            server.uri()
        )),
        "{body}"
    );
    assert_eq!(jira.state.lock().unwrap().unauthorised, 0);
    // Job history shows what the ticket was told.
    let (status, out, err) =
        common::conductor(&["history", "--database", &bench.url, "job", "1"], &[]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains("notices") && out.contains("Ready for Review"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jira_is_told_once_each_across_a_kill_sqlite() {
    told_once_each_across_a_kill(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jira_is_told_once_each_across_a_kill_postgres() {
    told_once_each_across_a_kill(true).await;
}

/// Jira is down for the whole job: the job still ends (with its pull request), its notices
/// wait with the error shown on their step, and once Jira is back both are posted.
#[tokio::test(flavor = "multi_thread")]
async fn a_jira_outage_holds_up_no_job() {
    let (server, jira) = Jira::start().await;
    jira.set_down(true);
    let mut bench = jira_bench(false, "fail", &server.uri()).await;
    bench.submit(&["ticket-bare.json"]);
    bench.start_with(&JIRA_ENV);
    bench.wait_for(JOB_DONE, 1).await;
    assert_eq!(bench.text("SELECT state FROM agent_jobs").await, "failed");
    // The first notice waits out the outage, having met it; the second waits its turn behind
    // it (one ticket's notices go out in order).
    bench
        .wait_for(
            "SELECT COUNT(*) FROM runs r JOIN steps s ON s.run_id = r.id
             WHERE r.workflow = 'notice' AND s.error LIKE '%503%'",
            1,
        )
        .await;
    bench
        .wait_for("SELECT COUNT(*) FROM notices WHERE event = 'ended'", 1)
        .await;
    assert_eq!(bench.count(POSTED).await, 0);
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM notices WHERE state = 'pending'")
            .await,
        2
    );
    jira.set_down(false);
    bench.wait_for(POSTED, 2).await;
    bench.stop();
    let comments = jira.comments("PAY-42");
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert!(
        comments[1].contains("ended failed")
            && comments[1].contains("the agent reported that the job failed"),
        "{}",
        comments[1]
    );
    // Started, then the failure's transition back.
    assert_eq!(jira.status("PAY-42"), "To Do");
}

/// With `incidents.jira_project`, an incident gets one Jira issue, labelled with its id, and
/// both of its job's notices go there.
#[tokio::test(flavor = "multi_thread")]
async fn an_incident_gets_one_jira_issue() {
    let (server, jira) = Jira::start().await;
    let url = server.uri();
    let mut bench = Bench::new(false, "ok", move |c, _| {
        c.tracker.kind = TrackerKind::Jira;
        c.tracker.base_url = url;
        c.incidents.jira_project = Some("OPS".into());
    })
    .await;
    bench.submit(&["alarm-eventbridge.json"]);
    bench.start_with(&JIRA_ENV);
    bench.wait_for(JOB_DONE, 1).await;
    bench.wait_for(POSTED, 2).await;
    bench.stop();
    let created = jira.state.lock().unwrap().created.clone();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].0, "OPS-1");
    assert_eq!(
        created[0].1["fields"]["labels"],
        serde_json::json!(["conductor-incident", "conductor-incident-1"])
    );
    assert_eq!(created[0].1["fields"]["issuetype"]["name"], "Task");
    assert_eq!(jira.comments("OPS-1").len(), 2);
    assert_eq!(
        bench
            .text("SELECT issue_key FROM incident_issues WHERE incident_id = 1")
            .await,
        "OPS-1"
    );
    let _ = common::count(&bench.db, "SELECT 1").await;
}

/// Jira Data Center's REST v2: a personal access token as Bearer, plain-text comments with
/// the marker, found again (through a second page) instead of posted twice.
#[tokio::test(flavor = "multi_thread")]
async fn data_center_takes_plain_comments_and_a_bearer_token() {
    use conductor::{
        config::{JiraApi, TrackerConfig},
        jobs::tracker::{jira::JiraTracker, Comment, Tracker},
    };
    use std::sync::{Arc, Mutex};
    use wiremock::{matchers::path, Mock, MockServer, Request, ResponseTemplate};

    let server = MockServer::start().await;
    let posted: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let kept = posted.clone();
    Mock::given(path("/rest/api/2/issue/OPS-7/comment"))
        .respond_with(move |req: &Request| {
            let auth = req
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            if auth.as_deref() != Some("Bearer dc_TESTSECRET_pat_0123456789") {
                return ResponseTemplate::new(401);
            }
            let mut kept = kept.lock().unwrap();
            if req.method.as_str() == "POST" {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                kept.push(serde_json::json!({"id": "1", "body": body["body"]}));
                return ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": "1"}));
            }
            // One comment per page: an unrelated one first, then what was posted.
            let mut all = vec![serde_json::json!({"id": "0", "body": "a person's comment"})];
            all.extend(kept.iter().cloned());
            let start: usize = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "startAt")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "startAt": start, "maxResults": 1, "total": all.len(),
                "comments": all.into_iter().skip(start).take(1).collect::<Vec<_>>(),
            }))
        })
        .mount(&server)
        .await;
    conductor::secrets::hold(
        "CONDUCTOR_TEST_DC_PAT",
        "dc_TESTSECRET_pat_0123456789".into(),
    );
    let tracker = JiraTracker::new(&TrackerConfig {
        kind: TrackerKind::Jira,
        base_url: server.uri(),
        api: JiraApi::Datacenter,
        user_env: "CONDUCTOR_TEST_NO_SUCH_USER".into(),
        token_env: "CONDUCTOR_TEST_DC_PAT".into(),
        ..TrackerConfig::default()
    })
    .unwrap();
    let comment = Comment {
        issue_key: "OPS-7",
        marker: "conductor:job-3-run-4-ended",
        text: "Conductor job 3 finished: pull request https://forge.test/1.",
        link: Some("https://conductor.example.com/jobs/3"),
        transition: None,
    };
    let first = tracker.post(&comment).await.unwrap();
    let again = tracker.post(&comment).await.unwrap();
    assert!(!first.existed && again.existed);
    let posted = posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 1);
    let text = posted[0]["body"].as_str().unwrap();
    assert!(text.starts_with("Conductor job 3 finished"), "{text}");
    assert!(
        text.contains("[The job in Conductor|https://conductor.example.com/jobs/3]"),
        "{text}"
    );
    assert!(text.contains("conductor:job-3-run-4-ended"), "{text}");
    assert_eq!(first.url, format!("{}/browse/OPS-7", server.uri()));
}
