//! The test suite is self-contained: a fresh clone with only the Rust toolchain runs it.
//! No test reads a file outside the repository, and none runs a program other than the
//! `timgate` binary that cargo builds for it and the servers `.ci/run` installs (Prometheus,
//! Redis), which a test skips loudly without, and fails without under CI.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use std::path::{Component, Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `.rs` file under `dir`, but for build output (`tests/fuzz/target`, where the fuzz
/// targets' dependencies generate sources).
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// `path` with `..` and `.` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The string literals right after each `marker` in `text`.
fn literals_after<'t>(text: &'t str, marker: &str) -> Vec<&'t str> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            let rest = rest.trim_start().strip_prefix('"')?;
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

fn test_sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(ROOT);
    let mut files = sources(&root.join("tests"));
    files.extend(sources(&root.join("src")));
    files
        .into_iter()
        .filter(|p| !p.ends_with("tests/hygiene.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn every_file_a_test_includes_lies_inside_the_repository() {
    let root = normalize(Path::new(ROOT));
    for (path, text) in test_sources() {
        for marker in ["include_str!(", "include_bytes!("] {
            for literal in literals_after(&text, marker) {
                let target = normalize(&path.parent().unwrap().join(literal));
                assert!(
                    target.starts_with(&root) && target.exists(),
                    "{}: {marker}\"{literal}\") is not a file in the repository",
                    path.display()
                );
            }
        }
        // A path built from the manifest directory must not climb out of it.
        for literal in literals_after(&text, "env!(\"CARGO_MANIFEST_DIR\"),") {
            assert!(
                !literal.contains(".."),
                "{}: {literal:?} leaves the repository",
                path.display()
            );
        }
        assert!(
            !text.contains("shared/vectors"),
            "{}: reads the reference material beside the repository",
            path.display()
        );
    }
}

/// Programs a test may start besides `timgate`: servers the product talks to, which `.ci/run`
/// installs with apt-get when they are missing (package, programs it brings).
const INSTALLED_BY_CI: [(&str, &[&str]); 3] = [
    ("prometheus", &["prometheus", "promtool"]),
    ("redis-server", &["redis-server"]),
    ("redis-tools", &["redis-cli"]),
];

/// Programs every machine the tests run on has, as Debian's Essential packages: `sh` (dash,
/// with sed beside it), which tests/deploy.rs uses to run a Dockerfile step as written.
const ESSENTIAL: [&str; 1] = ["\"sh\""];

#[test]
fn tests_run_no_program_but_timgate_and_what_ci_installs() {
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    for (package, _) in INSTALLED_BY_CI {
        assert!(
            ci.contains(&format!("missing+=({package})")) && ci.contains("apt-get install"),
            ".ci/run does not install {package}"
        );
    }
    for (path, text) in test_sources() {
        let runs_others = text.match_indices("Command::new(").any(|(at, _)| {
            let program = text[at + "Command::new(".len()..].trim_start();
            !program.starts_with("env!(\"CARGO_BIN_EXE_timgate\")")
                && !ESSENTIAL
                    .iter()
                    .any(|essential| program.starts_with(essential))
        });
        if !runs_others {
            continue;
        }
        let programs: Vec<&str> = INSTALLED_BY_CI
            .iter()
            .flat_map(|(_, programs)| programs.iter().copied())
            .filter(|program| text.contains(&format!("\"{program}\"")))
            .collect();
        assert!(
            !programs.is_empty(),
            "{}: runs a program that is neither timgate nor installed by .ci/run; do it in Rust",
            path.display()
        );
        // A machine without the program skips loudly; CI (where .ci/run installed it) fails.
        assert!(
            text.contains("var_os(\"CI\")") || text.contains("var(\"CI\")"),
            "{}: runs {programs:?} without the CI rule for a missing program",
            path.display()
        );
    }
}
