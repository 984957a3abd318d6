//! A local HTTP server speaking Jira Cloud's REST v3 endpoints that Conductor uses, with
//! Jira's behaviour where it matters: comments are kept and listed in pages (`startAt`,
//! `maxResults`, `total`), an issue moves through a workflow whose transitions depend on its
//! status (a transition not offered from the current status is refused, as Jira does), issues
//! are created and found by label through JQL, and every call must carry Basic credentials.
//! `set_down(true)` makes every endpoint answer 503, as during an outage.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};
use wiremock::{matchers::path_regex, Mock, MockServer, Request, Respond, ResponseTemplate};

pub const USER: &str = "bot@example.com";
pub const TOKEN: &str = "jira_TESTSECRET_token_0123456789";

#[derive(Default)]
pub struct State {
    /// Comments by issue key, in order.
    pub comments: HashMap<String, Vec<Value>>,
    /// Status by issue key ("To Do" until moved).
    pub status: HashMap<String, String>,
    /// Transitions made: (issue key, transition id).
    pub transitions: Vec<(String, String)>,
    /// Issues created: (key, request body).
    pub created: Vec<(String, Value)>,
    pub down: bool,
    /// Calls refused for missing or wrong credentials.
    pub unauthorised: usize,
}

#[derive(Clone, Default)]
pub struct Jira {
    pub state: Arc<Mutex<State>>,
}

/// The workflow: from each status, the transitions offered (id, name, target).
fn offered(status: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    match status {
        "To Do" => vec![("11", "Start Progress", "In Progress")],
        "In Progress" => vec![
            ("21", "Ready for Review", "In Review"),
            ("31", "Stop Progress", "To Do"),
        ],
        "In Review" => vec![("41", "Done", "Done"), ("51", "Reopen", "To Do")],
        _ => vec![("51", "Reopen", "To Do")],
    }
}

impl Respond for Jira {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut s = self.state.lock().unwrap();
        if s.down {
            return ResponseTemplate::new(503).set_body_string("Service Unavailable");
        }
        let expected = format!(
            "Basic {}",
            super::git_http::encode_base64(format!("{USER}:{TOKEN}").as_bytes())
        );
        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != expected {
            s.unauthorised += 1;
            return ResponseTemplate::new(401)
                .set_body_json(json!({"errorMessages": ["unauthorised"]}));
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let path = req.url.path().trim_start_matches("/rest/api/3/").to_owned();
        let parts: Vec<&str> = path.split('/').collect();
        let query = |k: &str| {
            req.url
                .query_pairs()
                .find(|(q, _)| q == k)
                .map(|(_, v)| v.into_owned())
        };
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["issue", key, "comment"]) => {
                let all = s.comments.get(*key).cloned().unwrap_or_default();
                let start: usize = query("startAt").and_then(|v| v.parse().ok()).unwrap_or(0);
                // Jira caps a page whatever is asked; small pages here so paging is exercised.
                let max = query("maxResults")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(50usize)
                    .min(2);
                let page: Vec<Value> = all.iter().skip(start).take(max).cloned().collect();
                ResponseTemplate::new(200).set_body_json(json!({
                    "startAt": start, "maxResults": max, "total": all.len(), "comments": page,
                }))
            }
            ("POST", ["issue", key, "comment"]) => {
                let list = s.comments.entry((*key).to_owned()).or_default();
                let id = list.len() + 10000;
                let comment = json!({"id": id.to_string(), "body": body["body"]});
                list.push(comment.clone());
                ResponseTemplate::new(201).set_body_json(comment)
            }
            ("GET", ["issue", key]) => {
                let status = s.status.get(*key).cloned().unwrap_or("To Do".into());
                ResponseTemplate::new(200)
                    .set_body_json(json!({"key": key, "fields": {"status": {"name": status}}}))
            }
            ("GET", ["issue", key, "transitions"]) => {
                let status = s.status.get(*key).cloned().unwrap_or("To Do".into());
                let list: Vec<Value> = offered(&status)
                    .into_iter()
                    .map(|(id, name, to)| json!({"id": id, "name": name, "to": {"name": to}}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"transitions": list}))
            }
            ("POST", ["issue", key, "transitions"]) => {
                let status = s.status.get(*key).cloned().unwrap_or("To Do".into());
                let id = body["transition"]["id"].as_str().unwrap_or_default();
                let Some((_, _, to)) = offered(&status).into_iter().find(|(i, _, _)| *i == id)
                else {
                    return ResponseTemplate::new(400).set_body_json(json!({
                        "errorMessages": [format!("Transition id '{id}' is not valid for this issue.")]
                    }));
                };
                s.status.insert((*key).to_owned(), to.to_owned());
                s.transitions.push(((*key).to_owned(), id.to_owned()));
                ResponseTemplate::new(204)
            }
            ("POST", ["search", "jql"]) => {
                let jql = body["jql"].as_str().unwrap_or_default().to_owned();
                let found: Vec<Value> = s
                    .created
                    .iter()
                    .filter(|(_, b)| {
                        b["fields"]["labels"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|l| {
                                jql.contains(&format!("labels = \"{}\"", l.as_str().unwrap_or("?")))
                            })
                    })
                    .map(|(k, _)| json!({"key": k}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"issues": found}))
            }
            ("POST", ["issue"]) => {
                let project = body["fields"]["project"]["key"]
                    .as_str()
                    .unwrap_or("X")
                    .to_owned();
                let key = format!("{project}-{}", s.created.len() + 1);
                s.created.push((key.clone(), body));
                ResponseTemplate::new(201).set_body_json(json!({"id": "1", "key": key}))
            }
            _ => ResponseTemplate::new(404)
                .set_body_json(json!({"errorMessages": ["no such endpoint"]})),
        }
    }
}

impl Jira {
    pub async fn start() -> (MockServer, Jira) {
        let server = MockServer::start().await;
        let jira = Jira::default();
        Mock::given(path_regex("^/rest/api/3/"))
            .respond_with(jira.clone())
            .mount(&server)
            .await;
        (server, jira)
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// The text of every comment on `key`, as posted.
    pub fn comments(&self, key: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .comments
            .get(key)
            .map(|c| c.iter().map(|v| v["body"].to_string()).collect())
            .unwrap_or_default()
    }

    pub fn transitions(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().transitions.clone()
    }

    pub fn status(&self, key: &str) -> String {
        self.state
            .lock()
            .unwrap()
            .status
            .get(key)
            .cloned()
            .unwrap_or("To Do".into())
    }
}
