//! The ra's shared state, [`Registrar`]: its clients of the sa, va and ca, the configuration its use cases read,
//! the background work that outlives requests (and how it drains at shutdown), and the reads every use case shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_core::Problem;
use quarry_core::lane::Lane;
use quarry_core::model::{Account, Authorization, ChallengeType, Order};
use quarry_core::peer::Peer;
use quarry_core::policy::IdentifierPolicy;
use quarry_proto::client::{CaClient, SaClient, VaClient};
use quarry_proto::core as pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::RateLimits;
use crate::validations::Validations;
use crate::{Config, Error, ValidationProfile};

/// The service state; cheap to clone into background tasks.
#[derive(Clone)]
pub struct Registrar {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) sa: SaClient,
    pub(crate) va: VaClient,
    pub(crate) ca: CaClient,
    pub(crate) profiles: BTreeMap<String, ValidationProfile>,
    pub(crate) default_profile: String,
    pub(crate) allow_non_public_ip: bool,
    pub(crate) challenge_types: Vec<ChallengeType>,
    pub(crate) validation_timeout: Duration,
    pub(crate) finalize_timeout: Duration,
    pub(crate) async_finalize: bool,
    pub(crate) client_testing: crate::ClientTesting,
    pub(crate) account_uri_prefix: String,
    pub(crate) caa_recheck_after: i64,
    pub(crate) limits: RateLimits,
    pub(crate) policy: IdentifierPolicy,
    /// Validations and finalizations that outlive the request that started them.
    pub(crate) background: TaskTracker,
    /// Fired when the grace period for stopping is over: the tasks still running record their failure and end.
    pub(crate) abandon: CancellationToken,
    /// This replica's name in its heartbeats and in the work it owns (random, new at every start).
    pub(crate) instance: String,
    /// Wakes the bad-key revoker when a key was just blocked here.
    pub(crate) bad_key_blocked: tokio::sync::Notify,
    /// The validations under way on this replica, and those it just recorded: a POST for one waits on it.
    pub(crate) validations: Validations,
}

/// How long an abandoned validation or finalization may take to record its failure.
pub(crate) const ABANDON_RECORD_TIME: Duration = Duration::from_secs(5);

impl Registrar {
    pub fn new(config: &Config, challenge_types: Vec<ChallengeType>, limits: RateLimits) -> Result<Self, Error> {
        let lane = Lane::new(config.lane.as_ref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                sa: SaClient::new(Peer::in_lane(&config.sa, &config.tls, &lane)?),
                va: VaClient::new(Peer::in_lane(&config.va, &config.tls, &lane)?),
                ca: CaClient::new(Peer::in_lane(&config.ca, &config.tls, &lane)?),
                profiles: config.profiles.clone(),
                default_profile: config.default_profile.clone(),
                allow_non_public_ip: config.allow_non_public_ip_identifiers,
                challenge_types,
                validation_timeout: Duration::from_millis(config.validation_timeout_ms),
                finalize_timeout: Duration::from_millis(config.finalize_timeout_ms),
                async_finalize: config.async_finalize || config.client_testing.finalize_delay_secs > 0,
                client_testing: config.client_testing.clone(),
                account_uri_prefix: config.account_uri_prefix.clone(),
                caa_recheck_after: config.caa_recheck_after_secs,
                limits,
                policy: IdentifierPolicy::new(&config.blocklists),
                background: TaskTracker::new(),
                abandon: CancellationToken::new(),
                instance: random_instance()?,
                bad_key_blocked: tokio::sync::Notify::new(),
                validations: Validations::default(),
            }),
        })
    }

    async fn account(&self, id: i64, deadline: Option<Instant>) -> Result<Account, Problem> {
        self.inner.sa.get_account(id, deadline).await
    }

    pub(crate) async fn authorization(&self, id: i64, deadline: Option<Instant>) -> Result<Authorization, Problem> {
        self.inner.sa.get_authorization(id, deadline).await
    }

    pub(crate) async fn order(&self, id: i64, deadline: Option<Instant>) -> Result<Order, Problem> {
        self.inner.sa.get_order(id, deadline).await
    }

    /// The wfe's copy of the account when it sent one (it read it, or verified the request with it, just before),
    /// else the sa's: a round trip saved per validation and per finalization.
    pub(crate) async fn account_from(
        &self,
        sent: Option<&pb::Account>,
        id: i64,
        deadline: Option<Instant>,
    ) -> Result<Account, Problem> {
        match sent {
            Some(account) if account.id == id => Account::try_from(account),
            _ => self.account(id, deadline).await,
        }
    }

    /// The wfe's copy of the authorization when it sent one, else the sa's.
    pub(crate) async fn authorization_from(
        &self,
        sent: Option<&pb::Authorization>,
        id: i64,
        deadline: Option<Instant>,
    ) -> Result<Authorization, Problem> {
        match sent {
            Some(authz) if authz.id == id => Authorization::try_from(authz),
            _ => self.authorization(id, deadline).await,
        }
    }

    /// The wfe's copy of the order when it sent one, else the sa's.
    pub(crate) async fn order_from(
        &self,
        sent: Option<&pb::Order>,
        id: i64,
        deadline: Option<Instant>,
    ) -> Result<Order, Problem> {
        match sent {
            Some(order) if order.id == id => Order::try_from(order),
            _ => self.order(id, deadline).await,
        }
    }

    /// Reads the sa's rate-limit overrides now and then every `period`, for as long as the ra runs.
    pub fn refresh_overrides(&self, period: Duration) {
        let registrar = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                match registrar.inner.sa.get_enabled_rate_limit_overrides(deadline).await {
                    Ok(list) => {
                        let entries: Vec<quarry_ratelimits::OverrideEntry> = list
                            .into_iter()
                            .filter_map(|o| {
                                Some(quarry_ratelimits::OverrideEntry {
                                    limit: o.limit,
                                    bucket: o.bucket,
                                    count: u64::try_from(o.count).ok()?,
                                    period_secs: u64::try_from(o.period_secs).ok()?,
                                    burst: u64::try_from(o.burst).ok()?,
                                    comment: o.comment,
                                })
                            })
                            .collect();
                        registrar.inner.limits.set_sa_overrides(&entries);
                    }
                    Err(problem) => tracing::warn!(%problem, "cannot read the sa's rate-limit overrides"),
                }
            }
        });
    }

    /// At shutdown: lets validations and finalizations in flight run for `grace`, then makes those still running
    /// record their failure (for at most a few seconds more).
    pub async fn drain_background(&self, grace: Duration) {
        let background = &self.inner.background;
        background.close();
        if tokio::time::timeout(grace, background.wait()).await.is_err() {
            tracing::warn!(
                tasks = background.len(),
                "stopping: validations and finalizations still running are recorded as failed"
            );
            self.inner.abandon.cancel();
            let _ = tokio::time::timeout(ABANDON_RECORD_TIME, background.wait()).await;
        }
    }
}

/// A replica's name for its heartbeats: 64 random bits, hex.
fn random_instance() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Invalid("the random number generator failed".into()))?;
    Ok(hex::encode(bytes))
}
