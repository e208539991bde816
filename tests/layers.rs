//! The walls between modules stay: no import cycle among the modules of a crate, and no
//! module of a lower layer naming one of a higher layer.
//!
//! Read from the source, not from a compiled graph: every `crate::…` and `super::…` path
//! outside comments is an edge from the file's module to the module the path names. Two
//! modules are compared through their sides of the nearest common parent: `config::raw`
//! naming `limiter::table` is an edge `config` → `limiter`, `config::callers` naming
//! `config::raw` is an edge `callers` → `raw` inside `config`. A child naming its parent (or
//! a parent its child) is not an edge: a parent and its children are one module's inside.
// Tests may unwrap: a panic is how a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The top-level modules of the gateway's crate, from the top of the request path down. A
/// module may name those on its own line or below it, never one above. `limiter` is the
/// `timgate-limits` crate, below everything: a crate of its own cannot name timgate at all.
const LAYERS: &[&[&str]] = &[
    // The listeners' wings: Tencent's callbacks in, the emulator, reloads, the admin port.
    &["admin", "callback", "emulator", "reload"],
    // The request path.
    &["proxy"],
    // The edge: connections, bodies within budget.
    &["server", "body"],
    // Answers: timgate's own errors, the metrics, the retry policy.
    &["error", "metrics", "retry"],
    // Tencent's side and the caller's: one upstream attempt, who may call what.
    &["upstream", "auth"],
    // The configuration, checked before any port is bound.
    &["config"],
    // Signing, and which API a path names.
    &["usersig", "api"],
    // Plain rules and formats, and deadlines that cost nothing when not needed.
    &["rules", "json", "logfmt", "deadline", "limiter"],
];

/// A module by its path from the crate's root (`["config", "raw"]`); the root is `[]`.
type Module = Vec<String>;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

/// The module a file under `src` holds: `config/raw.rs` is `config::raw`, `lib.rs` the root.
fn module_of(src: &Path, file: &Path) -> Module {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut module: Module = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if module.last().is_some_and(|last| last == "mod") {
        module.pop();
    }
    if module.len() == 1 && (module[0] == "lib" || module[0] == "main") {
        module.clear();
    }
    module
}

/// The text of a source file without its comments (`//` to the end of the line, `/* */`)
/// and without the contents of string literals, so a path in a doc or a message is no edge.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' => {
                code.push('"');
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                code.push('"');
            }
            // A char literal that would open a string ('"') is skipped whole; lifetimes
            // ('a) are left as they are.
            '\'' if chars.peek() == Some(&'"') => {
                chars.next();
                chars.next();
            }
            _ => code.push(c),
        }
    }
    code
}

/// The paths a piece of code names from `start` (the text after `crate::` or `super::`),
/// each as its segments: `config::App` gives `[config, App]`, `{a::B, c}` gives `[a, B]`
/// and `[c]`.
fn paths_after(start: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut rest = start.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            return group_items(group)
                .into_iter()
                .flat_map(paths_after)
                .map(|tail| segments.iter().cloned().chain(tail).collect())
                .collect();
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_owned());
        match rest[end..].trim_start().strip_prefix("::") {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    vec![segments]
}

/// The top-level items of a `{…}` group, up to its closing brace.
fn group_items(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut from) = (0usize, 0);
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[from..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    items.into_iter().filter(|i| !i.trim().is_empty()).collect()
}

/// The modules `module`'s code names, as paths from the crate's root (still with item
/// names at their end: `modules` below keeps the longest prefix that is a module).
fn named_paths(module: &Module, code: &str) -> Vec<Vec<String>> {
    let mut named = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        named.extend(paths_after(&code[at + "crate::".len()..]));
    }
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut base = module.clone();
        base.pop();
        let mut rest = &code[at + "super::".len()..];
        while let Some(after) = rest.strip_prefix("super::") {
            base.pop();
            rest = after;
        }
        for tail in paths_after(rest) {
            named.push(base.iter().cloned().chain(tail).collect());
        }
    }
    named
}

/// The import graph of the crate whose sources are under `src`: for each module, the
/// modules it names, as the sides of their nearest common parent.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files: Vec<(Module, String)> = sources(src)
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            (module_of(src, &file), code_of(&text))
        })
        .collect();
    let known: BTreeSet<Module> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, code) in &files {
        for path in named_paths(module, code) {
            let Some(target) = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue;
            }
            edges
                .entry(module[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    edges
}

/// Every cycle's modules, one strongly connected group of two or more at a time.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // A module is in a cycle with each module it reaches that reaches it back.
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.clone()];
        while let Some(m) = next.pop() {
            for to in edges.get(&m).into_iter().flatten() {
                if seen.insert(to.clone()) {
                    next.push(to.clone());
                }
            }
        }
        seen
    };
    let mut found: Vec<Vec<Module>> = Vec::new();
    for module in edges.keys() {
        if found.iter().any(|c| c.contains(module)) {
            continue;
        }
        let mut group: Vec<Module> = reach(module)
            .into_iter()
            .filter(|other| reach(other).contains(module))
            .collect();
        if !group.is_empty() {
            if !group.contains(module) {
                group.push(module.clone());
            }
            group.sort();
            found.push(group);
        }
    }
    found
}

fn show(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// The source folders of the workspace's crates: the gateway's, and each member's `src`.
fn crates() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut found = vec![root.join("src")];
    let limits = root.join("limits").join("src");
    if limits.is_dir() {
        found.push(limits);
    }
    found
}

/// The graph, printed by `cargo test --test layers -- --nocapture print_the_graph --ignored`.
#[test]
#[ignore = "prints the import graph, asserts nothing"]
fn print_the_graph() {
    for src in crates() {
        for (from, tos) in graph(&src) {
            let tos: Vec<String> = tos.iter().map(show).collect();
            eprintln!("{}: {} -> {}", src.display(), show(&from), tos.join(", "));
        }
    }
}

#[test]
fn no_module_imports_in_a_cycle() {
    let mut all = Vec::new();
    for src in crates() {
        for cycle in cycles(&graph(&src)) {
            let names: Vec<String> = cycle.iter().map(show).collect();
            all.push(format!("{}: {}", src.display(), names.join(" ↔ ")));
        }
    }
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

#[test]
fn no_layer_imports_from_a_layer_above_it() {
    let layer_of = |name: &str| LAYERS.iter().position(|layer| layer.contains(&name));
    let edges = graph(&Path::new(ROOT).join("src"));
    let mut upward = Vec::new();
    for (from, tos) in &edges {
        let [from_name] = from.as_slice() else {
            continue;
        };
        let from_layer = layer_of(from_name)
            .unwrap_or_else(|| panic!("module `{from_name}` is in no layer of LAYERS"));
        for to in tos {
            let to_layer = layer_of(&to[0])
                .unwrap_or_else(|| panic!("module `{}` is in no layer of LAYERS", to[0]));
            if to_layer < from_layer {
                upward.push(format!("{} → {}", show(from), show(to)));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer to a higher one:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_reader_finds_the_edges_it_is_meant_to() {
    let code = code_of(
        "use crate::{config::{App, raw}, limiter};\n\
         // crate::metrics::Series\n\
         let s = \"crate::upstream\";\n\
         use super::super::sibling::Thing;\n\
         fn f() -> crate::json::Value {}\n",
    );
    let module: Module = vec!["a".into(), "b".into(), "c".into()];
    let named = named_paths(&module, &code);
    let firsts: BTreeSet<String> = named.iter().map(|p| p.join("::")).collect();
    let expected: BTreeSet<String> = [
        "config::App",
        "config::raw",
        "limiter",
        "a::sibling::Thing",
        "json::Value",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(firsts, expected);
}

#[test]
fn a_cycle_is_found_and_a_parent_child_pair_is_not_one() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    edges.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&edges), vec![vec![m("a"), m("b"), m("c")]]);
    edges.remove(&m("c"));
    assert!(cycles(&edges).is_empty());
}

/// The limits crate knows nothing of timgate's HTTP, configuration or command line: none of
/// those crates is among its dependencies (its `Cargo.toml`'s dependency tables).
#[test]
fn the_limits_crate_depends_on_no_http_config_or_cli_crate() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("limits/Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    let mut named = Vec::new();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = manifest.get(table).and_then(toml::Value::as_table) {
            named.extend(deps.keys().cloned());
        }
    }
    assert!(
        named.iter().any(|d| d == "governor"),
        "read no dependencies: {named:?}"
    );
    for banned in ["hyper", "hyper-util", "config", "clap", "timgate"] {
        assert!(
            !named.iter().any(|d| d == banned),
            "limits/ depends on {banned}"
        );
    }
}
