//! Pebble's JSON configuration file, read by `quarry dev --pebble-config FILE` and `quarry pebble -config FILE`:
//! each field is mapped onto what `quarry dev` runs (its addresses, the wfe's HTTPS certificate, the va's ports, the
//! overlays of the wfe, ra and va); a field with no equivalent is refused with the reason, never dropped. Keys are
//! matched whatever their case, as Pebble's JSON decoding matches them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::knobs::ServiceOverlays;

/// What a Pebble configuration file asks of `quarry dev`.
#[derive(Debug, Default)]
pub struct PebbleConfig {
    /// `listenAddress`: where the ACME server listens.
    pub listen: Option<SocketAddr>,
    /// `managementListenAddress`: where the management API listens.
    pub management: Option<SocketAddr>,
    /// `certificate` and `privateKey`: the ACME server's (and the management API's) HTTPS certificate.
    pub https: Option<(PathBuf, PathBuf)>,
    /// `httpPort`: the port http-01 validations connect to.
    pub http_port: Option<u16>,
    /// `tlsPort`: the port tls-alpn-01 validations connect to.
    pub tls_port: Option<u16>,
    /// The rest, as overlays of the services' configurations.
    pub overlays: ServiceOverlays,
    /// Fields taken but not honoured as Pebble would, each with why (printed at start).
    pub notes: Vec<String>,
}

/// Reads a Pebble configuration file.
pub fn read(path: &Path) -> anyhow::Result<PebbleConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} (a Pebble configuration file)", path.display()))
}

/// The field `name` of `object`, whatever the case of its key, and the object's other keys.
fn fields(object: &serde_json::Map<String, Value>) -> impl Iterator<Item = (String, &Value)> {
    object.iter().map(|(key, value)| (key.to_ascii_lowercase(), value))
}

pub fn parse(text: &str) -> anyhow::Result<PebbleConfig> {
    let top: Value = serde_json::from_str(text).context("not JSON")?;
    let top = top.as_object().context("not a JSON object")?;
    let mut pebble = None;
    for (key, value) in fields(top) {
        match key.as_str() {
            "pebble" => pebble = Some(value.as_object().context("\"pebble\" is not an object")?),
            _ => bail!("unknown top-level field {key:?}: a Pebble configuration holds one object, \"pebble\""),
        }
    }
    let pebble = pebble.context("no \"pebble\" object")?;
    let mut config = PebbleConfig::default();
    let mut set = |service: &'static str, path: &[&str], value: toml::Value| {
        super::knobs::set_key(&mut config.overlays, service, path, value);
    };
    // Test suites hard-code Pebble's `/dir`.
    set("wfe", &["client_testing", "directory_aliases"], toml::Value::Array(vec!["/dir".into()]));
    let (mut certificate, mut private_key) = (None, None);
    let mut notes = Vec::new();
    for (key, value) in fields(pebble) {
        let string = || value.as_str().with_context(|| format!("{key} is not a string"));
        let strings = || -> anyhow::Result<Vec<toml::Value>> {
            let list = value.as_array().with_context(|| format!("{key} is not a list"))?;
            list.iter()
                .map(|item| {
                    item.as_str().map(toml::Value::from).with_context(|| format!("{key}: {item} is not a string"))
                })
                .collect()
        };
        let number = || value.as_u64().with_context(|| format!("{key} is not a whole number"));
        match key.as_str() {
            "listenaddress" => config.listen = Some(address(string()?).with_context(|| key.clone())?),
            "managementlistenaddress" => {
                let text = string()?;
                config.management =
                    if text.is_empty() { None } else { Some(address(text).with_context(|| key.clone())?) };
            }
            "certificate" => certificate = Some(PathBuf::from(string()?)),
            "privatekey" => private_key = Some(PathBuf::from(string()?)),
            "httpport" => config.http_port = Some(u16::try_from(number()?).context("httpPort is not a port")?),
            "tlsport" => config.tls_port = Some(u16::try_from(number()?).context("tlsPort is not a port")?),
            "ocspresponderurl" => {
                let url = string()?;
                if !url.is_empty() {
                    notes.push(format!(
                        "ocspResponderURL {url:?} is not written into certificates: Quarry runs no OCSP (as Let's \
                         Encrypt has run none since 2025); every certificate names its CRL instead"
                    ));
                }
            }
            "externalaccountbindingrequired" => {
                let required = value.as_bool().with_context(|| format!("{key} is not true or false"))?;
                set("wfe", &["external_account_binding", "required"], required.into());
            }
            "externalaccountmackeys" => {
                let keys = value.as_object().with_context(|| format!("{key} is not an object"))?;
                let mut table = toml::Table::new();
                for (kid, mac) in keys {
                    let mac = mac.as_str().with_context(|| format!("{key}.{kid} is not a string"))?;
                    table.insert(kid.clone(), mac.into());
                }
                set("wfe", &["external_account_binding", "keys"], toml::Value::Table(table));
                // Pebble lets a key bind any number of accounts; suites register several with one key.
                set("wfe", &["external_account_binding", "reuse"], true.into());
            }
            "domainblocklist" => set("ra", &["blocklists", "admin"], toml::Value::Array(strings()?)),
            "retryafter" => {
                let retry = value.as_object().with_context(|| format!("{key} is not an object"))?;
                for (which, seconds) in fields(retry) {
                    let seconds = seconds.as_u64().with_context(|| format!("retryAfter.{which} is not a number"))?;
                    let seconds = toml::Value::Integer(i64::try_from(seconds).context("retryAfter too large")?);
                    match which.as_str() {
                        "order" => set("wfe", &["retry_after_secs"], seconds),
                        "authz" => set("wfe", &["authz_retry_after_secs"], seconds),
                        other => bail!("unknown field retryAfter.{other} (Pebble has authz and order)"),
                    }
                }
            }
            "caaidentities" => {
                let identities = toml::Value::Array(strings()?);
                set("va", &["caa_identities"], identities.clone());
                set("wfe", &["directory_meta", "caa_identities"], identities);
            }
            "certificatevalidityperiod" => notes.push(
                "certificateValidityPeriod is not used, as Pebble has not used it since 2.7: the validity comes from \
                 the profile (Quarry's dev profiles: classic 90 days, shortlived 160 hours)"
                    .to_owned(),
            ),
            "profiles" => {
                let profiles = value.as_object().with_context(|| format!("{key} is not an object"))?;
                for (name, profile) in profiles {
                    let profile = profile.as_object().with_context(|| format!("profiles.{name} is not an object"))?;
                    let mapped = map_profile(name, profile)?;
                    for (service, path, value) in mapped {
                        set(service, &path.iter().map(String::as_str).collect::<Vec<_>>(), value);
                    }
                }
                // Pebble's orders that name no profile get its "default" one.
                if profiles.contains_key("default") {
                    set("ra", &["default_profile"], "default".into());
                }
            }
            "keyalgorithm" => {
                let algorithm = string()?.to_ascii_lowercase();
                if algorithm != "rsa" && algorithm != "ecdsa" {
                    bail!("keyAlgorithm {algorithm:?}: Pebble takes \"rsa\" or \"ecdsa\"");
                }
                // Quarry's leaves are signed by the intermediate of their own key type (as production does); Pebble's
                // CA keys are all of one type, so every leaf gets the intermediate of that type.
                set("ca", &["client_testing", "issuer_key_type"], algorithm.into());
            }
            other => bail!("unknown field pebble.{other}: quarry dev has no equivalent"),
        }
    }
    match (certificate, private_key) {
        (Some(cert), Some(key)) => config.https = Some((cert, key)),
        (None, None) => {}
        _ => bail!("certificate and privateKey go together"),
    }
    config.notes = notes;
    Ok(config)
}

/// Pebble's validity when a profile gives none: 90 days.
const PEBBLE_DEFAULT_VALIDITY_SECS: u64 = 7_776_000;

/// One Pebble profile as Quarry's three services hold a profile: the ca's certificate profile (its validity, a
/// common name as Pebble writes one), the ra's validation profile (the lifetimes of Quarry's `classic`, DNS names and
/// IP addresses as Pebble takes both) and the directory's description. Each entry: (service, key path, value).
fn map_profile(
    name: &str,
    profile: &serde_json::Map<String, Value>,
) -> anyhow::Result<Vec<(&'static str, Vec<String>, toml::Value)>> {
    let (mut description, mut validity) = (String::new(), PEBBLE_DEFAULT_VALIDITY_SECS);
    for (key, value) in fields(profile) {
        match key.as_str() {
            "description" => {
                description = value.as_str().with_context(|| format!("profiles.{name}.description"))?.to_owned()
            }
            "validityperiod" => {
                validity = value.as_u64().with_context(|| format!("profiles.{name}.validityPeriod is not seconds"))?;
                if validity == 0 {
                    validity = PEBBLE_DEFAULT_VALIDITY_SECS;
                }
            }
            other => bail!("unknown field profiles.{name}.{other}: quarry dev has no equivalent"),
        }
    }
    let int = |value: u64| toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX));
    let path = |keys: &[&str]| keys.iter().map(|key| (*key).to_owned()).collect::<Vec<_>>();
    Ok(vec![
        ("ca", path(&["profiles", name, "validity_secs"]), int(validity)),
        ("ca", path(&["profiles", name, "include_common_name"]), true.into()),
        ("ra", path(&["profiles", name, "pending_authorization_lifetime_secs"]), int(7 * 86_400)),
        ("ra", path(&["profiles", name, "valid_authorization_lifetime_secs"]), int(30 * 86_400)),
        ("ra", path(&["profiles", name, "order_lifetime_secs"]), int(7 * 86_400)),
        ("ra", path(&["profiles", name, "max_names"]), int(100)),
        ("ra", path(&["profiles", name, "identifier_types"]), toml::Value::Array(vec!["dns".into(), "ip".into()])),
        ("wfe", path(&["directory_meta", "profiles", name]), description.into()),
    ])
}

/// A Go listen address: `host:port`, `:port` for every interface.
fn address(text: &str) -> anyhow::Result<SocketAddr> {
    let text = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    let text = text.replacen("localhost:", "127.0.0.1:", 1);
    text.parse().with_context(|| format!("{text:?} is not an IP address and port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_example_with_external_account_binding_maps_field_by_field() {
        let config = parse(
            r#"{"pebble": {"listenAddress": "0.0.0.0:14000", "managementListenAddress": "0.0.0.0:15000",
                "certificate": "test/certs/localhost/cert.pem", "privateKey": "test/certs/localhost/key.pem",
                "httpPort": 5002, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": true,
                "externalAccountMACKeys": {"kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"},
                "domainBlocklist": ["blocked-domain.example"], "retryAfter": {"authz": 3, "order": 5},
                "caaIdentities": ["pebble.letsencrypt.org"], "keyAlgorithm": "RSA"}}"#,
        )
        .unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:14000".parse().unwrap()));
        assert_eq!(config.management, Some("0.0.0.0:15000".parse().unwrap()));
        assert_eq!(config.https.unwrap().0, PathBuf::from("test/certs/localhost/cert.pem"));
        assert_eq!((config.http_port, config.tls_port), (Some(5002), Some(5001)));
        assert!(config.notes.is_empty());
        let wfe = toml::Value::Table(config.overlays["wfe"].clone());
        assert_eq!(wfe["external_account_binding"]["required"].as_bool(), Some(true));
        assert_eq!(wfe["external_account_binding"]["reuse"].as_bool(), Some(true));
        assert!(wfe["external_account_binding"]["keys"]["kid-1"].as_str().unwrap().starts_with("zWND"));
        assert_eq!(wfe["retry_after_secs"].as_integer(), Some(5));
        assert_eq!(wfe["authz_retry_after_secs"].as_integer(), Some(3));
        assert_eq!(wfe["client_testing"]["directory_aliases"][0].as_str(), Some("/dir"));
        assert_eq!(wfe["directory_meta"]["caa_identities"][0].as_str(), Some("pebble.letsencrypt.org"));
        assert_eq!(config.overlays["ra"]["blocklists"]["admin"][0].as_str(), Some("blocked-domain.example"));
        assert_eq!(config.overlays["va"]["caa_identities"][0].as_str(), Some("pebble.letsencrypt.org"));
        assert_eq!(config.overlays["ca"]["client_testing"]["issuer_key_type"].as_str(), Some("rsa"));
    }

    #[test]
    fn pebbles_profiles_become_quarrys_in_the_ca_ra_and_directory() {
        let config = parse(
            r#"{"pebble": {"profiles": {"default": {"description": "The profile you know and trust",
                "validityPeriod": 7776000}, "shortlived": {"description": "A short-lived cert profile",
                "validityPeriod": 518400}}}}"#,
        )
        .unwrap();
        let ca = toml::Value::Table(config.overlays["ca"].clone());
        assert_eq!(ca["profiles"]["default"]["validity_secs"].as_integer(), Some(7_776_000));
        assert_eq!(ca["profiles"]["shortlived"]["validity_secs"].as_integer(), Some(518_400));
        let ra = toml::Value::Table(config.overlays["ra"].clone());
        assert_eq!(ra["default_profile"].as_str(), Some("default"));
        assert_eq!(ra["profiles"]["shortlived"]["max_names"].as_integer(), Some(100));
        let wfe = toml::Value::Table(config.overlays["wfe"].clone());
        assert_eq!(wfe["directory_meta"]["profiles"]["shortlived"].as_str(), Some("A short-lived cert profile"));
    }

    #[test]
    fn keys_match_whatever_their_case_and_go_addresses_are_read() {
        let config =
            parse(r#"{"Pebble": {"LISTENADDRESS": ":14000", "managementlistenaddress": "localhost:15000"}}"#).unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:14000".parse().unwrap()));
        assert_eq!(config.management, Some("127.0.0.1:15000".parse().unwrap()));
    }

    #[test]
    fn fields_without_an_equivalent_are_refused_or_noted_never_dropped() {
        let note =
            parse(r#"{"pebble": {"ocspResponderURL": "test", "certificateValidityPeriod": 157766400}}"#).unwrap();
        assert_eq!(note.notes.len(), 2, "{:?}", note.notes);
        for (field, named) in [
            (r#""profiles": {"default": {"description": "x", "color": "blue"}}"#, "profiles.default.color"),
            (r#""keyAlgorithm": "dsa""#, "keyAlgorithm"),
            (r#""somethingNew": 1"#, "somethingnew"),
            (r#""retryAfter": {"cert": 1}"#, "retryAfter.cert"),
            (r#""certificate": "c.pem""#, "privateKey"),
            (r#""httpPort": 70000"#, "httpPort"),
        ] {
            let err = parse(&format!(r#"{{"pebble": {{{field}}}}}"#)).unwrap_err();
            assert!(format!("{err:#}").contains(named), "{field}: {err:#}");
        }
        assert!(parse(r#"{"pebble": {}, "other": {}}"#).is_err());
    }
}
