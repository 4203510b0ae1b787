//! A real headless Chromium (Debian's `chromium`, which `.ci/run` installs when missing):
//! opens a page and hands back the DOM as the browser built it after loading, with every
//! console message it logged (CSP violations, errors); or writes a screenshot.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::tempdir;

/// A page as the browser left it.
pub struct Page {
    /// The serialized DOM.
    pub dom: String,
    /// The console's messages (`INFO:CONSOLE` lines of the browser's log).
    pub console: Vec<String>,
}

impl Page {
    /// The document's title as the browser ends with it (a script that ran could change it).
    pub fn title(&self) -> String {
        let start = self.dom.find("<title>").map(|i| i + "<title>".len());
        let end = self.dom.find("</title>");
        match (start, end) {
            (Some(s), Some(e)) if s <= e => self.dom[s..e].to_owned(),
            _ => String::new(),
        }
    }

    /// The text of the element with `id` (up to its first closing tag), if there is one.
    pub fn by_id(&self, id: &str) -> Option<String> {
        let at = self.dom.find(&format!("id=\"{id}\""))?;
        let open = at + self.dom[at..].find('>')? + 1;
        let close = open + self.dom[open..].find('<')?;
        Some(self.dom[open..close].to_owned())
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("HOOKWARDEN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: apt-get install chromium chromium-driver (.ci/run does)",
        path.display()
    );
    path
}

/// Runs Chromium headless on `url` with `extra` arguments; its stdout and stderr.
async fn run(url: &str, extra: &[String]) -> (String, String) {
    let profile = tempdir::Dir::new();
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path.display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens `url` and returns its DOM and console.
pub async fn open(url: &str) -> Page {
    let (dom, log) = run(url, &["--dump-dom".to_owned()]).await;
    let console = log
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    Page { dom, console }
}

/// Writes a screenshot of `url`, `height` pixels tall, to `target/ui-screenshots/NAME.png`;
/// its path.
pub async fn screenshot(url: &str, name: &str, height: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    run(
        url,
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size=1280,{height}"),
            "--hide-scrollbars".to_owned(),
        ],
    )
    .await;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{} is {size} bytes", path.display());
    path
}
