//! A real git smart-HTTP server for the tests: `git http-backend` run as a CGI program behind a
//! small axum server on loopback. Workers clone and push to it with libgit2 exactly as they
//! would to a forge over HTTPS (Basic authentication, a 401 challenge first), and the test can
//! read back which password (token) each request for each repository carried.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::Response,
    Router,
};
use tokio::io::AsyncWriteExt;

/// The largest request body the server reads (a push's pack): far beyond what a test sends.
const BODY_LIMIT: usize = 256 << 20;

/// What the server saw of one request: the repository path (`owner/name.git`), the git service
/// (`git-upload-pack`, `git-receive-pack`, or "" for anything else) and the Basic password it
/// carried (`None` without one).
#[derive(Debug, Clone)]
pub struct Seen {
    pub repo: String,
    pub service: String,
    pub password: Option<String>,
}

/// Decides whether a request for `repo` with this Basic password goes through to git.
pub type Authorize = Arc<dyn Fn(&str, &str, Option<&str>) -> bool + Send + Sync>;

/// A running server; stops when dropped.
pub struct GitHttp {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the handler shares.
#[derive(Clone)]
struct Srv {
    root: PathBuf,
    authorize: Authorize,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitHttp {
    /// Serves the bare repositories under `root` (`root/owner/name.git` is at
    /// `{url}/owner/name.git`). `authorize(repo_path, service, password)` decides: true lets the request
    /// through to git, false answers 401 with a Basic challenge, which is what makes libgit2 ask
    /// its credentials callback. Every request, allowed or not, is recorded in [`GitHttp::seen`].
    ///
    /// The listener is bound before this returns, so clients may connect at once: nothing to
    /// wait for.
    pub async fn start(root: PathBuf, authorize: Authorize) -> GitHttp {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let srv = Srv {
            root,
            authorize,
            seen: seen.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(srv);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttp { url, seen, task }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The repository part of a request path: up to and including the `.git` segment, without the
/// leading slash (the whole path when no segment ends in `.git`).
fn repo_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.iter().position(|s| s.ends_with(".git")) {
        Some(i) => segments[..=i].join("/"),
        None => segments.join("/"),
    }
}

/// The git service a request is for: `service=` on `info/refs`, else the last path segment of
/// the POSTs (`…/git-upload-pack`, `…/git-receive-pack`); "" for anything else.
fn service_of(path: &str, query: &str) -> String {
    if let Some(s) = query.split('&').find_map(|kv| kv.strip_prefix("service=")) {
        return s.to_owned();
    }
    let last = path.rsplit('/').next().unwrap_or_default();
    match last {
        "git-upload-pack" | "git-receive-pack" => last.to_owned(),
        _ => String::new(),
    }
}

/// The (user, password) of an `Authorization: Basic …` header.
fn basic_auth(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Standard base64, as Basic authentication sends credentials.
pub fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn plain(status: StatusCode, text: String) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap()
}

async fn handle(State(srv): State<Srv>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let repo = repo_of(&path);
    let auth = basic_auth(&parts.headers);
    let password = auth.as_ref().map(|(_, p)| p.clone());
    let service = service_of(&path, &query);
    srv.seen.lock().unwrap().push(Seen {
        repo: repo.clone(),
        service: service.clone(),
        password: password.clone(),
    });
    if !(srv.authorize)(&repo, &service, password.as_deref()) {
        // The challenge is what makes libgit2 call its credentials callback (and retry).
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Basic realm=\"conductor-test\"")
            .body(Body::from("authentication required\n"))
            .unwrap();
    }

    // The whole body first: git http-backend wants CONTENT_LENGTH, and libgit2 sends pushes
    // chunked.
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
    };
    let header_str = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &srv.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // Pushes are allowed whatever REMOTE_USER says: authorization is `authorize`'s job.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("PATH_INFO", &path)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", &query)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A client that hangs up drops this handler: the CGI goes with it.
        .kill_on_drop(true);
    if let Some(ct) = header_str(&header::CONTENT_TYPE) {
        cmd.env("CONTENT_TYPE", ct);
    }
    if !body.is_empty() || parts.method == axum::http::Method::POST {
        cmd.env("CONTENT_LENGTH", body.len().to_string());
    }
    // A gzip body (git sends them for large upload-pack requests) stays as it came: http-backend
    // inflates it itself when told.
    if let Some(enc) = header_str(&header::CONTENT_ENCODING) {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    // Protocol v2, for the git CLI (libgit2 speaks v0 and sends none).
    if let Some(proto) = header_str(&HeaderName::from_static("git-protocol")) {
        cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    if let Some((user, _)) = auth.as_ref().filter(|(u, _)| !u.is_empty()) {
        cmd.env("REMOTE_USER", user);
    }

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start git http-backend: {e}\n"),
            )
        }
    };
    // Feeding stdin from its own task while stdout is drained here: a large body and a large
    // answer would otherwise each wait on the other. A CGI that stops reading early only
    // makes the write fail, which is no error of ours.
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        // Dropping stdin closes it: end of the request.
    });
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("git http-backend: {e}\n"),
            )
        }
    };
    let _ = writer.await;
    if !out.status.success() {
        let head_len = out.stdout.len().min(512);
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "git http-backend {} ({path}?{query})\n--- stderr ---\n{}\n--- stdout (start) ---\n{}\n",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout[..head_len]),
            ),
        );
    }
    cgi_response(&out.stdout)
}

/// Turns a CGI program's output (header lines, an empty line, the body) into a response.
fn cgi_response(stdout: &[u8]) -> Response {
    let mut builder = Response::builder();
    let mut status = StatusCode::OK;
    let mut pos = 0;
    let body_start = loop {
        let Some(nl) = stdout[pos..].iter().position(|b| *b == b'\n') else {
            // No blank line: everything was headers.
            break stdout.len();
        };
        let line = &stdout[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break pos;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_owned();
        if name.eq_ignore_ascii_case("status") {
            if let Some(code) = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                status = code;
            }
            continue;
        }
        // The body's framing is hyper's to decide.
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            builder = builder.header(n, v);
        }
    };
    builder
        .status(status)
        .body(Body::from(stdout[body_start..].to_vec()))
        .unwrap()
}

/// Runs git with `args` (an identity and no signing, whatever the machine's configuration
/// says), panicking with its output on failure.
fn git(args: &[&str], cwd: &Path) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("git on PATH");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates `root/<owner_name>.git` (`owner_name` as "owner/name") as a bare repository whose
/// `main` has one commit (a README.md), made and pushed with the git CLI so the repository is
/// exactly what a forge would hold; returns its path.
pub fn bare_repo_with_main(root: &Path, owner_name: &str) -> PathBuf {
    let bare = root.join(format!("{owner_name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&["init", "-q", "--bare", "-b", "main", "."], &bare);
    let work = tempfile::tempdir().unwrap();
    git(&["init", "-q", "-b", "main", "."], work.path());
    std::fs::write(work.path().join("README.md"), format!("# {owner_name}\n")).unwrap();
    git(&["add", "README.md"], work.path());
    git(&["commit", "-q", "-m", "Initial commit"], work.path());
    // Pushed from the temporary directory: the path must not depend on the current one.
    let target = std::path::absolute(&bare).unwrap();
    git(
        &[
            "push",
            "-q",
            target.to_str().unwrap(),
            "main:refs/heads/main",
        ],
        work.path(),
    );
    bare
}

#[test]
fn request_paths_name_repository_and_service() {
    assert_eq!(repo_of("/owner/name.git/info/refs"), "owner/name.git");
    assert_eq!(
        repo_of("/owner/name.git/git-receive-pack"),
        "owner/name.git"
    );
    assert_eq!(
        service_of("/owner/name.git/info/refs", "service=git-upload-pack"),
        "git-upload-pack"
    );
    assert_eq!(
        service_of("/owner/name.git/git-receive-pack", ""),
        "git-receive-pack"
    );
    assert_eq!(service_of("/owner/name.git/HEAD", ""), "");
}
