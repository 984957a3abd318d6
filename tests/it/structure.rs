//! The house shows the pipeline: the library's modules import one another without a cycle,
//! file by file and folder by folder, and the binary's `main.rs` stays a page. Read from the
//! source as text: every `crate::` path (nested `{...}` groups included) in `src/` (the binary's
//! `src/cli/` and `main.rs` aside), `steps/` and `workflows/`, resolved to the longest module it
//! names; `#[cfg(test)]` modules do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every library module and its file.
fn modules() -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if prefix.is_empty() && name == "cli" {
                    continue; // the binary's
                }
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if prefix.is_empty() && (stem == "main" || stem == "lib") {
                    continue;
                }
                let mut m = prefix.to_vec();
                if stem != "mod" {
                    m.push(stem.to_owned());
                }
                out.insert(m, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root().join("src"), &[], &mut out);
    walk(&root().join("steps"), &["steps".into()], &mut out);
    walk(&root().join("workflows"), &["workflows".into()], &mut out);
    out
}

/// The code of a file without comments and test modules.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `crate::` prefix leads to, with `{a, b::{c, d}}` groups expanded.
fn crate_paths(code: &str) -> Vec<Module> {
    fn ident_len(s: &str) -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    }
    /// Parses `a::b::{...}` or `a::b` at the start of `s` under `prefix`.
    fn parse(s: &str, prefix: &Module, out: &mut Vec<Module>) {
        let mut segs = prefix.clone();
        let mut rest = s.trim_start();
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' | ',' if depth == 1 => {
                            parse(&group[start..i], &segs, out);
                            start = i + 1;
                            if c == '}' {
                                return;
                            }
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                return;
            }
            let n = ident_len(rest);
            if n == 0 {
                break;
            }
            segs.push(rest[..n].to_owned());
            match rest[n..].strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        out.push(segs);
    }
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        parse(&code[i + "crate::".len()..], &Vec::new(), &mut out);
    }
    out
}

/// Each module's imports of other modules (not of itself or its ancestors).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules();
    let resolve = |segs: &Module| {
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].to_vec())
            .find(|m| mods.contains_key(m))
    };
    mods.iter()
        .map(|(m, path)| {
            let edges = crate_paths(&code(path))
                .iter()
                .filter_map(resolve)
                .filter(|r| !m.starts_with(r))
                .collect();
            (m.clone(), edges)
        })
        .collect()
}

/// A cycle of `graph`, if it has one.
fn cycle<N: Ord + Clone + std::fmt::Debug>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        done: &mut BTreeSet<N>,
        path: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.clone());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_modules_import_one_another_without_a_cycle() {
    let files = graph();
    assert!(
        files.len() > 50,
        "the walk found the modules: {}",
        files.len()
    );
    assert!(
        files[&vec!["steps".to_owned(), "spawn".to_owned()]].contains(&vec!["jobs".to_owned()]),
        "the scan sees a step's imports"
    );
    assert_eq!(cycle(&files), None, "a cycle between files");
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, edges) in &files {
        let entry = folders.entry(m[0].clone()).or_default();
        entry.extend(edges.iter().map(|e| e[0].clone()).filter(|e| *e != m[0]));
    }
    assert_eq!(cycle(&folders), None, "a cycle between top-level modules");
}

#[test]
fn a_cycle_is_found_where_there_is_one() {
    let g: BTreeMap<u8, BTreeSet<u8>> = [(1, [2].into()), (2, [3].into()), (3, [1].into())].into();
    assert_eq!(cycle(&g), Some(vec![1, 2, 3]));
    let paths = crate_paths("use crate::{db::Tx, jobs::{self, spawner::X}};");
    assert!(paths.contains(&vec!["jobs".into(), "spawner".into(), "X".into()]));
    assert!(paths.contains(&vec!["db".into(), "Tx".into()]));
}

#[test]
fn main_rs_is_a_page() {
    let lines = std::fs::read_to_string(root().join("src/main.rs"))
        .unwrap()
        .lines()
        .count();
    assert!(lines < 300, "src/main.rs has {lines} lines");
}
