//! `.ci/run`'s closing lines, checked against real cargo output: a throwaway crate with one
//! passing, one failing and one crashing test binary is tested with the same cargo flags,
//! and `.ci/summarize` must name every binary with its own counts. Needs only cargo (the
//! crate has no dependencies, so nothing is downloaded).

use std::path::Path;
use std::process::Command;

use crate::harness::tempdir;

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn every_test_binary_runs_and_is_named_with_its_own_counts_even_after_a_failure() {
    let dir = tempdir::Dir::new();
    write(
        &dir.path,
        "Cargo.toml",
        "[package]\nname = \"throwaway\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    write(&dir.path, "src/lib.rs", "");
    // Binaries run in name order: the failing and crashing ones come before the good one,
    // as `faults` came before `it` when it hid the rest.
    write(
        &dir.path,
        "tests/a_fails.rs",
        "#[test] fn good() {}\n#[test] fn bad() { panic!(\"deliberate\") }\n",
    );
    write(
        &dir.path,
        "tests/b_crashes.rs",
        "#[test] fn dies() { std::process::abort() }\n",
    );
    write(
        &dir.path,
        "tests/c_passes.rs",
        "#[test] fn one() {}\n#[test] fn two() {}\n#[test] fn three() {}\n",
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The same flags as .ci/run, both streams into one file in order, as `2>&1 | tee` does.
    let file = std::fs::File::create(dir.path.join("log")).unwrap();
    let status = Command::new(cargo)
        .args([
            "test",
            "--offline",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
        ])
        .current_dir(&dir.path)
        .env("CARGO_TARGET_DIR", dir.path.join("target"))
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    assert!(!status.success(), "cargo must report the failures");
    let log = std::fs::read_to_string(dir.path.join("log")).unwrap();

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let summary = Command::new("bash")
        .arg(root.join(".ci/summarize"))
        .arg(dir.path.join("log"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert_eq!(summary.status.code(), Some(1), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{text}\n--- cargo:\n{log}"))
            .to_owned()
    };
    assert!(
        line("tests/a_fails.rs").ends_with("1 passed, 1 failed"),
        "{text}"
    );
    assert!(line("tests/b_crashes.rs").contains("NO RESULT"), "{text}");
    assert!(
        line("tests/c_passes.rs").ends_with("3 passed, 0 failed"),
        "the binary after the failures ran: {text}"
    );
    assert!(line("src/lib.rs").ends_with("0 passed, 0 failed"), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l == "4 passed, 1 failed, 1 of 4 binaries without a result"),
        "{text}"
    );
}

#[test]
fn a_build_that_ran_no_binary_is_not_a_pass() {
    let dir = tempdir::Dir::new();
    let log = dir.path.join("log");
    std::fs::write(
        &log,
        "   Compiling throwaway v0.1.0\nerror[E0425]: cannot find value `x`\nerror: could not compile `throwaway`\n",
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let summary = Command::new("bash")
        .arg(root.join(".ci/summarize"))
        .arg(&log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert_eq!(summary.status.code(), Some(1), "{text}");
    assert!(text.contains("no test binary ran"), "{text}");
}
