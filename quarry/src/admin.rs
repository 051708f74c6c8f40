//! `quarry admin`: the operator's commands, through the sa's gRPC services with the admin mTLS identity. What
//! changes something only says what it would do unless given `--execute`.

use std::path::PathBuf;

use anyhow::Context;
use quarry_core::config::{ConfigVersion, GrpcClientConfig, TlsFiles};
use quarry_proto::sa::AccountId;
use quarry_proto::sa::storage_authority_client::StorageAuthorityClient;
use quarry_proto::sa::storage_authority_read_only_client::StorageAuthorityReadOnlyClient;
use serde::Deserialize;

/// Where the operator's tools connect, as whom.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Checked when the file is read (it must be 1).
    #[serde(rename = "version")]
    pub _version: ConfigVersion,
    /// The admin certificate (`admin.quarry`), its key, and the internal CA.
    pub tls: TlsFiles,
    /// The sa (both its services).
    pub sa: GrpcClientConfig,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The admin configuration (`quarry dev` writes `<data-dir>/config/admin.toml`).
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AdminCommand {
    /// Lists the identifiers an account is paused for.
    Paused {
        #[arg(long)]
        account: i64,
    },
    /// Unpauses an account for every identifier it is paused for.
    Unpause {
        #[arg(long)]
        account: i64,
        /// Do it; without this only what would be unpaused is shown.
        #[arg(long)]
        execute: bool,
    },
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let config: AdminConfig = quarry_core::config::load(&args.config).context("admin configuration")?;
    let channel = quarry_core::grpc::channel(&config.sa, &config.tls)?;
    let mut read = StorageAuthorityReadOnlyClient::new(channel.clone());
    let (AdminCommand::Paused { account } | AdminCommand::Unpause { account, .. }) = args.command;
    let paused = read.get_paused_identifiers(AccountId { id: account }).await?.into_inner().identifiers;
    let names: Vec<&str> = paused.iter().map(|i| i.value.as_str()).collect();
    match args.command {
        AdminCommand::Paused { .. } => {
            println!("account {account} is paused for {} identifiers: {}", names.len(), names.join(" "));
        }
        AdminCommand::Unpause { execute: false, .. } => {
            println!("would unpause account {account} for {} identifiers: {}", names.len(), names.join(" "));
            println!("(dry run: add --execute to unpause)");
        }
        AdminCommand::Unpause { execute: true, .. } => {
            let mut write = StorageAuthorityClient::new(channel);
            let count = write.unpause_account(AccountId { id: account }).await?.into_inner().count;
            println!("unpaused account {account} for {count} identifiers");
        }
    }
    Ok(())
}
