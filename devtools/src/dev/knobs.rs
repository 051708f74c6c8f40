//! Pebble's client-testing knobs for `quarry dev`: each `PEBBLE_*` environment variable (with Pebble's name and
//! meaning) and each of Quarry's own provocations is a flag, rendered into the `[client_testing]` table of the
//! service that acts on it — except the orders list's page size, a production setting of the wfe that the knob only
//! changes. None is on unless asked for: `quarry dev` without them behaves as production does.

use std::collections::BTreeMap;

use quarry_ceremony::chains::{MAX_ALTERNATE_ROOTS, MAX_CHAIN_LENGTH};

/// The knobs, as flags or Pebble's environment variables.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Knobs {
    /// Pebble's `PEBBLE_VA_NOSLEEP`: no validation sleep (the default here; it overrides `--va-sleeptime`).
    #[arg(long, env = "PEBBLE_VA_NOSLEEP", value_parser = pebble_flag, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub va_nosleep: bool,
    /// Pebble's `PEBBLE_VA_SLEEPTIME`: before each validation the va waits a random whole number of seconds below
    /// this one (Pebble sleeps up to 5 by default; Quarry only when asked).
    #[arg(long, env = "PEBBLE_VA_SLEEPTIME")]
    pub va_sleeptime: Option<u64>,
    /// Pebble's `PEBBLE_VA_ALWAYS_VALID`: every validation passes without contacting anything.
    #[arg(long, env = "PEBBLE_VA_ALWAYS_VALID", value_parser = pebble_flag, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub va_always_valid: bool,
    /// Pebble's `PEBBLE_WFE_NONCEREJECT`: the percentage of good nonces refused as `badNonce` (above 100: 99, as
    /// Pebble clips it). A request retried after a refusal is never refused again at once.
    #[arg(long, env = "PEBBLE_WFE_NONCEREJECT")]
    pub wfe_nonce_reject: Option<u64>,
    /// Pebble's `PEBBLE_AUTHZREUSE`: the percentage of an account's valid authorizations a new order reuses
    /// (default: all of them, as production does).
    #[arg(long, env = "PEBBLE_AUTHZREUSE", value_parser = ranged::<0, 100>("PEBBLE_AUTHZREUSE"))]
    pub authz_reuse: Option<u8>,
    /// Pebble's `PEBBLE_WFE_ORDERS_PER_PAGE`: how many order URLs a page of an account's orders list holds (1 to
    /// 1000; Pebble's default is 3, Quarry's production's 100).
    #[arg(long, env = "PEBBLE_WFE_ORDERS_PER_PAGE", value_parser = orders_per_page)]
    pub orders_per_page: Option<u32>,
    /// Pebble's `PEBBLE_CHAIN_LENGTH`: how many intermediates stand between a root and a leaf in the chains served
    /// (1 to 8; default 1, the dev hierarchy's own). Longer chains certify E1 and R1 again below upper
    /// intermediates under a root of their own.
    #[arg(long, env = "PEBBLE_CHAIN_LENGTH", value_parser = ranged::<1, MAX_CHAIN_LENGTH>("PEBBLE_CHAIN_LENGTH"))]
    pub chain_length: Option<u8>,
    /// Pebble's `PEBBLE_ALTERNATE_ROOTS`: how many more chains, each to a root of its own, a certificate is also
    /// served with (`Link: rel="alternate"`; 0 to 8, default 0).
    #[arg(long, env = "PEBBLE_ALTERNATE_ROOTS", value_parser = ranged::<0, MAX_ALTERNATE_ROOTS>("PEBBLE_ALTERNATE_ROOTS"))]
    pub alternate_roots: Option<u8>,
    /// The percentage of POSTs answered `serverInternal` (500) at once, nothing done (Quarry's own knob).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub server_internal_percent: Option<u8>,
    /// The percentage of POSTs answered `rateLimited` (429, `Retry-After: 1`) at once, nothing done.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rate_limited_percent: Option<u8>,
    /// Keep every finalized order `processing` this many seconds before issuing it.
    #[arg(long)]
    pub finalize_delay_secs: Option<u64>,
    /// Every certificate's ACME renewal window is open now.
    #[arg(long)]
    pub renew_now: bool,
}

/// A number from `MIN` to `MAX`; the message names Pebble's variable, which is where a suite usually sets it.
fn ranged<const MIN: u8, const MAX: u8>(variable: &'static str) -> impl Fn(&str) -> Result<u8, String> + Clone {
    move |value| {
        value
            .parse::<u8>()
            .ok()
            .filter(|number| (MIN..=MAX).contains(number))
            .ok_or_else(|| format!("{variable} (or its flag) is {value:?}: Quarry takes {MIN} to {MAX}"))
    }
}

/// A page size for the wfe's `orders_per_page`. Pebble reads 0 or less as its default of 3, and Quarry's default
/// is production's (100), so a 0 says neither plainly: it is refused, naming the variable, as is a size above what
/// the sa reads for one page.
fn orders_per_page(value: &str) -> Result<u32, String> {
    let most = quarry_core::model::MAX_ORDER_PAGE;
    value.parse::<u32>().ok().filter(|size| (1..=most).contains(&i64::from(*size))).ok_or_else(|| {
        format!(
            "PEBBLE_WFE_ORDERS_PER_PAGE (or --orders-per-page) is {value:?}: Quarry takes 1 to {most} orders per \
             page (unset, the wfe's own default of 100; Pebble's default is 3)"
        )
    })
}

/// Pebble's reading of a boolean variable: `1`, `true`, `True` or `TRUE` is on, anything else off.
fn pebble_flag(value: &str) -> Result<bool, String> {
    Ok(matches!(value, "1" | "true" | "True" | "TRUE"))
}

/// What to layer over each service's rendered configuration, by service (`va` is the primary perspective only).
pub type ServiceOverlays = BTreeMap<&'static str, toml::Table>;

/// Layers `more` over `overlays`, table by table.
pub fn add_overlays(overlays: &mut ServiceOverlays, more: ServiceOverlays) {
    for (service, table) in more {
        quarry_core::config::merge(overlays.entry(service).or_default(), &table);
    }
}

/// Sets the key at `path` (the tables on the way made as needed) to `value` in `service`'s overlay.
pub fn set_key(overlays: &mut ServiceOverlays, service: &'static str, path: &[&str], value: toml::Value) {
    let Some((last, tables)) = path.split_last() else { return };
    let mut table = overlays.entry(service).or_default();
    for segment in tables {
        let entry = table.entry(*segment).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(inner) = entry else { unreachable!("made a table just above") };
        table = inner;
    }
    table.insert((*last).to_owned(), value);
}

/// What the management API needs of the services: the sa takes renewal-information answers
/// (`POST /set-renewal-info/`) and every wfe replica serves them, read from the sa. Only with the API on, so that
/// `quarry dev` without it keeps production's behaviour (no wfe reads overrides on each renewal-info request).
pub fn management_overlays() -> ServiceOverlays {
    let mut overlays = ServiceOverlays::new();
    for service in ["sa", "wfe"] {
        let path = [quarry_core::testing::SECTION, "renewal_info_overrides"];
        set_key(&mut overlays, service, &path, toml::Value::Boolean(true));
    }
    overlays
}

impl Knobs {
    /// The chains to serve: intermediates per chain, and roots besides the first.
    pub fn chain_shape(&self) -> (u8, u8) {
        (self.chain_length.unwrap_or(1), self.alternate_roots.unwrap_or(0))
    }

    /// What to render over each service's configuration: its `[client_testing]` table, and the wfe's page size. A
    /// knob that cannot be honoured was refused when the flags were parsed.
    pub fn overlays(&self) -> ServiceOverlays {
        let mut tables = ServiceOverlays::new();
        let mut set = |service: &'static str, key: &str, value: toml::Value| {
            set_key(&mut tables, service, &[quarry_core::testing::SECTION, key], value);
        };
        let int = |value: u64| toml::Value::Integer(i64::try_from(value).unwrap_or(i64::MAX));
        if let Some(percent) = self.wfe_nonce_reject.filter(|percent| *percent > 0) {
            // Pebble reads a percentage over 100 as 99.
            set("wfe", "nonce_reject_percent", int(if percent > 100 { 99 } else { percent }));
        }
        if let Some(percent) = self.server_internal_percent.filter(|percent| *percent > 0) {
            set("wfe", "server_internal_percent", int(percent.into()));
        }
        if let Some(percent) = self.rate_limited_percent.filter(|percent| *percent > 0) {
            set("wfe", "rate_limited_percent", int(percent.into()));
        }
        if self.renew_now {
            set("wfe", "renew_now", toml::Value::Boolean(true));
        }
        if let Some(seconds) = self.va_sleeptime.filter(|seconds| *seconds > 0 && !self.va_nosleep) {
            set("va", "sleep_max_secs", int(seconds));
        }
        if self.va_always_valid {
            set("va", "always_valid", toml::Value::Boolean(true));
        }
        if let Some(percent) = self.authz_reuse {
            set("ra", "authz_reuse_percent", int(percent.into()));
        }
        if let Some(seconds) = self.finalize_delay_secs.filter(|seconds| *seconds > 0) {
            set("ra", "finalize_delay_secs", int(seconds));
        }
        // Not a provocation: the wfe's own setting, which production has too, outside `[client_testing]`.
        if let Some(per_page) = self.orders_per_page {
            set_key(&mut tables, "wfe", &["orders_per_page"], int(per_page.into()));
        }
        tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args as _, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        knobs: Knobs,
    }

    fn tables(args: &[&str]) -> anyhow::Result<ServiceOverlays> {
        Ok(Cli::try_parse_from(std::iter::once("quarry").chain(args.iter().copied()))?.knobs.overlays())
    }

    #[test]
    fn no_knob_renders_nothing() {
        assert!(Knobs::default().overlays().is_empty());
    }

    #[test]
    fn each_knob_reaches_its_service() {
        let rendered = tables(&[
            "--wfe-nonce-reject=150",
            "--va-sleeptime=5",
            "--va-always-valid",
            "--authz-reuse=50",
            "--server-internal-percent=3",
            "--rate-limited-percent=4",
            "--finalize-delay-secs=2",
            "--renew-now",
        ])
        .unwrap();
        let text = |service: &str| rendered[service]["client_testing"].as_table().expect("a table").to_string();
        assert_eq!(
            text("wfe"),
            "nonce_reject_percent = 99\nrate_limited_percent = 4\nrenew_now = true\nserver_internal_percent = 3\n"
        );
        assert_eq!(text("va"), "always_valid = true\nsleep_max_secs = 5\n");
        assert_eq!(text("ra"), "authz_reuse_percent = 50\nfinalize_delay_secs = 2\n");
        // Pebble's NOSLEEP wins over a sleep time; its flags read 1/true/True/TRUE as on, anything else as off.
        assert!(!tables(&["--va-sleeptime=5", "--va-nosleep"]).unwrap().contains_key("va"));
        assert!(!tables(&["--va-always-valid=yes"]).unwrap().contains_key("va"));
        assert!(tables(&["--va-always-valid=TRUE"]).unwrap().contains_key("va"));
    }

    #[test]
    fn the_management_api_turns_renewal_info_overrides_on_beside_the_knobs() {
        let mut overlays = tables(&["--renew-now"]).unwrap();
        add_overlays(&mut overlays, management_overlays());
        let text = |service: &str| overlays[service]["client_testing"].as_table().expect("a table").to_string();
        assert_eq!(text("sa"), "renewal_info_overrides = true\n");
        assert_eq!(text("wfe"), "renew_now = true\nrenewal_info_overrides = true\n");
    }

    #[test]
    fn the_orders_page_size_is_the_wfes_own_setting() {
        let rendered = tables(&["--orders-per-page=3", "--renew-now"]).unwrap();
        assert_eq!(rendered["wfe"]["orders_per_page"].as_integer(), Some(3));
        assert_eq!(
            rendered["wfe"]["client_testing"].as_table().expect("a table").to_string(),
            "renew_now = true\n",
            "not a client-testing knob"
        );
        assert_eq!(tables(&["--orders-per-page=1000"]).unwrap()["wfe"].to_string(), "orders_per_page = 1000\n");
        // Pebble would read 0 or less as its default of 3; here it is refused by name, as is more than a page holds.
        for refused in ["0", "-1", "1001", "three"] {
            let err =
                tables(&[&format!("--orders-per-page={refused}")]).err().map(|err| err.to_string()).unwrap_or_default();
            assert!(err.contains("PEBBLE_WFE_ORDERS_PER_PAGE"), "{refused}: {err}");
        }
    }

    #[test]
    fn knobs_that_cannot_be_honoured_are_refused_by_name() {
        assert!(tables(&["--chain-length=3", "--alternate-roots=2"]).unwrap().is_empty(), "chains are not knobs");
        for (flag, variable) in [
            ("--chain-length=0", "PEBBLE_CHAIN_LENGTH"),
            ("--alternate-roots=9", "PEBBLE_ALTERNATE_ROOTS"),
            ("--authz-reuse=101", "PEBBLE_AUTHZREUSE"),
            ("--orders-per-page=0", "PEBBLE_WFE_ORDERS_PER_PAGE"),
        ] {
            let err = tables(&[flag]).err().map(|err| err.to_string()).unwrap_or_default();
            assert!(err.contains(variable), "{flag}: {err}");
        }
    }

    /// `quarry env check` finds knobs in deployments by core's list of their flags: it must name every one.
    #[test]
    fn core_lists_every_knob_flag() {
        let command = Knobs::augment_args(clap::Command::new("knobs"));
        let flags: Vec<String> =
            command.get_arguments().filter_map(|arg| arg.get_long()).map(|long| format!("--{long}")).collect();
        assert_eq!(flags, quarry_core::testing::KNOB_FLAGS);
        for arg in command.get_arguments() {
            if let Some(variable) = arg.get_env() {
                assert!(variable.to_string_lossy().starts_with(quarry_core::testing::KNOB_VARIABLE_PREFIX));
            }
        }
    }
}
