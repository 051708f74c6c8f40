//! Certificates a ca signed but could not store — it died, or the sa was away, in the moment between — found in
//! its audit log, where the ca writes each final certificate before storing it (Boulder's orphan finder does the
//! same from its ca's logs). `quarry admin adopt-orphans` stores those the database lacks.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;

/// A final certificate as the ca's `final-signed` audit line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub serial: String,
    pub account_id: i64,
    pub issuer_id: i64,
    pub issued: i64,
    pub der: Vec<u8>,
}

/// The certificate of a `final-signed` audit line, in the JSON format of deployed services or the human one of
/// `quarry dev`; `None` for any other line.
pub fn parse_line(line: &str) -> Option<Orphan> {
    if !line.contains("final-signed") {
        return None;
    }
    let field = |name: &str| -> Option<String> {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
            let value = json.get("fields").and_then(|f| f.get(name)).or_else(|| json.get(name))?;
            return Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned));
        }
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = &line[start..];
        let value = match rest.strip_prefix('"') {
            Some(quoted) => &quoted[..quoted.find('"')?],
            None => rest.split_whitespace().next()?,
        };
        Some(value.to_owned())
    };
    if field("event")? != "final-signed" {
        return None;
    }
    Some(Orphan {
        serial: field("serial")?,
        account_id: field("account_id")?.parse().ok()?,
        issuer_id: field("issuer_id")?.parse().ok()?,
        issued: field("issued")?.parse().ok()?,
        der: base64::engine::general_purpose::STANDARD.decode(field("der")?).ok()?,
    })
}

/// Every final certificate the logs at `paths` say was signed, in order.
pub fn signed_in(paths: &[impl AsRef<Path>]) -> anyhow::Result<Vec<Orphan>> {
    let mut found = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        found.extend(text.lines().filter_map(parse_line));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_signed_lines_parse_in_both_log_formats() {
        let der = base64::engine::general_purpose::STANDARD.encode(b"certificate");
        let human = format!(
            "2026-12-04T10:00:00Z  INFO grpc{{rpc=/quarry.ca.v1.CertificateAuthority/IssueCertificate}}: audit: final certificate signed event=\"final-signed\" serial=\"01ab\" order_id=7 account_id=3 issuer_id=42 issued=1796000000 der={der}"
        );
        let json = serde_json::json!({
            "timestamp": "2026-12-04T10:00:00Z",
            "level": "INFO",
            "fields": { "message": "final certificate signed", "event": "final-signed", "serial": "01ab",
                        "order_id": 7, "account_id": 3, "issuer_id": 42, "issued": 1796000000, "der": der },
            "target": "audit"
        })
        .to_string();
        let expected = Orphan {
            serial: "01ab".into(),
            account_id: 3,
            issuer_id: 42,
            issued: 1_796_000_000,
            der: b"certificate".to_vec(),
        };
        assert_eq!(parse_line(&human), Some(expected.clone()));
        assert_eq!(parse_line(&json), Some(expected));
        assert_eq!(parse_line("INFO audit: issued certificate event=\"certificate-signed\" serial=\"01ab\""), None);
        assert_eq!(parse_line(&human.replace("der=", "nothing=")), None);
    }
}
