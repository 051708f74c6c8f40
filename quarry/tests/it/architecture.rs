//! Two rules of the code's shape, checked over every workspace member: no import loops between the files of its
//! `src/`, and no file of its `src/`, `tests/` or `benches/` over 600 lines without a stated reason.
//!
//! A file depends on the module files its paths name: `use crate::…`, `crate::a::b` in code, `super::…`, `self::…`
//! and paths through its own child modules, each naming the deepest module file that exists. Not counted, because
//! they are no dependency: comments and string literals, the crate root (it only gathers and re-exports), `tests`
//! modules (their `use super::*` is the point of them), and a parent's `mod`/`pub use` of its own children.
//! The scan reads tokens, not a syntax tree: enough for the paths above, small enough to read.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// Past this many lines a file wants splitting, unless it says why not with a `// size: <reason>` line.
const MAX_LINES: usize = 600;

/// One `.rs` file of a crate: its name under `src/`, its module path (empty for the crate root) and its text.
struct SourceFile {
    name: String,
    module: Vec<String>,
    text: String,
}

impl SourceFile {
    fn new(name: &str, text: &str) -> Self {
        let mut module: Vec<String> = name.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
        let is_root = module.len() == 1 && (module[0] == "lib" || module[0] == "main");
        if is_root || module.last().is_some_and(|last| last == "mod") {
            module.pop();
        }
        Self { name: name.to_owned(), module, text: text.to_owned() }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `[workspace] members` of the root manifest.
fn workspace_members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read the root Cargo.toml");
    let workspace = manifest.split("[workspace]").nth(1).expect("a [workspace] section");
    let list = workspace.split("members").nth(1).and_then(|rest| rest.split(']').next()).expect("a members list");
    let members: Vec<String> = list.split('"').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(members.iter().all(|member| !member.contains('*')), "member globs are not supported: {members:?}");
    members
}

/// Every `.rs` file under `src`, sorted by name.
fn crate_sources(src: &Path) -> Vec<SourceFile> {
    fn walk(dir: &Path, src: &Path, out: &mut Vec<SourceFile>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path.strip_prefix(src).expect("under src");
                let name: Vec<_> = relative.components().map(|part| part.as_os_str().to_string_lossy()).collect();
                let text = std::fs::read_to_string(&path).expect("read a source file");
                out.push(SourceFile::new(&name.join("/"), &text));
            }
        }
    }
    let mut files = Vec::new();
    walk(src, src, &mut files);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The code alone: comments gone, string and character literals emptied, line breaks kept.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut code = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], at(i + 1));
        let after_identifier = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let raw_start = match (c, next) {
            ('r', '"' | '#') if !after_identifier => Some(i + 1),
            ('b', 'r') if !after_identifier && matches!(at(i + 2), '"' | '#') => Some(i + 2),
            _ => None,
        };
        let raw = raw_start.map(|start| (start, (start..).take_while(|&j| at(j) == '#').count()));
        let end = if c == '/' && next == '/' {
            (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len())
        } else if c == '/' && next == '*' {
            let (mut depth, mut j) = (0, i);
            while j < chars.len() {
                match (chars[j], at(j + 1)) {
                    ('/', '*') => (depth, j) = (depth + 1, j + 2),
                    ('*', '/') if depth == 1 => break,
                    ('*', '/') => (depth, j) = (depth - 1, j + 2),
                    _ => j += 1,
                }
            }
            j + 2
        } else if let Some((start, hashes)) = raw.filter(|&(start, hashes)| at(start + hashes) == '"') {
            let closing = |j: usize| chars[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#');
            (start + hashes + 1..chars.len()).find(|&j| closing(j)).map_or(chars.len(), |j| j + hashes + 1)
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && next == '\\' {
            (i + 3..chars.len()).find(|&j| chars[j] == '\'').map_or(chars.len(), |j| j + 1)
        } else if c == '\'' && at(i + 2) == '\'' {
            i + 3
        } else {
            code.push(c);
            i += 1;
            continue;
        };
        let end = end.min(chars.len());
        code.push(if c == '/' { ' ' } else { '"' });
        code.extend(chars[i..end].iter().filter(|&&c| c == '\n'));
        i = end;
    }
    code
}

/// The code's tokens: identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let mut end = start + c.len_utf8();
        if c.is_alphabetic() || c == '_' {
            while let Some(&(i, c)) = chars.peek().filter(|(_, c)| c.is_alphanumeric() || *c == '_') {
                end = i + c.len_utf8();
                chars.next();
            }
        } else if c == ':' && chars.peek().is_some_and(|&(_, c)| c == ':') {
            end += 1;
            chars.next();
        } else if c.is_whitespace() {
            continue;
        }
        tokens.push(&code[start..end]);
    }
    tokens
}

fn is_identifier(token: &str) -> bool {
    token.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// A path written in a file, and whether it is in a `pub use` (a re-export).
struct Reference {
    path: Vec<String>,
    re_export: bool,
}

/// Every path in the code outside `mod tests { … }`: each `use` tree expanded to one path per name it brings in, and
/// each path of two or more segments elsewhere.
fn references(code: &str) -> Vec<Reference> {
    let tokens = tokens(code);
    let at = |i: usize| tokens.get(i).copied().unwrap_or("");
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i..].starts_with(&["mod", "tests", "{"]) {
            // Skipped to its matching brace.
            let mut depth = 0;
            i += 2;
            while i < tokens.len() {
                depth += match tokens[i] {
                    "{" => 1,
                    "}" => -1,
                    _ => 0,
                };
                i += 1;
                if depth == 0 {
                    break;
                }
            }
        } else if tokens[i] == "use" {
            let mut before = i.saturating_sub(1);
            if at(before) == ")" {
                before = (0..before).rev().find(|&j| tokens[j] == "(").map_or(0, |j| j.saturating_sub(1));
            }
            let re_export = i > 0 && at(before) == "pub";
            i += 1;
            let mut paths = Vec::new();
            use_tree(&tokens, &mut i, Vec::new(), &mut paths);
            found.extend(paths.into_iter().map(|path| Reference { path, re_export }));
            while i < tokens.len() && tokens[i] != ";" {
                i += 1;
            }
        } else if is_identifier(tokens[i]) && at(i + 1) == "::" && (i == 0 || at(i - 1) != "::") {
            let mut path = vec![tokens[i].to_owned()];
            i += 1;
            while at(i) == "::" && is_identifier(at(i + 1)) {
                path.push(at(i + 1).to_owned());
                i += 2;
            }
            found.push(Reference { path, re_export: false });
        } else {
            i += 1;
        }
    }
    found
}

/// Expands one `use` tree (`a::{b, c::d as e, f::*}`) from `tokens[*i]` into full paths.
fn use_tree(tokens: &[&str], i: &mut usize, mut path: Vec<String>, out: &mut Vec<Vec<String>>) {
    while let Some(&token) = tokens.get(*i) {
        *i += 1;
        match token {
            "::" => continue,
            "{" => {
                while !matches!(tokens.get(*i), None | Some(&"}")) {
                    let before = *i;
                    use_tree(tokens, i, path.clone(), out);
                    if tokens.get(*i) == Some(&",") || *i == before {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            "*" => {}
            _ if is_identifier(token) => {
                path.push(token.to_owned());
                if tokens.get(*i) == Some(&"::") {
                    continue;
                }
                if tokens.get(*i) == Some(&"as") {
                    *i += 2;
                }
            }
            // The end of this tree (`,`, `}` or `;`): the caller's to read.
            _ => *i -= 1,
        }
        break;
    }
    out.push(path);
}

/// The module file `path`, written in the module `from`, names: the deepest module that exists along it.
fn resolve(from: &[String], path: &[String], modules: &BTreeMap<Vec<String>, usize>) -> Option<usize> {
    let supers = path.iter().take_while(|segment| *segment == "super").count();
    let (mut module, rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (from.to_vec(), &path[1..]),
        "super" if supers <= from.len() => (from[..from.len() - supers].to_vec(), &path[supers..]),
        child => {
            let child = [from, &[child.to_owned()]].concat();
            modules.contains_key(&child).then_some(())?;
            (child, &path[1..])
        }
    };
    for segment in rest {
        module.push(segment.clone());
        if !modules.contains_key(&module) {
            module.pop();
            break;
        }
    }
    modules.get(&module).copied()
}

/// The file-to-file dependencies of one crate's files, by index.
fn import_edges(files: &[SourceFile]) -> BTreeSet<(usize, usize)> {
    let modules: BTreeMap<Vec<String>, usize> =
        files.iter().enumerate().map(|(index, file)| (file.module.clone(), index)).collect();
    let mut edges = BTreeSet::new();
    for (from, file) in files.iter().enumerate() {
        if file.module.last().is_some_and(|last| last == "tests") {
            continue;
        }
        for reference in references(&code_only(&file.text)) {
            let Some(to) = resolve(&file.module, &reference.path, &modules) else { continue };
            let target = &files[to].module;
            let re_exported_child = reference.re_export && target.starts_with(&file.module);
            if to != from && !target.is_empty() && !re_exported_child {
                edges.insert((from, to));
            }
        }
    }
    edges
}

/// Tarjan's strongly connected components of the graph whose node `i` leads to `next[i]`.
fn strongly_connected(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Search<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        visited: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(search: &mut Search<'_>, node: usize) {
        (search.index[node], search.low[node]) = (Some(search.visited), search.visited);
        search.visited += 1;
        search.stack.push(node);
        search.on_stack[node] = true;
        for &successor in &search.next[node] {
            match search.index[successor] {
                None => {
                    visit(search, successor);
                    search.low[node] = search.low[node].min(search.low[successor]);
                }
                Some(index) if search.on_stack[successor] => search.low[node] = search.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(search.low[node]) == search.index[node] {
            let mut component = Vec::new();
            while let Some(member) = search.stack.pop() {
                search.on_stack[member] = false;
                component.push(member);
                if member == node {
                    break;
                }
            }
            search.components.push(component);
        }
    }
    let n = next.len();
    let mut search = Search {
        next,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        visited: 0,
        components: Vec::new(),
    };
    for node in 0..n {
        if search.index[node].is_none() {
            visit(&mut search, node);
        }
    }
    search.components
}

/// The shortest cycle from `start` back to itself through `allowed` nodes (breadth first), `start` at both ends.
fn shortest_cycle(start: usize, next: &[Vec<usize>], allowed: &BTreeSet<usize>) -> Vec<usize> {
    let mut came_from = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &successor in next[node].iter().filter(|successor| allowed.contains(successor)) {
            if successor == start {
                let mut cycle = vec![start, node];
                while let Some(&previous) = came_from.get(cycle.last().unwrap_or(&start)) {
                    cycle.push(previous);
                }
                cycle.reverse();
                return cycle;
            }
            if let Entry::Vacant(entry) = came_from.entry(successor) {
                entry.insert(node);
                queue.push_back(successor);
            }
        }
    }
    vec![start]
}

/// Every import loop among `files` as `crate: a.rs -> b.rs -> a.rs`: the files of each tangle, covered by cycles.
fn import_loops(crate_name: &str, files: &[SourceFile]) -> Vec<String> {
    let mut next = vec![Vec::new(); files.len()];
    for (from, to) in import_edges(files) {
        next[from].push(to);
    }
    let mut loops = Vec::new();
    for component in strongly_connected(&next).into_iter().filter(|component| component.len() > 1) {
        let allowed: BTreeSet<usize> = component.into_iter().collect();
        let mut uncovered = allowed.clone();
        while let Some(&start) = uncovered.first() {
            let cycle = shortest_cycle(start, &next, &allowed);
            for node in &cycle {
                uncovered.remove(node);
            }
            let names: Vec<&str> = cycle.iter().map(|&node| files[node].name.as_str()).collect();
            loops.push(format!("{crate_name}: {}", names.join(" -> ")));
        }
    }
    loops.sort();
    loops
}

/// Files over [`MAX_LINES`] without a `// size: <reason>` line.
fn oversized(place: &str, files: &[SourceFile]) -> Vec<String> {
    let has_reason = |text: &str| {
        text.lines()
            .any(|line| line.trim_start().strip_prefix("// size:").is_some_and(|reason| !reason.trim().is_empty()))
    };
    files
        .iter()
        .filter(|file| file.text.lines().count() > MAX_LINES && !has_reason(&file.text))
        .map(|file| format!("{place}/{}: {} lines", file.name, file.text.lines().count()))
        .collect()
}

/// Each workspace member's directory name and source files.
fn workspace_crates() -> Vec<(String, Vec<SourceFile>)> {
    let root = workspace_root();
    let crates: Vec<_> = workspace_members(&root)
        .into_iter()
        .map(|member| {
            let files = crate_sources(&root.join(&member).join("src"));
            (member, files)
        })
        .collect();
    assert!(crates.iter().map(|(_, files)| files.len()).sum::<usize>() > 50, "found too few source files");
    crates
}

#[test]
fn no_import_loops_between_files_of_a_crate() {
    let loops: Vec<String> =
        workspace_crates().iter().flat_map(|(member, files)| import_loops(member, files)).collect();
    assert!(
        loops.is_empty(),
        "import loops between files (move the shared piece where it belongs):\n{}",
        loops.join("\n")
    );
}

#[test]
fn no_source_file_is_over_600_lines_without_a_stated_reason() {
    // Tests and benches are read as much as the code they check: the same bound holds for them.
    let root = workspace_root();
    let offenders: Vec<String> = workspace_members(&root)
        .iter()
        .flat_map(|member| ["src", "tests", "benches"].map(|dir| format!("{member}/{dir}")))
        .flat_map(|place| oversized(&place, &crate_sources(&root.join(&place))))
        .collect();
    assert!(
        offenders.is_empty(),
        "files over {MAX_LINES} lines (split them, or say why not in a `// size: <reason>` line):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_scanner_finds_loops_and_ignores_what_is_no_dependency() {
    let not_dependencies = r##"/// Not an edge: crate::c::Api
const QUOTE: char = '"';
pub struct Bee;
pub fn ay() -> crate::a::Ay {
    /* crate::c */ crate::a::Ay(Bee)
}
const QUOTED: &str = "crate::c::Api";
const RAW: &str = r#"super::c"#;
"##;
    let test_module = "use super::Api;\npub struct Dee(Api);\n#[cfg(test)]\nmod tests {\n    use crate::a::Ay;\n}\n";
    let files = [
        SourceFile::new("lib.rs", "mod a;\nmod b;\nmod c;\npub use c::Api;\n"),
        SourceFile::new("a.rs", "//! A.\nuse crate::{b::Bee, c};\npub struct Ay(Bee);\n"),
        SourceFile::new("b.rs", not_dependencies),
        SourceFile::new("c.rs", "mod d;\npub use d::Dee;\npub use self::d::Other as Renamed;\npub struct Api;\n"),
        SourceFile::new("c/d.rs", test_module),
        SourceFile::new("c/tests.rs", "use crate::b::Bee;\n"),
        SourceFile::new("x.rs", "pub(crate) use crate::y::Why;\n"),
        SourceFile::new("y.rs", "pub fn why() {\n    crate::z::zed()\n}\n"),
        SourceFile::new("z.rs", "use super::{x::Why, super_power};\n"),
    ];
    let names = |(from, to): (usize, usize)| format!("{} -> {}", files[from].name, files[to].name);
    let edges: Vec<String> = import_edges(&files).into_iter().map(names).collect();
    let expected = [
        "a.rs -> b.rs",
        "a.rs -> c.rs",
        "b.rs -> a.rs",
        "c/d.rs -> c.rs",
        "x.rs -> y.rs",
        "y.rs -> z.rs",
        "z.rs -> x.rs",
    ];
    assert_eq!(edges, expected);
    assert_eq!(import_loops("demo", &files), ["demo: a.rs -> b.rs -> a.rs", "demo: x.rs -> y.rs -> z.rs -> x.rs"]);
    assert_eq!(SourceFile::new("dev/mod.rs", "").module, ["dev"]);
}
