//! The architecture rules of docs/ARCHITECTURE.md, checked on the source so they cannot erode
//! unnoticed (the last time nothing checked them, two issues broke them again):
//!
//! - folders depend one way only, down the layers `cli -> admin | reverse | fs -> shell ->
//!   volume -> io | keys -> format -> crypto`; anyone may use `metrics` and `sync`, which use nothing
//!   above them; `fs` never uses `format`;
//! - no cycle between modules (a parent using its own children does not count);
//! - no source file over 650 lines.
//!
//! Known breaches are listed here with the issue that removes them; a listed file may shrink,
//! never grow, and a breach that is gone must leave the list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 650;

/// Files still over `MAX_LINES` and the most lines each may have (issue 31 splits them).
const OVERSIZED: &[(&str, usize)] = &[];

/// Folder edges against the layers that are still there.
const ALLOWED_EDGES: &[(&str, &str)] = &[];

/// Module cycles still there.
const ALLOWED_CYCLES: &[&[&str]] = &[];

fn rank(folder: &str) -> Option<u32> {
    Some(match folder {
        "cli" => 0,
        "reverse" | "fs" | "admin" => 1,
        "shell" => 2,
        "volume" => 3,
        "io" | "keys" => 4,
        "coord" => 5,
        "format" => 6,
        "crypto" => 7,
        _ => return None,
    })
}

/// Whether the folder `from` may use the folder `to`.
fn edge_allowed(from: &str, to: &str) -> bool {
    if ALLOWED_EDGES.contains(&(from, to)) {
        return true;
    }
    match (from, to) {
        ("fs", "format") => false,
        ("metrics" | "sync", _) => to == "sync",
        (_, "metrics" | "sync") => true,
        _ => match (rank(from), rank(to)) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        },
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under src/: src/fs/core/acl.rs is fs::core::acl, src/fs/mod.rs
/// is fs, src/lib.rs and src/main.rs the crate root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text of a file without comments and without its unit tests (`#[cfg(test)] mod`).
fn code_of(text: &str) -> String {
    // An inline `#[cfg(test)] mod tests { ... }` (not a `mod tests;` declaration) runs to the
    // end of the file.
    let inline_tests = text.match_indices("#[cfg(test)]\nmod ").find(|(i, m)| {
        let rest = &text[i + m.len()..];
        let name_end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        rest[name_end..].trim_start().starts_with('{')
    });
    let body = match inline_tests {
        Some((i, _)) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path `code` names from `crate::`, `sealfs::` (the binary's name for the library),
/// `super::` or `self::`, as module paths from the crate root (`use` groups expanded).
fn paths_named(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let rest: String = chars[i..chars.len().min(i + 8)].iter().collect();
        let head = ["crate::", "sealfs::", "super::", "self::"]
            .into_iter()
            .find(|h| rest.starts_with(h));
        let Some(head) = head.filter(|_| starts_word) else {
            i += 1;
            continue;
        };
        // The module a relative path starts from (a mod.rs file is its folder's module).
        let base: Vec<String> = match head {
            "crate::" | "sealfs::" => Vec::new(),
            "super::" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => module.to_vec(),
        };
        i += head.len();
        let (paths, next) = parse_tree(&chars, i);
        for p in paths {
            let mut full = base.clone();
            for seg in p {
                if seg == "super" {
                    full.pop();
                } else {
                    full.push(seg);
                }
            }
            out.push(full);
        }
        i = next;
    }
    out
}

/// Parses `a::b::{c, d::{e, f}}` from `at`: the paths it names, and where it ends.
fn parse_tree(chars: &[char], mut at: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        if at < chars.len() && chars[at] == '{' {
            at += 1;
            let mut paths = vec![prefix.clone()];
            loop {
                while at < chars.len() && (chars[at].is_whitespace() || chars[at] == ',') {
                    at += 1;
                }
                if at >= chars.len() || chars[at] == '}' {
                    return (paths, at + 1);
                }
                let (inner, next) = parse_tree(chars, at);
                paths.extend(inner.into_iter().map(|p| [prefix.clone(), p].concat()));
                // Skip `as name` and anything else up to the next item.
                at = next;
                while at < chars.len() && chars[at] != ',' && chars[at] != '}' {
                    at += 1;
                }
            }
        }
        let start = at;
        while at < chars.len() && is_ident(chars[at]) {
            at += 1;
        }
        if at > start {
            prefix.push(chars[start..at].iter().collect::<String>());
        }
        if chars[at..].starts_with(&[':', ':']) {
            at += 2;
            continue;
        }
        return (vec![prefix], at);
    }
}

struct Crate {
    /// Module path -> file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// Module -> modules it names (not its ancestors).
    uses: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut uses = BTreeMap::new();
    // Unit tests (a `tests.rs` beside the code) may reach anywhere.
    for (module, file) in modules
        .iter()
        .filter(|(m, _)| m.last().is_none_or(|l| l != "tests"))
    {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut named = BTreeSet::new();
        for path in paths_named(&code, module) {
            // The longest prefix that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p));
            if let Some(t) = target
                && &t != module
                && !module.starts_with(&t)
            {
                named.insert(t);
            }
        }
        uses.insert(module.clone(), named);
    }
    Crate { modules, uses }
}

#[test]
fn folders_depend_down_the_layers_only() {
    let krate = read_crate();
    let mut breaches = BTreeSet::new();
    for (from, targets) in &krate.uses {
        for to in targets {
            let (Some(a), Some(b)) = (from.first(), to.first()) else {
                continue;
            };
            if a != b && !edge_allowed(a, b) {
                breaches.insert(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        breaches.is_empty(),
        "uses against the layers (docs/ARCHITECTURE.md):\n{}",
        breaches.into_iter().collect::<Vec<_>>().join("\n")
    );
    for (from, to) in ALLOWED_EDGES {
        let still = krate
            .uses
            .iter()
            .any(|(f, ts)| f.first().is_some_and(|x| x == from) && ts.iter().any(|t| t[0] == *to));
        assert!(still, "{from} -> {to} is gone: take it off ALLOWED_EDGES");
    }
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(uses: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        uses: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.uses.get(v).into_iter().flatten() {
            let Some((w, _)) = s.uses.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                component.insert(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        uses,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in uses.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_module_cycles() {
    let krate = read_crate();
    let found = cycles(&krate.uses);
    let allowed: Vec<BTreeSet<String>> = ALLOWED_CYCLES
        .iter()
        .map(|c| c.iter().map(|m| m.to_string()).collect())
        .collect();
    let new: Vec<_> = found.iter().filter(|c| !allowed.contains(c)).collect();
    assert!(new.is_empty(), "modules that use each other: {new:?}");
    for c in &allowed {
        assert!(
            found.contains(c),
            "{c:?} is gone: take it off ALLOWED_CYCLES"
        );
    }
    assert!(krate.modules.len() > 50, "the parser found too few modules");
}

#[test]
fn no_source_file_over_650_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("tests"), &mut files);
    let mut breaches = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        let limit = OVERSIZED
            .iter()
            .find(|(f, _)| *f == rel)
            .map_or(MAX_LINES, |(_, n)| *n);
        if lines > limit {
            breaches.push(format!("{rel}: {lines} lines (at most {limit})"));
        }
        if limit > MAX_LINES && lines <= MAX_LINES {
            breaches.push(format!("{rel}: {lines} lines now: take it off OVERSIZED"));
        }
    }
    assert!(breaches.is_empty(), "{}", breaches.join("\n"));
}

/// The parser itself: use groups, nesting, `super::` and renames.
#[test]
fn the_parser_reads_use_trees() {
    let module: Vec<String> = vec!["fs".into(), "core".into(), "acl".into()];
    let code = "use crate::volume::{Result, names::{self, x}, proc_fd_path as p};\n\
                use super::{Caller, SealFs};\nlet x = crate::metrics::global();";
    let found: BTreeSet<String> = paths_named(code, &module)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    for want in [
        "volume::Result",
        "volume::names::x",
        "volume::proc_fd_path",
        "fs::core::Caller",
        "metrics::global",
    ] {
        assert!(found.contains(want), "{want} not in {found:?}");
    }
}

/// The mount's mode is decided once, at the seam (`fs/core/access.rs` for the data path,
/// `fs/core/tuning.rs` for what the kernel caches): the rest of the core asks them and never
/// looks at the mode itself.
#[test]
fn fs_core_has_no_mode_branches() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fs/core");
    let mut files = Vec::new();
    sources(&core, &mut files);
    let mut found = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name == "access.rs" || name == "tuning.rs" || name == "tests.rs" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for (i, line) in code.lines().enumerate() {
            if (line.contains(".shared") || line.contains("coherent()"))
                && !line.contains("access_for(")
            {
                found.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "mode branches outside the seam:\n{}",
        found.join("\n")
    );
}

/// One function takes OFD locks (`coord::file_locks::ofd_lock`): no other file builds a
/// `struct flock` or calls F_OFD_SETLK(W) itself.
#[test]
fn one_function_builds_an_ofd_lock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "coord/file_locks.rs" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for (i, line) in code.lines().enumerate() {
            if line.contains("F_OFD_SETLK")
                || line.contains("libc::flock {")
                || line.contains(": libc::flock")
            {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "OFD locks built outside coord/file_locks.rs:\n{}",
        found.join("\n")
    );
}
