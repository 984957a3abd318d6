//! Bare repositories on disk as remotes: what `conductor demo` works against (and the tests).

use std::path::Path;

use crate::error::Error;

fn git_err(what: &str, e: git2::Error) -> Error {
    Error::Invalid(format!("{what}: {}", e.message()))
}

/// Creates a bare repository at `path` whose `branch` holds one commit with a README.
pub fn init_bare(path: &Path, branch: &str, readme: &str) -> Result<(), Error> {
    let repo = git2::Repository::init_bare(path).map_err(|e| git_err("init", e))?;
    let blob = repo
        .blob(readme.as_bytes())
        .map_err(|e| git_err("blob", e))?;
    let mut tree = repo.treebuilder(None).map_err(|e| git_err("tree", e))?;
    tree.insert("README.md", blob, 0o100644)
        .map_err(|e| git_err("tree", e))?;
    let tree = repo
        .find_tree(tree.write().map_err(|e| git_err("tree", e))?)
        .map_err(|e| git_err("tree", e))?;
    let sig = git2::Signature::now("Conductor", "conductor@localhost")
        .map_err(|e| git_err("signature", e))?;
    let refname = format!("refs/heads/{branch}");
    repo.commit(Some(&refname), &sig, &sig, "Initial commit", &tree, &[])
        .map_err(|e| git_err("commit", e))?;
    repo.set_head(&refname).map_err(|e| git_err("HEAD", e))?;
    Ok(())
}

/// The repository's branches and the commits they point at, sorted by name.
pub fn branches(path: &Path) -> Result<Vec<(String, String)>, Error> {
    let repo = git2::Repository::open(path).map_err(|e| git_err("open", e))?;
    let mut out = Vec::new();
    for b in repo
        .branches(Some(git2::BranchType::Local))
        .map_err(|e| git_err("branches", e))?
    {
        let (b, _) = b.map_err(|e| git_err("branch", e))?;
        let name = b.name().ok().flatten().unwrap_or_default().to_owned();
        let sha = b.get().target().map(|o| o.to_string()).unwrap_or_default();
        out.push((name, sha));
    }
    out.sort();
    Ok(out)
}

/// The paths changed between `base` and `branch` (a quick look at what an agent did).
pub fn changed_files(path: &Path, base: &str, branch: &str) -> Result<Vec<String>, Error> {
    let repo = git2::Repository::open(path).map_err(|e| git_err("open", e))?;
    let tree = |name: &str| -> Result<git2::Tree<'_>, Error> {
        repo.revparse_single(&format!("refs/heads/{name}"))
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| git_err(name, e))
    };
    let diff = repo
        .diff_tree_to_tree(Some(&tree(base)?), Some(&tree(branch)?), None)
        .map_err(|e| git_err("diff", e))?;
    Ok(diff
        .deltas()
        .filter_map(|d| d.new_file().path().map(|p| p.display().to_string()))
        .collect())
}
