//! The primary's side of multi-perspective validation: ask every remote va in parallel, and let the quorum decide,
//! stopping as soon as the outcome is certain.

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use quarry_core::config::{GrpcClientConfig, TlsFiles};
use quarry_core::lane::Lane;
use quarry_core::peer::Peer;
use quarry_core::{ErrorKind, Problem};
use quarry_proto::client::VaClient;
use quarry_proto::va::ValidationResult;
use serde::Deserialize;

use crate::Error;
use crate::quorum::{RemoteOutcome, Tally, Verdict};

/// One remote perspective, as the primary knows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Where the remote va listens, and its mutual-TLS name.
    #[serde(flatten)]
    pub grpc: GrpcClientConfig,
    /// The perspective name the remote must answer with.
    pub perspective: String,
    /// The regional Internet registry the remote runs in (ARIN, RIPE, APNIC, LACNIC, AFRINIC).
    pub rir: String,
}

/// A remote va client and what it must say it is.
#[derive(Clone)]
pub struct RemoteVa {
    client: VaClient,
    perspective: String,
    rir: String,
}

impl RemoteVa {
    pub fn connect(config: &RemoteConfig, tls: &TlsFiles, lane: &Lane) -> Result<Self, Error> {
        Ok(Self {
            client: VaClient::new(Peer::in_lane(&config.grpc, tls, lane)?),
            perspective: config.perspective.clone(),
            rir: config.rir.clone(),
        })
    }

    /// The remote's answer as the quorum counts it: an RPC failure, or an answer from a perspective other than the
    /// one configured, is a failure.
    fn outcome(&self, reply: Result<ValidationResult, Problem>) -> RemoteOutcome {
        let problem = match reply {
            Err(failure) => {
                tracing::warn!(perspective = %self.perspective, %failure, "remote va call failed");
                Some(Problem::new(ErrorKind::ServerInternal, format!("remote perspective {} failed", self.perspective)))
            }
            Ok(result) => {
                if result.perspective != self.perspective || result.rir != self.rir {
                    Some(Problem::new(
                        ErrorKind::ServerInternal,
                        format!(
                            "remote perspective {} ({}) answered as {} ({})",
                            self.perspective, self.rir, result.perspective, result.rir
                        ),
                    ))
                } else {
                    result.problem.as_ref().map(Problem::from)
                }
            }
        };
        RemoteOutcome { rir: self.rir.clone(), problem }
    }
}

/// Asks every remote with `call` in parallel; `None` when the quorum passes, the problem to report otherwise.
/// Answers still outstanding once the verdict is certain are abandoned.
pub async fn corroborate<F, Fut>(remotes: &[RemoteVa], deadline: Option<Instant>, call: F) -> Option<Problem>
where
    F: Fn(VaClient, Option<Instant>) -> Fut,
    Fut: Future<Output = Result<ValidationResult, Problem>>,
{
    let mut tally = Tally::new(remotes.iter().map(|r| r.rir.clone()));
    let mut pending: FuturesUnordered<_> = remotes
        .iter()
        .map(|remote| {
            let reply = call(remote.client.clone(), deadline);
            async move { remote.outcome(reply.await) }
        })
        .collect();
    while let Some(outcome) = pending.next().await {
        match tally.record(outcome) {
            Verdict::Undecided => continue,
            Verdict::Pass => return None,
            Verdict::Fail(problem) => return Some(problem),
        }
    }
    Some(Problem::internal("During secondary validation: the remote perspectives gave no verdict"))
}
