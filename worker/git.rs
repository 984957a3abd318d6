//! The clone and the push, with git2. Credentials (a token the conductor minted for this clone
//! or push, else GIT_TOKEN) are handed to libgit2 through its callback only, never put into a
//! URL, a config file or a log line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use git2::{
    build::RepoBuilder, Cred, FetchOptions, PushOptions, RemoteCallbacks, Repository, Signature,
};

/// Credentials for one clone or push: minted by the conductor for this call (a GitHub App's
/// installation token scoped to the job's repository), else GIT_TOKEN from the environment.
#[derive(Clone, Default)]
pub struct Creds {
    pub username: String,
    pub password: String,
}

/// Callbacks that hand credentials to libgit2 for `url` (the job's repository) and nothing
/// else. The clone's `.git/config` is the agent's to write: a rewritten `origin`, `pushurl`
/// or `url.*.insteadOf` would point the transfer elsewhere, and the credentials with it, so
/// a request for any other URL gets none.
fn callbacks<'a>(url: &str, minted: Option<Creds>) -> RemoteCallbacks<'a> {
    let allowed = url.to_owned();
    let mut cb = RemoteCallbacks::new();
    let mut asked = 0;
    cb.credentials(move |url, username, _allowed| {
        if url != allowed {
            return Err(git2::Error::from_str(&format!(
                "refusing to send credentials to {url}: the job's repository is {allowed}"
            )));
        }
        // libgit2 asks again after every refusal: a third refusal ends the clone or push
        // with the server's answer instead of looping.
        asked += 1;
        if asked > 3 {
            return Err(git2::Error::from_str("the remote refused the credentials"));
        }
        match &minted {
            Some(c) => Cred::userpass_plaintext(&c.username, &c.password),
            None => match conductor::secrets::get("GIT_TOKEN") {
                Some(token) => {
                    Cred::userpass_plaintext(username.unwrap_or("x-access-token"), &token)
                }
                None => Cred::default(),
            },
        }
    });
    cb
}

/// Clones `url` at `base` into `dir` (replacing what a previous run left there).
pub async fn clone(url: &str, base: &str, dir: &Path, creds: Option<Creds>) -> Result<Repository> {
    let (url, base, dir) = (url.to_owned(), base.to_owned(), dir.to_owned());
    tokio::task::spawn_blocking(move || {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let mut fetch = FetchOptions::new();
        fetch.remote_callbacks(callbacks(&url, creds));
        RepoBuilder::new()
            .branch(&base)
            .fetch_options(fetch)
            .clone(&url, &dir)
            .with_context(|| format!("branch {base}"))
    })
    .await?
}

/// Checks out `branch` as the clone fetched it (`origin/<branch>`), for an attempt that
/// continues earlier work. Returns false, leaving the clone at its base, when the remote no
/// longer has that branch (deleted after its pull request was closed, say).
pub fn continue_from(dir: &Path, branch: &str) -> Result<bool> {
    let repo = Repository::open(dir).context("opening the clone")?;
    let Ok(remote) = repo.find_reference(&format!("refs/remotes/origin/{branch}")) else {
        return Ok(false);
    };
    let commit = remote.peel_to_commit()?;
    repo.branch(branch, &commit, true)?;
    repo.checkout_tree(
        commit.as_object(),
        Some(git2::build::CheckoutBuilder::new().force()),
    )?;
    repo.set_head(&format!("refs/heads/{branch}"))?;
    Ok(true)
}

/// Gives the agent its instructions (AGENTS.md at the root, unless the repository tracks its
/// own), keeps Conductor's files out of the commit, and turns off git's automatic
/// maintenance in the clone: a `git commit` by the agent otherwise may start a detached
/// `gc` (a clone of a busy remote holds many packs) that repacks and prunes refs while the
/// worker commits and pushes (seen in the soak: pushes failing on `main.lock` and vanished
/// ref directories). The clone lives for one attempt; it never needs a gc.
pub fn prepare(repo: &Path, task_dir: &Path) -> Result<()> {
    let mut config = Repository::open(repo)
        .and_then(|r| r.config())
        .context("opening the clone's config")?;
    config.set_i32("gc.auto", 0)?;
    config.set_bool("maintenance.auto", false)?;
    let mut exclude = String::from("/agent-meta/\n");
    if !repo.join("AGENTS.md").exists() {
        std::fs::copy(task_dir.join("AGENTS.md"), repo.join("AGENTS.md"))
            .context("copying AGENTS.md")?;
        exclude.push_str("/AGENTS.md\n");
    }
    let info = repo.join(".git/info");
    std::fs::create_dir_all(&info)?;
    let path = info.join("exclude");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&exclude);
    std::fs::write(&path, text)?;
    Ok(())
}

/// A branch-name slug of a title: lowercase ASCII words joined by `-`, at most 50 characters.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 50 {
            break;
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "change".into()
    } else {
        out
    }
}

/// Commits what the agent left uncommitted, points `branch` at the result and pushes it.
/// Returns the pushed commit. Fails if nothing changed since `base`.
pub async fn commit_and_push(
    repo: Repository,
    url: &str,
    dir: &Path,
    base: &str,
    branch: &str,
    title: &str,
    creds: Option<Creds>,
) -> Result<String> {
    let (url, dir, base, branch, title) = (
        url.to_owned(),
        dir.to_owned(),
        base.to_owned(),
        branch.to_owned(),
        title.to_owned(),
    );
    drop(repo);
    tokio::task::spawn_blocking(move || {
        let repo = Repository::open(&dir)?;
        let sig = repo
            .signature()
            .or_else(|_| Signature::now("Conductor worker", "conductor-worker@localhost"))?;
        let mut index = repo.index()?;
        index.add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"].iter(), None)?;
        index.write()?;
        let tree_id = index.write_tree()?;
        let head = repo.head()?.peel_to_commit()?;
        let commit = if head.tree_id() != tree_id {
            let tree = repo.find_tree(tree_id)?;
            repo.commit(Some("HEAD"), &sig, &sig, &title, &tree, &[&head])?
        } else {
            head.id()
        };
        let base_commit = repo
            .find_reference(&format!("refs/remotes/origin/{base}"))?
            .peel_to_commit()?
            .id();
        if commit == base_commit {
            bail!("the agent reported success but changed nothing");
        }
        if let Some(place) = secret_in(&repo, base_commit, commit, &conductor::secrets::values())? {
            bail!("refusing to push: {place} contains a credential this worker holds");
        }
        repo.reference(
            &format!("refs/heads/{branch}"),
            commit,
            true,
            "conductor branch",
        )?;
        // The job's repository itself, not `origin`: the agent may have rewritten that.
        let mut remote = repo.remote_anonymous(&url)?;
        let mut push = PushOptions::new();
        let mut cb = callbacks(&url, creds);
        let rejected = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let r = rejected.clone();
        cb.push_update_reference(move |refname, status| {
            if let Some(msg) = status {
                *r.lock().expect("lock") = Some(format!("{refname}: {msg}"));
            }
            Ok(())
        });
        push.remote_callbacks(cb);
        remote.push(
            &[format!("+refs/heads/{branch}:refs/heads/{branch}")],
            Some(&mut push),
        )?;
        if let Some(msg) = rejected.lock().expect("lock").take() {
            bail!("the remote rejected the push: {msg}");
        }
        Ok(commit.to_string())
    })
    .await?
}

/// Where, in the commits between `base` and `head`, one of `secrets` appears: a commit
/// message, or a file a commit adds or changes (named, the secret never is). The agent may be
/// hostile or careless; a credential it found must not reach the remote.
fn secret_in(
    repo: &Repository,
    base: git2::Oid,
    head: git2::Oid,
    secrets: &[String],
) -> Result<Option<String>> {
    let secrets: Vec<&[u8]> = secrets
        .iter()
        .filter(|s| s.len() >= 8)
        .map(|s| s.as_bytes())
        .collect();
    if secrets.is_empty() {
        return Ok(None);
    }
    let holds = |bytes: &[u8]| {
        secrets
            .iter()
            .any(|s| bytes.windows(s.len()).any(|w| w == *s))
    };
    let mut walk = repo.revwalk()?;
    walk.push(head)?;
    walk.hide(base)?;
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        let short = &commit.id().to_string()[..12];
        if holds(commit.message_bytes()) {
            return Ok(Some(format!("the message of commit {short}")));
        }
        let parent_tree = match commit.parent(0) {
            Ok(p) => Some(p.tree()?),
            Err(_) => None,
        };
        let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&commit.tree()?), None)?;
        for delta in diff.deltas() {
            let file = delta.new_file();
            if file.id().is_zero() {
                continue;
            }
            let Ok(blob) = repo.find_blob(file.id()) else {
                continue;
            };
            if holds(blob.content()) {
                let path = file
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "a file".into());
                return Ok(Some(format!("{path} in commit {short}")));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        assert_eq!(
            super::slug("Fix: the login page (500s)!"),
            "fix-the-login-page-500s"
        );
        assert_eq!(super::slug("¡¿?!"), "change");
    }
}
