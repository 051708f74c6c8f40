//! What the probe tells others: the JSON report a promotion script reads (`--report-json`), the Prometheus text
//! (`--metrics-file`, `--push-gateway`), and the build the server under test says it runs (the wfe's `/healthz`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use quarry_acme_client::AcmeClient;
use serde::Serialize;

/// The Pushgateway job every probe pushes under; the environment is the rest of the grouping key.
const PUSH_JOB: &str = "quarry-probe";

/// One probe run, as `--report-json` writes it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub environment: Option<String>,
    /// The ACME directory URL probed.
    pub directory: String,
    /// The build the server under test reports; `None` when it does not say.
    pub version: Option<String>,
    pub commit: Option<String>,
    /// The image digest the deployment says it runs (`--image-digest`).
    pub image_digest: Option<String>,
    /// The account the probe used (the same every run with `--account-key`).
    pub account: Option<String>,
    pub passed: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub name: String,
    pub seconds: f64,
    pub error: Option<String>,
}

/// The build a server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBuild {
    pub version: String,
    pub commit: String,
}

/// The build the wfe serving `directory_url` reports at `/healthz` of the same origin (answered when unhealthy too);
/// `None`, with a warning, when it does not say: an older or another server is probed all the same.
pub async fn server_build(http: &AcmeClient, directory_url: &str) -> Option<ServerBuild> {
    let found = async {
        let uri: http::Uri = directory_url.parse().context("the directory URL does not parse")?;
        let (scheme, authority) = uri.scheme_str().zip(uri.authority()).context("the directory URL is not absolute")?;
        let url = format!("{scheme}://{authority}/healthz");
        let response = super::plain_http::request(http, http::Method::GET, &url, None, Vec::new()).await?;
        let health = response.json();
        let field = |name: &str| health[name].as_str().map(str::to_owned);
        match (field("version"), field("commit")) {
            (Some(version), Some(commit)) => Ok(ServerBuild { version, commit }),
            _ => Err(anyhow!("{url} (HTTP {}) names no version and commit", response.status)),
        }
    };
    match found.await {
        Ok(build) => Some(build),
        Err(err) => {
            eprintln!("warning: the server's build is unknown: {err:#}");
            None
        }
    }
}

impl Report {
    /// The results in Prometheus' text format; every series carries the environment's label when there is one.
    pub fn prometheus(&self, took: Duration) -> String {
        let labels = |extra: &[(&str, &str)]| {
            let environment = self.environment.as_deref().map(|name| ("environment", name));
            let pairs: Vec<String> = environment
                .iter()
                .chain(extra)
                .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
                .collect();
            if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
        };
        let mut text = String::new();
        let mut gauge = |name: &str, help: &str, series: Vec<(String, f64)>| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in series {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let per_step = |value: fn(&StepReport) -> f64| -> Vec<(String, f64)> {
            self.steps.iter().map(|step| (labels(&[("step", &step.name)]), value(step))).collect()
        };
        gauge("quarry_probe_step_seconds", "How long each step of the last probe took.", per_step(|s| s.seconds));
        gauge(
            "quarry_probe_step_success",
            "Whether each step of the last probe succeeded.",
            per_step(|s| f64::from(u8::from(s.error.is_none()))),
        );
        gauge(
            "quarry_probe_success",
            "Whether the last probe issued and revoked a certificate.",
            vec![(labels(&[]), f64::from(u8::from(self.passed)))],
        );
        gauge(
            "quarry_probe_duration_seconds",
            "How long the last probe took.",
            vec![(labels(&[]), took.as_secs_f64())],
        );
        let build = [
            ("version", self.version.as_deref().unwrap_or_default()),
            ("commit", self.commit.as_deref().unwrap_or_default()),
            ("image_digest", self.image_digest.as_deref().unwrap_or_default()),
        ];
        gauge(
            "quarry_probe_build_info",
            "The build the probed server reports (empty when it does not say) and the image digest it is deployed as.",
            vec![(labels(&build), 1.0)],
        );
        text
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// PUTs `text` to the Pushgateway at `gateway`, replacing this job's and environment's last push.
pub async fn push(http: &AcmeClient, gateway: &str, environment: Option<&str>, text: &str) -> anyhow::Result<()> {
    // The environment was checked to be a URL path segment; "unknown" keeps probes without one in a group of their own.
    let url = format!(
        "{}/metrics/job/{PUSH_JOB}/environment/{}",
        gateway.trim_end_matches('/'),
        environment.unwrap_or("unknown")
    );
    let content_type = Some("text/plain; version=0.0.4; charset=utf-8");
    let response =
        super::plain_http::request(http, http::Method::PUT, &url, content_type, text.as_bytes().to_vec()).await?;
    if !(200..300).contains(&response.status) {
        bail!("PUT {url} answered {}: {}", response.status, String::from_utf8_lossy(&response.body).trim());
    }
    Ok(())
}

/// `--environment`: a name fit for a metric label and a URL path segment.
pub fn parse_environment(name: &str) -> Result<String, String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 63 || !name.chars().all(fits) || name.starts_with('.') {
        return Err("an environment name is 1 to 63 letters, digits, '.', '_' or '-', not starting with '.'".into());
    }
    Ok(name.to_owned())
}

/// `--image-digest`: an OCI content digest, `sha256:` and 64 lowercase hex digits.
pub fn parse_image_digest(digest: &str) -> Result<String, String> {
    let hex = digest.strip_prefix("sha256:").ok_or("an image digest starts with sha256:")?;
    if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err("an image digest is sha256: and 64 lowercase hex digits".into());
    }
    Ok(digest.to_owned())
}

/// A time as the report writes it: RFC 3339 in UTC.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(environment: Option<&str>) -> Report {
        Report {
            environment: environment.map(str::to_owned),
            directory: "https://acme.example/directory".to_owned(),
            version: Some("1.2.3".to_owned()),
            commit: None,
            image_digest: Some(format!("sha256:{}", "ab".repeat(32))),
            account: None,
            passed: false,
            started_at: "2026-01-01T00:00:00Z".to_owned(),
            finished_at: "2026-01-01T00:00:01Z".to_owned(),
            steps: vec![
                StepReport { name: "directory".to_owned(), seconds: 0.5, error: None },
                StepReport { name: "new-account".to_owned(), seconds: 0.25, error: Some("HTTP 500".to_owned()) },
            ],
        }
    }

    #[test]
    fn every_series_carries_the_environment_and_the_info_metric_the_build() {
        let text = report(Some("staging")).prometheus(Duration::from_millis(750));
        for line in [
            "quarry_probe_step_seconds{environment=\"staging\",step=\"directory\"} 0.5",
            "quarry_probe_step_success{environment=\"staging\",step=\"new-account\"} 0",
            "quarry_probe_success{environment=\"staging\"} 0",
            "quarry_probe_duration_seconds{environment=\"staging\"} 0.75",
            &format!(
                "quarry_probe_build_info{{environment=\"staging\",version=\"1.2.3\",commit=\"\",image_digest=\"sha256:{}\"}} 1",
                "ab".repeat(32)
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let without = report(None).prometheus(Duration::ZERO);
        assert!(without.lines().any(|l| l == "quarry_probe_success 0"), "{without}");
        assert!(without.lines().any(|l| l == "quarry_probe_step_success{step=\"directory\"} 1"), "{without}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_report_has_the_promised_shape() {
        let json = serde_json::to_value(report(Some("staging"))).expect("serialize");
        let mut keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let expected = [
            "account",
            "commit",
            "directory",
            "environment",
            "finished_at",
            "image_digest",
            "passed",
            "started_at",
            "steps",
            "version",
        ];
        assert_eq!(keys, expected);
        assert_eq!(json["commit"], serde_json::Value::Null);
        assert_eq!(
            json["steps"][1],
            serde_json::json!({ "name": "new-account", "seconds": 0.25, "error": "HTTP 500" })
        );
    }

    #[test]
    fn environment_names_and_digests_are_checked() {
        for good in ["staging", "prod-eu.1", "a_b"] {
            assert_eq!(parse_environment(good).as_deref(), Ok(good));
        }
        for bad in ["", "a/b", "a b", "..", &"x".repeat(64), "é"] {
            assert!(parse_environment(bad).is_err(), "{bad:?}");
        }
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(parse_image_digest(&good), Ok(good.clone()));
        for bad in [
            "0123".to_owned(),
            format!("sha512:{}", "0".repeat(64)),
            format!("sha256:{}", "0".repeat(63)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}g", "0".repeat(63)),
        ] {
            assert!(parse_image_digest(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = time::macros::datetime!(2026-03-04 05:06:07.5 +02:00);
        assert_eq!(rfc3339(at), "2026-03-04T03:06:07.5Z");
    }
}
