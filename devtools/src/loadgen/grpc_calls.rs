//! gRPC calls per certificate, counted by the services themselves: every replica's
//! `quarry_grpc_server_requests_total` read from its metrics listener before and after the load, summed by RPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::session::bounded;

/// The counter every gRPC server keeps per call (`core::grpc`), labelled by `rpc` and `code`.
const SERVER_CALLS: &str = "quarry_grpc_server_requests_total";

/// Calls served so far, by RPC path (`/quarry.sa.v1.StorageAuthority/GetAccount`), summed over replicas and codes.
pub(super) type CallCounts = BTreeMap<String, f64>;

/// Reads every replica's counters.
pub(super) async fn read(
    http: &quarry_core::http_client::HttpClient,
    replicas: &[(String, SocketAddr)],
) -> anyhow::Result<CallCounts> {
    let mut counts = CallCounts::new();
    for (name, addr) in replicas {
        let url = format!("http://{addr}/metrics");
        let request = http::Request::get(&url).body(Full::new(Bytes::new()))?;
        let fetch = async { anyhow::Ok(http.request(request).await?.into_body().collect().await?.to_bytes()) };
        let body = bounded(fetch).await.with_context(|| format!("GET {url} ({name})"))?;
        add_server_calls(&String::from_utf8_lossy(&body), &mut counts);
    }
    Ok(counts)
}

/// Adds the server-call counters of one Prometheus text exposition to `counts`.
fn add_server_calls(exposition: &str, counts: &mut CallCounts) {
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(SERVER_CALLS) else { continue };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|rest| rest.split_once('}')) else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let rpc = labels.split(',').find_map(|label| label.strip_prefix("rpc=\"")?.strip_suffix('"'));
        if let Some(rpc) = rpc {
            *counts.entry(rpc.to_owned()).or_default() += value;
        }
    }
}

/// The calls made between two readings, by RPC, most frequent first.
pub(super) fn made_between(before: &CallCounts, after: &CallCounts) -> Vec<(String, f64)> {
    let mut made: Vec<(String, f64)> = after
        .iter()
        .map(|(rpc, count)| (rpc.clone(), count - before.get(rpc).copied().unwrap_or_default()))
        .filter(|(_, count)| *count > 0.0)
        .collect();
    made.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_calls_are_summed_by_rpc_over_codes_and_expositions() {
        let exposition = "# TYPE quarry_grpc_server_requests_total counter\n\
            quarry_grpc_server_requests_total{rpc=\"/quarry.sa.v1.StorageAuthority/GetAccount\",code=\"Ok\"} 7\n\
            quarry_grpc_server_requests_total{rpc=\"/quarry.sa.v1.StorageAuthority/GetAccount\",code=\"NotFound\"} 2\n\
            quarry_grpc_client_requests_total{rpc=\"/quarry.sa.v1.StorageAuthority/GetAccount\",code=\"Ok\"} 100\n\
            quarry_grpc_server_requests_total{code=\"Ok\",rpc=\"/quarry.nonce.v1.NonceService/Redeem\"} 3\n";
        let mut before = CallCounts::new();
        add_server_calls(exposition, &mut before);
        assert_eq!(before["/quarry.sa.v1.StorageAuthority/GetAccount"], 9.0);
        let mut after = before.clone();
        add_server_calls(exposition, &mut after);
        assert_eq!(
            made_between(&before, &after),
            vec![
                ("/quarry.sa.v1.StorageAuthority/GetAccount".to_owned(), 9.0),
                ("/quarry.nonce.v1.NonceService/Redeem".to_owned(), 3.0),
            ]
        );
    }
}
