//! The boundaries ARCHITECTURE.md promises, checked on the source: each file of `src/` is a
//! module, every path it names (in `use` items, code, macros and attributes) that leads to
//! another module of the crate is a dependency, and
//! - no two modules depend on each other, directly or through others (checked among the
//!   children of every module, from the crate's top-level modules down; a module and its own
//!   children are one unit, so `super::` does not count);
//! - each layer imports only what it may (the table in `RULES`);
//! - openraft is named only under `src/raft/`, and the WAL names neither tokio, tonic, prost
//!   nor openraft.
//!
//! A name re-exported by a `mod.rs` (`pub use manager::Manager`) leads to the file that defines
//! it, so a facade hides no dependency. `#[cfg(test)]` items are not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

/// A module, as its path from the crate root (`["wal", "manager"]`; the root is `[]`).
type Module = Vec<String>;

/// What a layer may import, by top-level module: `Only` lists everything it may name.
enum Rule {
    Only(&'static [&'static str]),
    Not(&'static [&'static str]),
}

const RULES: &[(&str, Rule)] = &[
    // Leaves: they import nothing of the crate, except the wire contract's protos.
    ("fs", Rule::Only(&[])),
    ("checksum", Rule::Only(&[])),
    ("proto", Rule::Only(&[])),
    ("wire", Rule::Only(&["proto"])),
    // TLS material, reloading and the accept loop: rustls and tonic only.
    ("tls", Rule::Only(&[])),
    ("auth", Rule::Only(&[])),
    // The WAL imports nothing above it.
    ("wal", Rule::Only(&["fs", "checksum"])),
    // The client knows nothing of the server: the protos and the wire contract only.
    ("client", Rule::Only(&["proto", "wire", "checksum"])),
    ("metrics", Rule::Only(&["tls", "auth"])),
    (
        "raft",
        Rule::Only(&["wal", "fs", "checksum", "proto", "tls"]),
    ),
    // The core of use cases sits below every adapter and knows no gRPC service.
    (
        "core",
        Rule::Only(&["raft", "wal", "fs", "checksum", "wire", "metrics"]),
    ),
    // The gRPC adapter talks to the core, never to Raft or the node's wiring.
    (
        "api",
        Rule::Not(&["raft", "node", "cli", "config", "client"]),
    ),
    ("node", Rule::Not(&["cli", "config"])),
    ("config", Rule::Not(&["cli", "api", "client"])),
    ("cli", Rule::Not(&["raft", "api"])),
];

/// Where openraft may be named.
const OPENRAFT_HOME: &str = "raft";
/// Crates the WAL does not use (plain threads and files).
const WAL_FOREIGN: &[&str] = &["tokio", "tonic", "prost", "openraft"];

/// What the scan found: every module, its dependencies, and who names what crate.
struct Scan {
    modules: BTreeSet<Module>,
    deps: BTreeMap<Module, BTreeSet<Module>>,
    crates_named: BTreeMap<Module, BTreeSet<String>>,
}

fn module_of(rel: &Path) -> Option<Module> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    match stem {
        "lib" if parts.is_empty() => {}
        "main" if parts.is_empty() => return None,
        "mod" => {}
        s => parts.push(s.to_owned()),
    }
    Some(parts)
}

fn read_sources(root: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read src/") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Some(m) = p.strip_prefix(root).ok().and_then(module_of) {
                out.insert(m, std::fs::read_to_string(&p).expect("read a source file"));
            }
        }
    }
    out
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// The file's tokens without its `#[cfg(test)]` items, and its inline modules (`mod x { }`).
fn code_tokens(src: &str) -> (TokenStream, Vec<String>) {
    let file = syn::parse_file(src).expect("a source file parses");
    let mut tokens = TokenStream::new();
    let mut inline = Vec::new();
    for item in file.items {
        let attrs: &[syn::Attribute] = match &item {
            syn::Item::Mod(m) => {
                if m.content.is_some() {
                    inline.push(m.ident.to_string());
                }
                &m.attrs
            }
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Struct(s) => &s.attrs,
            _ => &[],
        };
        if !is_cfg_test(attrs) {
            item.to_tokens(&mut tokens);
        }
    }
    (tokens, inline)
}

/// Paths named in `tokens` that start at `crate`, `super`, `self` or a child module, expanded
/// (`a::{b, c::d}` gives `a::b` and `a::c::d`), made absolute from `here`.
fn paths(tokens: TokenStream, here: &Module, children: &BTreeSet<String>) -> Vec<Module> {
    let toks: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let TokenTree::Group(g) = &toks[i] {
            out.extend(paths(g.stream(), here, children));
            i += 1;
            continue;
        }
        let after_colons = i >= 2 && is_colon(&toks[i - 1]) && is_colon(&toks[i - 2]);
        if let TokenTree::Ident(id) = &toks[i]
            && !after_colons
            && is_path_sep(&toks, i + 1)
        {
            let first = id.to_string();
            let base: Option<Module> = match first.as_str() {
                "crate" => Some(Vec::new()),
                "super" => Some(here[..here.len().saturating_sub(1)].to_vec()),
                "self" => Some(here.clone()),
                c if children.contains(c) => Some(with(here, c)),
                _ => None,
            };
            if let Some(base) = base {
                let (found, next) = tail(&toks, i + 1, base, here);
                out.extend(found);
                i = next;
                continue;
            }
        }
        i += 1;
    }
    out
}

fn is_colon(t: &TokenTree) -> bool {
    matches!(t, TokenTree::Punct(p) if p.as_char() == ':')
}

fn is_path_sep(toks: &[TokenTree], i: usize) -> bool {
    i + 1 < toks.len() && is_colon(&toks[i]) && is_colon(&toks[i + 1])
}

fn with(m: &Module, seg: &str) -> Module {
    let mut v = m.clone();
    v.push(seg.to_owned());
    v
}

/// Reads `::a::b::{...}` from `i` on, with `prefix` so far; returns the paths and where the
/// path ends.
fn tail(
    toks: &[TokenTree],
    mut i: usize,
    mut prefix: Module,
    here: &Module,
) -> (Vec<Module>, usize) {
    let mut out = Vec::new();
    while is_path_sep(toks, i) {
        i += 2;
        match toks.get(i) {
            Some(TokenTree::Ident(id)) => {
                let s = id.to_string();
                if s == "super" {
                    prefix.pop();
                } else if s != "self" {
                    prefix.push(s);
                }
                i += 1;
            }
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                out.extend(tree(g.stream(), &prefix, here));
                return (out, i + 1);
            }
            // `a::*` or `a::<T>`: the path so far.
            _ => break,
        }
    }
    out.push(prefix);
    (out, i)
}

/// The paths of a use tree's `{ ... }` under `prefix`.
fn tree(stream: TokenStream, prefix: &Module, here: &Module) -> Vec<Module> {
    let toks: Vec<TokenTree> = stream.into_iter().collect();
    let mut out = Vec::new();
    for part in toks.split(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')) {
        let Some(TokenTree::Ident(first)) = part.first() else {
            continue;
        };
        let mut base = prefix.clone();
        let first = first.to_string();
        if first != "self" {
            base.push(first);
        }
        let (found, _) = tail(part, 1, base, here);
        out.extend(found);
    }
    out
}

/// The module a path leads to: its longest prefix that is a module, through re-exports.
fn resolve(path: &Module, modules: &BTreeSet<Module>, exports: &Exports) -> Option<Module> {
    let mut path = path.clone();
    for _ in 0..8 {
        let m = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))?;
        let Some(name) = path.get(m.len()) else {
            return Some(m);
        };
        match exports.get(&(m.clone(), name.clone())) {
            Some(target) if *target != path => path = target.clone(),
            _ => return Some(m),
        }
    }
    None
}

/// `(module, name) -> path` for every name a module brings in with `use` (what `super::x` or
/// `crate::m::x` may go through).
type Exports = BTreeMap<(Module, String), Module>;

fn exports_of(
    m: &Module,
    src: &str,
    children: &BTreeSet<String>,
) -> Vec<((Module, String), Module)> {
    let Ok(file) = syn::parse_file(src) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in file.items {
        if let syn::Item::Use(u) = item
            && !is_cfg_test(&u.attrs)
        {
            for p in paths(u.to_token_stream(), m, children) {
                if let Some(last) = p.last() {
                    out.push(((m.clone(), last.clone()), p.clone()));
                }
            }
        }
    }
    out
}

fn scan(sources: &BTreeMap<Module, String>) -> Scan {
    let mut modules: BTreeSet<Module> = sources.keys().cloned().collect();
    let mut code = BTreeMap::new();
    for (m, src) in sources {
        let (tokens, inline) = code_tokens(src);
        for name in inline {
            modules.insert(with(m, &name));
        }
        code.insert(m.clone(), tokens);
    }
    let children = |m: &Module| -> BTreeSet<String> {
        modules
            .iter()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
            .map(|c| c[m.len()].clone())
            .collect()
    };
    let mut exports = Exports::new();
    for (m, src) in sources {
        exports.extend(exports_of(m, src, &children(m)));
    }
    let mut deps: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut crates_named: BTreeMap<Module, BTreeSet<String>> = BTreeMap::new();
    for (m, tokens) in code {
        let named = idents(tokens.clone());
        crates_named.insert(m.clone(), named);
        let found = paths(tokens, &m, &children(&m));
        let targets = found
            .iter()
            .filter_map(|p| resolve(p, &modules, &exports))
            .filter(|t| *t != m);
        deps.entry(m.clone()).or_default().extend(targets);
    }
    Scan {
        modules,
        deps,
        crates_named,
    }
}

/// Every identifier in `tokens` (to find crate names such as `openraft`).
fn idents(tokens: TokenStream) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in tokens {
        match t {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => out.extend(idents(g.stream())),
            _ => {}
        }
    }
    out
}

/// For a dependency `from -> to`, the two siblings it connects: the children of the deepest
/// common ancestor on each side (`None` when one contains the other).
fn siblings(from: &Module, to: &Module) -> Option<(Module, Module)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// The graph among the children of each module: `parent -> (child -> children it uses)`.
fn levels(scan: &Scan) -> BTreeMap<Module, BTreeMap<Module, BTreeSet<Module>>> {
    let mut out: BTreeMap<Module, BTreeMap<Module, BTreeSet<Module>>> = BTreeMap::new();
    for (from, tos) in &scan.deps {
        for to in tos {
            if let Some((a, b)) = siblings(from, to) {
                let parent = a[..a.len() - 1].to_vec();
                out.entry(parent)
                    .or_default()
                    .entry(a)
                    .or_default()
                    .insert(b);
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one (as the modules along it).
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        n: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for next in graph.get(n).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// Every broken boundary, as a sentence.
fn violations(scan: &Scan) -> Vec<String> {
    let mut out = Vec::new();
    for (parent, graph) in levels(scan) {
        if let Some(c) = find_cycle(&graph) {
            let names: Vec<String> = c.iter().map(name).collect();
            out.push(format!(
                "import cycle among the modules of {}: {}",
                name(&parent),
                names.join(" -> ")
            ));
        }
    }
    for (from, tos) in &scan.deps {
        let Some(layer) = from.first() else { continue };
        let Some((_, rule)) = RULES.iter().find(|(l, _)| l == layer) else {
            continue;
        };
        for to in tos {
            let Some(target) = to.first() else { continue };
            if target == layer {
                continue;
            }
            let allowed = match rule {
                Rule::Only(ok) => ok.contains(&target.as_str()),
                Rule::Not(banned) => !banned.contains(&target.as_str()),
            };
            if !allowed {
                out.push(format!(
                    "{} imports {}: `{layer}` may not use `{target}`",
                    name(from),
                    name(to)
                ));
            }
        }
    }
    for (m, named) in &scan.crates_named {
        let layer = m.first().map(String::as_str);
        if named.contains("openraft") && layer != Some(OPENRAFT_HOME) {
            out.push(format!(
                "{} names openraft, which stays in src/raft/",
                name(m)
            ));
        }
        if layer == Some("wal") {
            for c in WAL_FOREIGN.iter().filter(|c| named.contains(**c)) {
                out.push(format!(
                    "{} names {c}: the WAL uses plain threads and files",
                    name(m)
                ));
            }
        }
    }
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The graph among the children of every module, one `module -> what it uses` line each.
fn graph_text(scan: &Scan) -> String {
    let mut out = String::new();
    for (parent, graph) in levels(scan) {
        out.push_str(&format!("among the modules of {}:\n", name(&parent)));
        for (m, uses) in graph {
            let uses: Vec<String> = uses.iter().map(name).collect();
            out.push_str(&format!("  {} -> {}\n", name(&m), uses.join(", ")));
        }
    }
    out
}

#[test]
fn the_code_keeps_its_boundaries() {
    let scan = scan(&read_sources(&src_dir()));
    assert!(scan.modules.len() > 40, "the scan found the modules");
    println!("module graph:\n{}", graph_text(&scan));
    let v = violations(&scan);
    assert!(v.is_empty(), "broken boundaries:\n{}", v.join("\n"));
}

/// The checks fail when someone adds a forbidden import: the real tree plus one bad line.
#[test]
fn a_forbidden_import_fails_the_check() {
    let real = read_sources(&src_dir());
    let cases: [(&[&str], &str, &str); 6] = [
        (
            &["client", "mod"],
            "use crate::wal::Operation;",
            "`client` may not use `wal`",
        ),
        (
            &["api", "log"],
            "use crate::raft::NodeId;",
            "`api` may not use `raft`",
        ),
        (
            &["wal", "read"],
            "use crate::core::Core;",
            "`wal` may not use `core`",
        ),
        (
            &["cli", "output"],
            "fn f(_: openraft::Vote<u64>) {}",
            "names openraft",
        ),
        (
            &["wal", "segment"],
            "fn f() { tokio::spawn(async {}); }",
            "names tokio",
        ),
        (
            &["core", "error"],
            "use crate::api::routes;",
            "import cycle among the modules of crate",
        ),
    ];
    for (file, line, expected) in cases {
        let mut sources = real.clone();
        let key: Module = file
            .iter()
            .filter(|s| **s != "mod")
            .map(|s| s.to_string())
            .collect();
        let src = sources
            .get_mut(&key)
            .unwrap_or_else(|| panic!("{key:?} exists"));
        src.push('\n');
        src.push_str(line);
        let v = violations(&scan(&sources));
        assert!(
            v.iter().any(|s| s.contains(expected)),
            "adding {line:?} to {key:?} must report {expected:?}; got {v:?}"
        );
    }
}

/// A cycle between two siblings deep in the tree is found too, through a re-export.
#[test]
fn a_cycle_through_a_reexport_is_found() {
    let sources: BTreeMap<Module, String> = [
        (vec![], "pub mod a;".to_owned()),
        (
            vec!["a".into()],
            "mod x; mod y; pub use x::X; pub use y::Y;".to_owned(),
        ),
        (
            vec!["a".into(), "x".into()],
            "use super::Y; pub struct X(Y);".to_owned(),
        ),
        (
            vec!["a".into(), "y".into()],
            "use crate::a::X; pub struct Y(Box<X>);".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let v = violations(&scan(&sources));
    assert!(
        v.iter()
            .any(|s| s.contains("a::x -> a::y -> a::x") || s.contains("a::y -> a::x -> a::y")),
        "{v:?}"
    );
}
