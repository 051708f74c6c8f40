//! `quarry probe` as a hosted environment runs it every few minutes: a persistent account, the JSON report naming
//! the build it tested, the CRL and CT checks, and the metrics pushed to a real Prometheus Pushgateway (Debian's
//! `prometheus-pushgateway`) — all against a real `quarry dev` on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::full_stack::{Stack, http_get, logs};

/// Debian's Pushgateway, which the push test needs (`apt-get install prometheus-pushgateway`).
const PUSHGATEWAY: &str = "/usr/bin/prometheus-pushgateway";

/// A Pushgateway on a loopback port, stopped when dropped.
struct Pushgateway {
    process: std::process::Child,
    url: String,
}

impl Pushgateway {
    fn start() -> Pushgateway {
        assert!(
            Path::new(PUSHGATEWAY).exists(),
            "{PUSHGATEWAY} is missing: install Debian's prometheus-pushgateway package \
             (apt-get install -y prometheus-pushgateway)"
        );
        let port = crate::full_stack::free_port();
        let process = std::process::Command::new(PUSHGATEWAY)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // In memory only: Debian's default persists every test's pushes to one file under /var/lib.
            .arg("--persistence.file=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the pushgateway");
        Pushgateway { process, url: format!("http://127.0.0.1:{port}") }
    }

    /// Waits (at most 15 s) until it answers its readiness check.
    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(2), try_http_get(&format!("{}/-/ready", self.url))).await
            {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "the pushgateway at {} did not start", self.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `GET url` whose failure to connect is an answer, not a panic (a server still starting).
async fn try_http_get(url: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    tokio::net::TcpStream::connect(&authority).await?;
    Ok(http_get(url).await)
}

/// One `quarry probe` run: its exit code and everything it printed.
async fn probe(args: &[&str]) -> (Option<i32>, String) {
    // Run without blocking this test's runtime: the challenge test server the probe programs runs on it.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("probe")
        .args(args)
        .output()
        .await
        .expect("run quarry probe");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), said)
}

fn read_report(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}: {text}", path.display()))
}

/// The version and commit `quarry --version` states: `quarry 0.1.0 (commit 0123456789ab, 2026-01-01)`.
fn binary_build() -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quarry")).arg("--version").output().expect("run");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let rest = text.strip_prefix("quarry ").unwrap_or_else(|| panic!("{text}"));
    let (version, rest) = rest.split_once(" (commit ").unwrap_or_else(|| panic!("{text}"));
    let (commit, _) = rest.split_once(", ").unwrap_or_else(|| panic!("{text}"));
    (version.to_owned(), commit.to_owned())
}

/// The names of the report's steps, each of which must have passed.
fn passed_steps(report: &Value) -> Vec<String> {
    let steps = report["steps"].as_array().unwrap_or_else(|| panic!("no steps: {report}"));
    for step in steps {
        assert!(step["error"].is_null() && step["seconds"].as_f64().is_some(), "{step}");
    }
    steps.iter().map(|step| step["name"].as_str().expect("a step name").to_owned()).collect()
}

/// Two runs with one `--account-key`, as the CronJob runs the prober: the first creates the key (mode 0600) and the
/// account, pushes its metrics to a real Pushgateway and reports the build the server says it runs; the second uses
/// the same account, and, its push failing, exits 69 after writing its report.
#[tokio::test]
async fn the_deployed_prober_keeps_its_account_reports_the_build_and_pushes_its_metrics() {
    let pushgateway = Pushgateway::start();
    let stack = Stack::start().await;
    pushgateway.wait_ready().await;
    let dir = stack.dir.path();
    let key = dir.join("probe-account.pem");
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let stack_file = stack.data_dir().join("stack.json");
    let challtestsrv = format!("http://{}", stack.challtestsrv.management_addr);
    let run = async |report: &Path, metrics: &Path, push_gateway: &str| {
        let args = [
            "--stack",
            stack_file.to_str().expect("utf-8 path"),
            "--challtestsrv",
            &challtestsrv,
            "--environment",
            "test",
            "--image-digest",
            &digest,
            "--account-key",
            key.to_str().expect("utf-8 path"),
            "--report-json",
            report.to_str().expect("utf-8 path"),
            "--metrics-file",
            metrics.to_str().expect("utf-8 path"),
            "--crl-wait-secs",
            "40",
            "--min-scts",
            "2",
            "--push-gateway",
            push_gateway,
        ];
        let started = Instant::now();
        let (code, said) = probe(&args).await;
        println!("probe run took {:.1} s:\n{said}", started.elapsed().as_secs_f64());
        (code, said)
    };
    let (version, commit) = binary_build();

    let (first_report, first_metrics) = (dir.join("first.json"), dir.join("first.prom"));
    let (code, said) = run(&first_report, &first_metrics, &pushgateway.url).await;
    assert_eq!(code, Some(0), "{said}{}", logs(dir));
    let report = read_report(&first_report);
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["environment"], "test");
    assert_eq!(report["directory"].as_str(), Some(stack.directory_url.as_str()));
    assert_eq!(report["version"].as_str(), Some(version.as_str()), "{report}");
    assert_eq!(report["commit"].as_str(), Some(commit.as_str()), "{report}");
    assert_eq!(report["image_digest"].as_str(), Some(digest.as_str()));
    let steps = passed_steps(&report);
    let expected =
        ["directory", "new-account", "new-order", "validation", "finalize", "download", "chain", "ct", "revoke", "crl"];
    assert_eq!(steps, expected, "{report}");
    for stamp in ["started_at", "finished_at"] {
        let text = report[stamp].as_str().unwrap_or_default();
        let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
        assert!(parsed.is_ok(), "{stamp}: {text}");
    }
    let account = report["account"].as_str().expect("the account URL").to_owned();
    assert!(account.starts_with("https://"), "{account}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key).expect("the account key was written").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the account key is private");
    let prometheus = std::fs::read_to_string(&first_metrics).expect("metrics file");
    let info = format!(
        "quarry_probe_build_info{{environment=\"test\",version=\"{version}\",commit=\"{commit}\",image_digest=\"{digest}\"}} 1"
    );
    assert!(prometheus.lines().any(|line| line == info), "{info} not in\n{prometheus}");

    // The Pushgateway holds what was pushed, grouped under the job and the environment.
    let (status, body) = http_get(&format!("{}/metrics", pushgateway.url)).await;
    let pushed = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{pushed}");
    let series = |name: &str| -> Vec<String> {
        pushed.lines().filter(|line| line.starts_with(&format!("{name}{{"))).map(str::to_owned).collect()
    };
    let success = series("quarry_probe_success");
    assert!(
        success.iter().any(|line| line.contains("environment=\"test\"")
            && line.contains("job=\"quarry-probe\"")
            && line.ends_with("} 1")),
        "{success:?} in\n{pushed}"
    );
    let build_info = series("quarry_probe_build_info");
    assert!(
        build_info.iter().any(|line| line.contains(&format!("commit=\"{commit}\""))
            && line.contains(&format!("image_digest=\"{digest}\""))
            && line.contains("environment=\"test\"")),
        "{build_info:?}"
    );
    let crl_step = series("quarry_probe_step_success");
    assert!(crl_step.iter().any(|line| line.contains("step=\"crl\"") && line.ends_with("} 1")), "{crl_step:?}");

    // The second run: the same account; its push goes nowhere, which fails it loudly once its report is written.
    let dead_gateway = format!("http://127.0.0.1:{}", crate::full_stack::free_port());
    let (second_report, second_metrics) = (dir.join("second.json"), dir.join("second.prom"));
    let (code, said) = run(&second_report, &second_metrics, &dead_gateway).await;
    assert_eq!(code, Some(69), "{said}");
    assert!(said.contains("the metrics were not pushed") && said.contains(&dead_gateway), "{said}");
    let report = read_report(&second_report);
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["account"].as_str(), Some(account.as_str()), "the second run reuses the account");
    assert_eq!(passed_steps(&report), expected);
}

/// A probe of a directory where nothing listens fails, exits 1, and still writes its report and metrics, saying it
/// does not know the server's build.
#[tokio::test]
async fn a_probe_of_nothing_reports_its_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (report_path, metrics_path): (PathBuf, PathBuf) = (dir.path().join("report.json"), dir.path().join("p.prom"));
    let directory = format!("http://127.0.0.1:{}/directory", crate::full_stack::free_port());
    let challtestsrv = format!("http://127.0.0.1:{}", crate::full_stack::free_port());
    let args = [
        directory.as_str(),
        "--challtestsrv",
        &challtestsrv,
        "--environment",
        "test",
        "--report-json",
        report_path.to_str().expect("utf-8 path"),
        "--metrics-file",
        metrics_path.to_str().expect("utf-8 path"),
    ];
    let (code, said) = probe(&args).await;
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("FAILED") && said.contains("warning: the server's build is unknown"), "{said}");
    let report = read_report(&report_path);
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(report["directory"].as_str(), Some(directory.as_str()));
    for unknown in ["version", "commit", "image_digest", "account"] {
        assert!(report[unknown].is_null(), "{unknown}: {report}");
    }
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{report}");
    assert_eq!(steps[0]["name"], "directory");
    assert!(steps[0]["error"].as_str().is_some_and(|error| error.contains("connect")), "{report}");
    let prometheus = std::fs::read_to_string(&metrics_path).expect("metrics file");
    assert!(prometheus.contains("quarry_probe_success{environment=\"test\"} 0"), "{prometheus}");

    // Bad flag values are refused before anything runs.
    for (flag, value) in [("--image-digest", "sha256:abc"), ("--environment", "a/b")] {
        let (code, said) = probe(&[directory.as_str(), "--challtestsrv", &challtestsrv, flag, value]).await;
        assert_eq!(code, Some(2), "{flag} {value}: {said}");
    }
}
