//! The core's layers point one way: each module names only the layers below it.
//!
//! domain <- ports, log <- application <- http <- config <- hosts
//!
//! Read from the source: every `crate::<module>` path outside test code, per file. An upward
//! reference fails the test, unless it is listed in `KNOWN_DEBT` with the reason it is still
//! there; a listed one that is gone fails too, so the list only shrinks.

#![cfg(not(target_arch = "wasm32"))] // reads the source tree

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "domain" => 0,
        "ports" | "log" => 1,
        "application" => 2,
        "http" => 3,
        "config" => 4,
        "hosts" => 5,
        _ => return None,
    })
}

/// Upward references still in the tree, and why (none today).
const KNOWN_DEBT: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its test code: a `tests.rs` module is all test code, and an inline
/// `#[cfg(test)]` module runs to the end of the file by this crate's convention.
fn production_code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source");
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let test_module = lines.peek().is_some_and(|next| {
            let n = next.trim_start();
            n.starts_with("mod tests") || n.starts_with("pub(crate) mod tests")
        });
        if (t.starts_with("#[cfg(test)]") || t.starts_with("#[cfg(all(test")) && test_module {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if rest.starts_with('{') {
            panic!("`use crate::{{...}}` is not read by this test: name each module");
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        found.insert(name);
    }
    found
}

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path");
        let from = first.as_os_str().to_string_lossy();
        let from = from.trim_end_matches(".rs");
        let Some(from_rank) = rank(from) else {
            continue; // lib.rs: the crate root names every module
        };
        for to in crate_paths(&production_code(file)) {
            let to_rank = rank(&to)
                .unwrap_or_else(|| panic!("{}: unknown module `{to}`", relative.display()));
            if to_rank > from_rank {
                upward.insert((from.to_owned(), to, relative.display().to_string()));
            }
        }
    }
    let found: BTreeSet<(String, String)> = upward
        .iter()
        .map(|(f, t, _)| (f.clone(), t.clone()))
        .collect();
    let known: BTreeSet<(String, String)> = KNOWN_DEBT
        .iter()
        .map(|(f, t, _)| ((*f).to_owned(), (*t).to_owned()))
        .collect();
    let new: Vec<_> = upward
        .iter()
        .filter(|(f, t, _)| !known.contains(&(f.clone(), t.clone())))
        .collect();
    assert!(
        new.is_empty(),
        "upward references (a lower layer naming a higher one): {new:?}"
    );
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "listed in KNOWN_DEBT but no longer there: remove {gone:?}"
    );
}
