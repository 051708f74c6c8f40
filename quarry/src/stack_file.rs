//! The stack file (`<data-dir>/stack.json`): what a running `quarry dev` tells the tools that talk to it — where its
//! ACME directory, trust anchors, challenge test server and processes are. `quarry dev` writes it; `quarry probe`,
//! `quarry loadgen` and the tests read it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

/// What `quarry dev` tells scripts about the running stack (`<data-dir>/stack.json`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StackInfo {
    pub directory_url: String,
    pub tls_ca_pem: PathBuf,
    pub root_pem: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challtestsrv_url: Option<String>,
    /// Where CRL shards are served: `<crl_base_url><issuer>/<shard>.crl`.
    pub crl_base_url: String,
    /// Where each service's log is (`quarry dev`; a container stack's logs are the containers').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_dir: Option<PathBuf>,
    /// Every process of the stack (`quarry dev`): its replica name, service, address, process id and log. Kept
    /// up to date as the supervisor restarts replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaInfo>,
    /// Pebble's management API, when `--management-addr` asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
}

/// Which ACME server a client tool (`quarry probe`, `quarry loadgen`) talks to: a directory URL, or the stack file
/// of a running `quarry dev`.
#[derive(clap::Args, Debug)]
pub struct AcmeTarget {
    /// The ACME directory URL.
    #[arg(required_unless_present = "stack", conflicts_with = "stack")]
    directory_url: Option<String>,
    /// A running `quarry dev`'s stack file: its directory, trust anchors and challenge test server.
    #[arg(long)]
    stack: Option<PathBuf>,
    /// The CA certificate(s) to trust for the server's HTTPS (PEM); default: the stack file's.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// An [`AcmeTarget`] with the stack file read: what is known of the server.
pub struct Target {
    pub directory_url: String,
    pub tls_ca: Option<PathBuf>,
    /// The issuing root, when a stack file says.
    pub root: Option<PathBuf>,
    /// The stack's challenge test server, when it runs one.
    pub challtestsrv: Option<String>,
    /// Each replica's name and metrics address, when the stack file says (`quarry dev --metrics-base-port`).
    pub metrics: Vec<(String, SocketAddr)>,
}

impl AcmeTarget {
    pub fn resolve(&self) -> anyhow::Result<Target> {
        let Some(path) = &self.stack else {
            return Ok(Target {
                directory_url: self.directory_url.clone().context("a directory URL or --stack")?,
                tls_ca: self.tls_ca.clone(),
                root: None,
                challtestsrv: None,
                metrics: Vec::new(),
            });
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let stack: StackInfo =
            serde_json::from_str(&text).with_context(|| format!("{} is not a stack file", path.display()))?;
        Ok(Target {
            directory_url: stack.directory_url,
            tls_ca: self.tls_ca.clone().or(Some(stack.tls_ca_pem)),
            root: Some(stack.root_pem),
            challtestsrv: stack.challtestsrv_url,
            metrics: stack.replicas.into_iter().filter_map(|r| Some((r.name, r.metrics?))).collect(),
        })
    }
}

/// What a stack file says of one replica.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplicaInfo {
    pub name: String,
    pub service: String,
    /// Where it serves: its gRPC server, or the wfe's HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    pub pid: u32,
    pub restarts: u32,
    pub log: PathBuf,
    /// Where its Prometheus metrics are served (`quarry dev --metrics-base-port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}
