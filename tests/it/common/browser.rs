//! A real browser for the console's tests: Debian's headless Chromium (`/usr/bin/chromium`).
//! `.ci/run` installs it; when it is missing and this runs as root, the first test that needs
//! it installs it the same way (apt-get), one test at a time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser's path, installing it first when it is missing.
pub fn chromium() -> &'static str {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !Path::new(CHROMIUM).exists() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output()
                .expect("apt-get (Debian) to install chromium")
        };
        let mut out = apt(&["install", "-y", "-q", "chromium"]);
        if !out.status.success() {
            // Package lists not fetched yet on this machine.
            apt(&["update", "-q"]);
            out = apt(&["install", "-y", "-q", "chromium"]);
        }
        assert!(
            out.status.success() && Path::new(CHROMIUM).exists(),
            "the console tests need Debian's chromium: `apt-get install -y chromium` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    CHROMIUM
}

fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page at `url` as the browser built it (its DOM, serialised), and a screenshot of it
/// at `shot` when asked. One browser at a time across the tests: each is heavy on 2 cores.
pub fn load(url: &str, shot: Option<&Path>) -> String {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let profile = tempfile::tempdir().unwrap();
    let out = headless(profile.path())
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium --dump-dom {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(shot) = shot {
        let out_shot = headless(profile.path())
            .arg(format!("--screenshot={}", shot.display()))
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out_shot.status.success() && shot.exists(),
            "chromium --screenshot {url}: {}",
            String::from_utf8_lossy(&out_shot.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where screenshots are kept as the tests' artifacts: `<target>/console-screenshots/`.
pub fn artifacts(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("console-screenshots")
        .join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
