//! `quarry admin`: the operator's commands, through the sa's gRPC services with the admin mTLS identity — paused
//! accounts, revocation by serial, blocked keys, rate-limit overrides. What changes something only says what it
//! would do unless given `--execute`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use quarry_core::config::{ConfigVersion, GrpcClientConfig, TlsFiles};
use quarry_core::peer::Peer;
use quarry_proto::client::SaClient;
use quarry_proto::sa::{
    AddBlockedKeyRequest, AddCertificateRequest, RateLimitOverride, RateLimitOverrideKey, RevokeCertificateRequest,
    RevokeForKeyCompromiseRequest,
};
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
    /// Revokes a certificate by serial; `keyCompromise` also blocks its key for every future request.
    Revoke {
        /// The serial, in hex.
        #[arg(long)]
        serial: String,
        /// unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        execute: bool,
    },
    /// Blocks a key: no account, certificate request or revocation may use it any more.
    BlockKey {
        /// The SHA-256 of the key's SubjectPublicKeyInfo, in hex.
        #[arg(long, conflicts_with = "pem", required_unless_present = "pem")]
        spki_sha256: Option<String>,
        /// A PEM file holding the key: a PUBLIC KEY or a CERTIFICATE.
        #[arg(long)]
        pem: Option<PathBuf>,
        /// Why, for the record.
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long)]
        execute: bool,
    },
    /// Lists the enabled rate-limit overrides kept in the database.
    Overrides,
    /// Adds (or replaces) an override: `count` per `period_secs` with bursts of `burst` for one bucket.
    OverrideAdd {
        /// The limit, e.g. CertificatesPerDomain.
        #[arg(long)]
        limit: String,
        /// The bucket: a registered domain, an account id, an IP address… as the limit keys it.
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        count: i64,
        #[arg(long)]
        period_secs: i64,
        #[arg(long)]
        burst: i64,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long)]
        execute: bool,
    },
    /// Stores the final certificates a ca logged as signed (its `final-signed` audit lines) that the database lacks:
    /// a ca that died between signing and storing one leaves it only there.
    AdoptOrphans {
        /// The ca's log files (every replica's), human or JSON lines.
        #[arg(long = "log", required = true)]
        logs: Vec<PathBuf>,
        #[arg(long)]
        execute: bool,
    },
    /// Disables an override (it stays in the database, for the record).
    OverrideDisable {
        #[arg(long)]
        limit: String,
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        execute: bool,
    },
}

/// RFC 5280 reason codes a CA may revoke a subscriber's certificate for.
const REASONS: &[(&str, i64)] = &[
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("privilegeWithdrawn", 9),
];
const KEY_COMPROMISE: i64 = 1;

/// What the sa said, as its problem's detail rather than a gRPC status dump.
fn refused(problem: quarry_core::Problem) -> anyhow::Error {
    anyhow::anyhow!("{}", problem.detail)
}

fn dry_run(execute: bool) {
    if !execute {
        println!("(dry run: add --execute to do it)");
    }
}

/// The sa, reached with the admin identity that the admin configuration at `path` names.
pub fn sa_client(path: &Path) -> anyhow::Result<SaClient> {
    let config: AdminConfig = quarry_core::config::load(path).context("admin configuration")?;
    Ok(SaClient::new(Peer::new(&config.sa, &config.tls)?))
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let sa = sa_client(&args.config)?;
    match args.command {
        AdminCommand::Paused { account } | AdminCommand::Unpause { account, execute: false } => {
            let paused = sa.get_paused_identifiers(account, None).await.map_err(refused)?;
            let names: Vec<&str> = paused.iter().map(|i| i.value.as_str()).collect();
            let verb = if matches!(args.command, AdminCommand::Paused { .. }) { "is paused" } else { "would unpause" };
            println!("account {account} {verb} for {} identifiers: {}", names.len(), names.join(" "));
            dry_run(matches!(args.command, AdminCommand::Paused { .. }));
        }
        AdminCommand::Unpause { account, execute: true } => {
            let count = sa.unpause_account(account, None).await.map_err(refused)?;
            println!("unpaused account {account} for {count} identifiers");
        }
        AdminCommand::Revoke { serial, reason, execute } => {
            let code = REASONS.iter().find(|(name, _)| *name == reason).map(|(_, code)| *code).with_context(|| {
                let names: Vec<&str> = REASONS.iter().map(|(name, _)| *name).collect();
                format!("unknown reason {reason:?}; one of {}", names.join(", "))
            })?;
            let serial = serial.to_ascii_lowercase().replace(':', "");
            let status = sa.get_certificate_status(&serial, None).await.map_err(refused)?;
            // A certificate revoked for another reason may still be declared compromised: its reason is raised.
            let upgrade = code == KEY_COMPROMISE && status.revoked_reason != KEY_COMPROMISE;
            if status.status == "revoked" && !upgrade {
                bail!("{serial} is already revoked (reason {})", status.revoked_reason);
            }
            let key_hash = if code == KEY_COMPROMISE {
                let certificate = sa.get_certificate(&serial, None).await.map_err(refused)?;
                Some(spki_hash_of_certificate(&certificate.der)?)
            } else {
                None
            };
            println!(
                "{} {serial} (now {}) for {reason}",
                if execute { "revoking" } else { "would revoke" },
                status.status
            );
            if let Some(hash) = &key_hash {
                println!("and block its key (SPKI SHA-256 {})", hex::encode(hash));
                println!("{BAD_KEY_REVOKER_NOTE}");
            }
            if execute {
                let date = quarry_core::clock::now();
                if let Some(key_hash) = key_hash {
                    // Blocked first: from then on no certificate can be issued for the key.
                    let comment = format!("key of {serial}, revoked for keyCompromise");
                    sa.add_blocked_key(AddBlockedKeyRequest { key_hash, source: "admin".into(), comment }, None)
                        .await
                        .map_err(refused)?;
                    let request = RevokeForKeyCompromiseRequest { serial: serial.clone(), date };
                    sa.revoke_for_key_compromise(request, None).await.map_err(refused)?;
                } else {
                    let request = RevokeCertificateRequest { serial: serial.clone(), reason: code, date };
                    sa.revoke_certificate(request, None).await.map_err(refused)?;
                }
                println!("revoked {serial}");
            }
            dry_run(execute);
        }
        AdminCommand::BlockKey { spki_sha256, pem, comment, execute } => {
            let key_hash = match (spki_sha256, pem) {
                (Some(digest), _) => {
                    hex::decode(digest.trim()).ok().filter(|h| h.len() == 32).context("a SHA-256 is 64 hex digits")?
                }
                (None, Some(path)) => spki_hash_of_pem(&path)?,
                (None, None) => bail!("give --spki-sha256 or --pem"),
            };
            if sa.key_blocked(key_hash.clone(), None).await.map_err(refused)? {
                println!("key {} is already blocked", hex::encode(&key_hash));
                return Ok(());
            }
            println!("{} key {}", if execute { "blocking" } else { "would block" }, hex::encode(&key_hash));
            println!("{BAD_KEY_REVOKER_NOTE}");
            if execute {
                sa.add_blocked_key(AddBlockedKeyRequest { key_hash, source: "admin".into(), comment }, None)
                    .await
                    .map_err(refused)?;
                println!("blocked");
            }
            dry_run(execute);
        }
        AdminCommand::Overrides => {
            let overrides = sa.get_enabled_rate_limit_overrides(None).await.map_err(refused)?;
            println!("{} enabled overrides", overrides.len());
            for o in overrides {
                println!(
                    "{} {}: {} per {} s, burst {}{}",
                    o.limit,
                    o.bucket,
                    o.count,
                    o.period_secs,
                    o.burst,
                    if o.comment.is_empty() { String::new() } else { format!(" ({})", o.comment) }
                );
            }
        }
        AdminCommand::OverrideAdd { limit, bucket, count, period_secs, burst, comment, execute } => {
            let name =
                quarry_ratelimits::LimitName::parse(&limit).with_context(|| format!("unknown limit {limit:?}"))?;
            if count <= 0 || period_secs <= 0 || burst <= 0 {
                bail!("count, period_secs and burst must be positive");
            }
            println!(
                "{} {name} for {bucket}: {count} per {period_secs} s, burst {burst}",
                if execute { "setting" } else { "would set" }
            );
            if execute {
                let entry = RateLimitOverride { limit, bucket, count, period_secs, burst, comment };
                sa.add_rate_limit_override(entry, None).await.map_err(refused)?;
                println!("set; the ras apply it at their next overrides refresh");
            }
            dry_run(execute);
        }
        AdminCommand::AdoptOrphans { logs, execute } => {
            let signed = crate::orphans::signed_in(&logs)?;
            let mut orphans = 0;
            for orphan in &signed {
                match sa.get_certificate(&orphan.serial, None).await {
                    Ok(_) => continue,
                    Err(problem) if problem.kind == quarry_core::ErrorKind::NotFound => {}
                    Err(problem) => return Err(refused(problem)),
                }
                orphans += 1;
                println!("{} {}", if execute { "adopting" } else { "would adopt" }, orphan.serial);
                if execute {
                    let store = AddCertificateRequest {
                        account_id: orphan.account_id,
                        der: orphan.der.clone(),
                        issued: orphan.issued,
                        issuer_id: orphan.issuer_id,
                        // The sa makes the order its serial was reserved for valid.
                        order_id: 0,
                        expires: 0,
                        processing_by: String::new(),
                    };
                    sa.add_certificate(store, None).await.map_err(refused)?;
                }
            }
            println!("{} signed in the logs, {orphans} not stored", signed.len());
            dry_run(execute);
        }
        AdminCommand::OverrideDisable { limit, bucket, execute } => {
            println!("{} the override of {limit} for {bucket}", if execute { "disabling" } else { "would disable" });
            if execute {
                sa.disable_rate_limit_override(RateLimitOverrideKey { limit, bucket }, None).await.map_err(refused)?;
                println!("disabled");
            }
            dry_run(execute);
        }
    }
    Ok(())
}

/// What happens to a blocked key's other certificates, said wherever the operator blocks one.
const BAD_KEY_REVOKER_NOTE: &str = "every other unexpired certificate with this key is revoked for keyCompromise by the ra's bad-key revoker \
     (within about 10 s; metric quarry_bad_key_certificates_revoked_total)";

/// The canonical key hash (`Jwk::key_hash`) of a certificate's key: what blocked keys are looked up by.
fn spki_hash_of_certificate(der: &[u8]) -> anyhow::Result<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (_, certificate) =
        x509_parser::certificate::X509Certificate::from_der(der).context("the certificate does not parse")?;
    spki_hash(certificate.public_key().raw)
}

/// The canonical key hash of a SubjectPublicKeyInfo, in whatever encoding it comes (`Jwk::key_hash_of_spki`). A key
/// Quarry does not accept need not be blocked: no account or certificate can use it.
fn spki_hash(spki: &[u8]) -> anyhow::Result<Vec<u8>> {
    let hash = quarry_jose::Jwk::key_hash_of_spki(spki).map_err(|e| anyhow::anyhow!("the key: {e}"))?;
    Ok(hash.to_vec())
}

fn spki_hash_of_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).with_context(|| format!("{} is not PEM", path.display()))?;
    match pem.label.as_str() {
        "PUBLIC KEY" => spki_hash(&pem.contents),
        "CERTIFICATE" => spki_hash_of_certificate(&pem.contents),
        other => bail!("{}: a {other} is not a PUBLIC KEY or a CERTIFICATE", path.display()),
    }
}
