//! The planes stay layered: no circle of dependencies between the crate's top-level modules
//! (`src/<module>.rs` or `src/<module>/`). A module depends on another when its code (tests
//! left out) names `crate::<other>`. A new circle fails here, naming the modules in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its tests (a `tests.rs` file, and everything from the first
/// `#[cfg(test)] mod` on: test modules sit at the end of a file).
fn without_tests(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The top-level modules named in `text` as `crate::<name>`.
fn named(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if modules.contains(&name) {
            out.insert(name);
        }
    }
    out
}

/// The crate's module graph.
fn graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).expect("src").flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            modules.insert(name);
        }
    }
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        let single = src.join(format!("{module}.rs"));
        if single.exists() {
            files.push(single);
        }
        let mut deps = BTreeSet::new();
        for f in files {
            deps.extend(named(&without_tests(&f), &modules));
        }
        deps.remove(module);
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The circles of `graph`: its strongly connected components of more than one module.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    // Two nodes are in one circle when each reaches the other.
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for d in graph.get(&n).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|k| (k, reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for a in graph.keys() {
        if done.contains(a) {
            continue;
        }
        let circle: Vec<String> = graph
            .keys()
            .filter(|b| *b == a || (reaches[a].contains(*b) && reaches[*b].contains(a)))
            .cloned()
            .collect();
        if circle.len() > 1 {
            done.extend(circle.iter().cloned());
            out.push(circle);
        }
    }
    out
}

#[test]
fn the_top_level_modules_form_no_circle() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    for (module, deps) in &g {
        eprintln!("{module} -> {deps:?}");
    }
    assert!(g.len() > 10, "modules found: {:?}", g.keys());
    let found = circles(&g);
    assert!(found.is_empty(), "circles between modules: {found:?}");
    // The leaves stay leaves.
    for leaf in [
        "audit",
        "clock",
        "control",
        "number",
        "once",
        "sdp",
        "tasks",
        "telemetry",
    ] {
        assert_eq!(
            g.get(leaf),
            Some(&BTreeSet::new()),
            "{leaf} depends on {:?}",
            g[leaf]
        );
    }
}

/// The check sees a circle made on purpose: a copy of the crate's sources where `sdp` (a
/// leaf that `sip` depends on) names `sip`.
#[test]
fn a_deliberate_circle_is_caught() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let dir = tempfile::tempdir().expect("tempdir");
    copy(&src, dir.path());
    let sdp = dir.path().join("sdp/mod.rs");
    let mut text = std::fs::read_to_string(&sdp).expect("sdp");
    text.insert_str(0, "use crate::sip::msg::SipMessage;\n");
    std::fs::write(&sdp, text).expect("write");
    let found = circles(&graph(dir.path()));
    assert!(
        found
            .iter()
            .any(|c| c.contains(&"sdp".to_string()) && c.contains(&"sip".to_string())),
        "{found:?}"
    );
}

fn copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}
