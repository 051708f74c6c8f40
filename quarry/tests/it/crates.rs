//! The crate map ARCHITECTURE.md draws, checked: each workspace crate belongs to one layer and depends (as a normal
//! dependency, what ships) only on the layers below it; no service crate depends on another service or on the dev
//! tools; and the production binary's whole dependency tree, as `cargo tree -e normal` prints it, holds no dev tool
//! or test support. Dev-dependencies (tests) may use anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The layers, lowest first: a crate may depend on its own layer's crates only where noted, and on any lower layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Shared by everything: types, wire format, plumbing. May depend on each other.
    Foundation,
    /// One crate per service; none depends on another.
    Service,
    /// The ceremony (above the ca it makes keys for) and the production binary's library and commands.
    Operator,
    /// What only `quarry dev` and tests run.
    Dev,
}

fn layer(krate: &str) -> Option<Layer> {
    Some(match krate {
        "quarry-proto" | "quarry-core" | "quarry-jose" | "quarry-ratelimits" | "quarry-acme-client" => {
            Layer::Foundation
        }
        "quarry-wfe" | "quarry-ra" | "quarry-sa" | "quarry-ca" | "quarry-va" | "quarry-nonce" | "quarry-publisher"
        | "quarry-crl-updater" => Layer::Service,
        "quarry-ceremony" | "quarry" => Layer::Operator,
        "quarry-devtools" | "quarry-testkit" => Layer::Dev,
        _ => return None,
    })
}

/// Why a normal dependency from `from` on `to` (both workspace crates) breaks the map, if it does.
fn violation(from: &str, to: &str) -> Option<String> {
    let (Some(from_layer), Some(to_layer)) = (layer(from), layer(to)) else {
        return Some(format!("{from} -> {to}: a crate of no layer; name it in tests/it/crates.rs and ARCHITECTURE.md"));
    };
    let allowed = match (from_layer, to_layer) {
        (a, b) if b < a => true,
        (Layer::Foundation, Layer::Foundation) => true,
        // The ceremony tool and the binary both sit above the services; the binary may use the ceremony.
        (Layer::Operator, Layer::Operator) => from == "quarry" && to == "quarry-ceremony",
        // Test support re-exports the dev tools the tests drive; never the other way round.
        (Layer::Dev, Layer::Dev) => from == "quarry-testkit" && to == "quarry-devtools",
        _ => false,
    };
    (!allowed).then(|| format!("{from} ({from_layer:?}) -> {to} ({to_layer:?})"))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    command
}

/// Every workspace crate's normal dependencies on other workspace crates, from `cargo metadata`.
fn normal_workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_owned();
            let dependencies = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|dep| dep["kind"].is_null())
                .filter_map(|dep| dep["name"].as_str())
                .filter(|dep| members.contains(dep))
                .map(str::to_owned)
                .collect();
            (name, dependencies)
        })
        .collect()
}

#[test]
fn every_crate_depends_only_on_the_layers_below_it() {
    let dependencies = normal_workspace_dependencies();
    assert!(dependencies.len() >= 17, "found only {} workspace crates", dependencies.len());
    let mut violations = Vec::new();
    for (from, tos) in &dependencies {
        if layer(from).is_none() {
            violations.push(format!("{from}: a crate of no layer; name it in tests/it/crates.rs and ARCHITECTURE.md"));
        }
        violations.extend(tos.iter().filter_map(|to| violation(from, to)));
    }
    assert!(violations.is_empty(), "dependencies against the crate map:\n{}", violations.join("\n"));
}

#[test]
fn the_production_binary_ships_no_dev_tool_or_test_support() {
    let output = cargo()
        .args(["tree", "--offline", "-p", "quarry", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "cargo tree: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(crates.contains(&"quarry-wfe") && crates.contains(&"quarry-ceremony"), "{tree}");
    for dev_only in ["quarry-devtools", "quarry-testkit", "instant-acme", "tempfile"] {
        assert!(!crates.contains(&dev_only), "the production binary depends on {dev_only}:\n{tree}");
    }
}

#[test]
fn the_map_refuses_what_it_should() {
    assert_eq!(violation("quarry-ra", "quarry-core"), None);
    assert_eq!(violation("quarry", "quarry-ceremony"), None);
    assert_eq!(violation("quarry-testkit", "quarry-devtools"), None);
    assert!(violation("quarry-ra", "quarry-ca").is_some(), "a service on another service");
    assert!(violation("quarry-wfe", "quarry-testkit").is_some(), "a service on test support");
    assert!(violation("quarry", "quarry-devtools").is_some(), "the production binary on the dev tools");
    assert!(violation("quarry-devtools", "quarry-testkit").is_some(), "the dev tools on test support");
    assert!(violation("quarry-core", "quarry-ra").is_some(), "the foundation on a service");
    assert!(violation("quarry-new", "quarry-core").is_some(), "a crate of no layer");
}
