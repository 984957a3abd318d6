//! `conductor config check`: what `conductor run` would trip over, found before it runs (the
//! way `promtool check config` does): routes, paths, the worker and agent programs, the forge
//! token, the AWS settings. Parsing and key errors are [`super::Config::load`]'s.

use std::path::{Path, PathBuf};

use super::{Config, ForgeKind, SpawnerKind};

/// One check's subject and its verdict: `Ok(what was found)` or `Err(what is wrong)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub subject: String,
    pub ok: bool,
    pub detail: String,
}

impl Finding {
    pub fn new(subject: &str, result: Result<String, String>) -> Finding {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Finding {
            subject: subject.to_owned(),
            ok,
            detail,
        }
    }
}

/// Every check but `flags` (which `conductor config check` adds: the overrides are the
/// scheduling's to judge), in the order the output lists them. `incidents_spawn`: whether alarms may
/// start agents (the `incidents` flag is on, the default).
pub fn check(config: &Config, incidents_spawn: bool) -> Vec<Finding> {
    let mut out = vec![Finding::new("routes", routes(config, incidents_spawn))];
    for (i, route) in config.routes.iter().enumerate() {
        if super::is_local_path(&route.repo) {
            let repo = Path::new(&route.repo);
            out.push(Finding::new(
                &format!("routes[{i}].repo"),
                if repo.exists() {
                    Ok(format!("{} exists", repo.display()))
                } else {
                    Err(format!("{} does not exist", repo.display()))
                },
            ));
        }
    }
    if let Some(dir) = &config.templates {
        out.push(Finding::new("templates", templates(dir)));
    }
    match config.worker.spawner {
        SpawnerKind::Local => {
            out.push(Finding::new(
                "worker.work_root",
                writable(&config.worker.work_root),
            ));
            out.push(Finding::new("worker.command", worker_program(config)));
            out.push(Finding::new(
                "worker.agent_command",
                agent_program(&config.worker.agent_command),
            ));
        }
        SpawnerKind::Ecs => {
            out.push(Finding::new(
                "ecs",
                Ok(format!(
                    "cluster {}, task definition {}, {} subnet(s); workers dial {}",
                    config.ecs.cluster,
                    config.ecs.task_definition,
                    config.ecs.subnets.len(),
                    config.grpc.advertised()
                )),
            ));
        }
    }
    out.push(Finding::new("forge", forge(config)));
    for (subject, url) in [
        ("sqs.queue_url", &config.sqs.queue_url),
        ("aws.endpoint_url", &config.aws.endpoint_url),
    ] {
        if let Some(url) = url {
            out.push(Finding::new(subject, http_url(url)));
        }
    }
    out
}

fn http_url(url: &str) -> Result<String, String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_owned())
    } else {
        Err(format!("{url:?} is not an http(s) URL"))
    }
}

fn routes(config: &Config, incidents_spawn: bool) -> Result<String, String> {
    let missing = config.unrouted_kinds(incidents_spawn);
    if missing.is_empty() {
        Ok(format!(
            "{} route(s); every kind of job has one",
            config.routes.len()
        ))
    } else {
        Err(missing.join("; "))
    }
}

fn templates(dir: &Path) -> Result<String, String> {
    for kind in ["ticket", "incident"] {
        for file in ["TASK.md", "AGENTS.md"] {
            let p = dir.join(kind).join(file);
            if !p.is_file() {
                return Err(format!("{} is missing", p.display()));
            }
        }
    }
    Ok(format!("{} has ticket/ and incident/", dir.display()))
}

/// A directory that exists and is writable, or the nearest existing parent that will hold it.
fn writable(dir: &Path) -> Result<String, String> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => return Err(format!("no existing parent of {}", dir.display())),
        }
    }
    let meta = std::fs::metadata(&probe).map_err(|e| format!("{}: {e}", probe.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", probe.display()));
    }
    // access(2) answers for this user, root included.
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} has a NUL byte", probe.display()))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!("{} is not writable by this user", probe.display()));
    }
    if probe == dir {
        Ok(format!("{} is writable", dir.display()))
    } else {
        Ok(format!(
            "{} will be created in {}",
            dir.display(),
            probe.display()
        ))
    }
}

fn worker_program(config: &Config) -> Result<String, String> {
    let program = match &config.worker.command {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the running executable: {e}"))?
            .with_file_name("conductor-worker"),
    };
    match find_program(&program) {
        Some(p) => Ok(p.display().to_string()),
        None => Err(format!("{} not found or not executable", program.display())),
    }
}

/// The agent command's program (its first word), unless the command starts with something a
/// shell expands, which only running it can tell.
fn agent_program(command: &str) -> Result<String, String> {
    let Some(first) = command.split_whitespace().next() else {
        return Err("is empty".into());
    };
    if first.contains(['$', '`', '(', '"', '\'']) || first.contains('=') {
        return Ok(format!("{first:?} (expanded by the shell; not checked)"));
    }
    match find_program(Path::new(first)) {
        Some(p) => Ok(format!("{first} is {}", p.display())),
        None => Err(format!("{first:?} not found on PATH")),
    }
}

/// A program as `sh` would find it: a path with a '/', else the first match on PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| executable(p))
    })
}

fn forge(config: &Config) -> Result<String, String> {
    match config.forge.kind {
        ForgeKind::Local => Ok("local (pull requests recorded in the database)".into()),
        ForgeKind::Github => {
            let var = &config.forge.token_env;
            match crate::secrets::get(var) {
                Some(t) if !t.is_empty() => {
                    Ok(format!("github at {} with the token in {var}", config.forge.base_url))
                }
                _ => Err(format!(
                    "forge.kind = \"github\" needs a token in the environment variable {var}, which is not set"
                )),
            }
        }
    }
}
