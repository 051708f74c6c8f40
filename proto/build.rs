//! Generates the gRPC code from `proto/quarry/*.proto` with protox, so no `protoc` is needed, and the table of which
//! RPCs are idempotent, read from the marker every `rpc` line of the proto files ends with.

use std::fmt::Write as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["core", "sa", "ra", "ca", "va", "nonce", "publisher"].map(|name| format!("proto/quarry/{name}.proto"));
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;

    let mut table = String::from("/// Every RPC of the proto files by its gRPC path, and whether it is idempotent.\n");
    table.push_str("pub const RPCS: &[(&str, bool)] = &[\n");
    for file in &files {
        for (path, idempotent) in rpc_markers(&std::fs::read_to_string(file)?, file)? {
            writeln!(table, "    ({path:?}, {idempotent}),")?;
        }
    }
    table.push_str("];\n");
    std::fs::write(std::path::Path::new(&std::env::var("OUT_DIR")?).join("idempotence.rs"), table)?;
    Ok(())
}

/// (`/package.Service/Method`, idempotent) of every rpc in `text`; an rpc without a `// idempotent` or
/// `// not idempotent: why` marker at the end of its line is an error, so no RPC's retry policy is left to chance.
fn rpc_markers(text: &str, file: &str) -> Result<Vec<(String, bool)>, String> {
    let mut package = "";
    let mut service = "";
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("package ") {
            package = name.trim_end_matches(';');
        } else if let Some(name) = line.strip_prefix("service ") {
            service = name.trim_end_matches('{').trim();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let method = rest.split('(').next().unwrap_or_default().trim();
            let marker = line.split_once("//").map(|(_, comment)| comment.trim()).unwrap_or_default();
            let idempotent = if marker.starts_with("idempotent") {
                true
            } else if marker.starts_with("not idempotent:") {
                false
            } else {
                return Err(format!("{file}: rpc {method} must end with `// idempotent` or `// not idempotent: why`"));
            };
            found.push((format!("/{package}.{service}/{method}"), idempotent));
        }
    }
    Ok(found)
}
