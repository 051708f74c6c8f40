//! Finalization (RFC 8555 §7.4): the order and CSR checks, CAA checked again where it has aged, and issuance
//! through the ca — while the client waits, or in the background — with the order failed, or finished from its
//! precertificate, when issuance goes wrong.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use quarry_core::clock::now;
use quarry_core::model::{AuthorizationStatus, ChallengeStatus, Order, OrderStatus};
use quarry_core::{ErrorKind, Identifier, Problem};
use quarry_jose::Jwk;
use quarry_proto::ca::IssueCertificateRequest;
use quarry_proto::client::FinalizationFacts;
use quarry_proto::ra::FinalizeOrderRequest;
use tracing::Instrument;

use crate::keypolicy;
use crate::orders::renewal_since;
use crate::registrar::{ABANDON_RECORD_TIME, Registrar};

impl Registrar {
    pub(crate) async fn finalize_order(
        &self,
        req: FinalizeOrderRequest,
        deadline: Option<Instant>,
    ) -> Result<(Order, Option<Vec<u8>>), Problem> {
        let inner = &self.inner;
        // Parsed first for its key's hash, which the sa's one read needs; a bad CSR is reported after the order's
        // own problems, as before that read existed.
        let csr = quarry_core::csr::parse_csr(&req.csr).map_err(|e| match e {
            quarry_core::csr::CsrError::UnsupportedKey(detail) => Problem::new(ErrorKind::BadPublicKey, detail),
            other => Problem::new(ErrorKind::BadCsr, format!("invalid CSR: {other}")),
        });
        let key_hash = csr.as_ref().map(|csr| csr.key.key_hash().to_vec()).unwrap_or_default();
        let (order, facts) = self.order_and_facts(&req, key_hash, deadline).await?;
        // As the wfe answers for another account's order: no sign that it exists.
        if order.account_id != req.account_id {
            return Err(Problem::not_found("order not found"));
        }
        if order.status != OrderStatus::Ready {
            return Err(Problem::new(
                ErrorKind::OrderNotReady,
                format!("Order's status ({:?}) is not acceptable for finalization", order.status.as_str()),
            ));
        }
        let csr = csr?;
        keypolicy::check_key(&csr.key)?;
        let account = self.account_from(req.account.as_ref(), order.account_id, deadline).await?;
        let account_key =
            Jwk::from_slice(&account.jwk).map_err(|_| Problem::internal("stored account key does not parse"))?;
        // Both keys are canonical, so a CSR carrying the account key in another encoding is still caught.
        if csr.key == account_key {
            return Err(Problem::new(ErrorKind::BadCsr, "certificate public key must be different than account key"));
        }
        let facts = match facts {
            Some(facts) => facts,
            None => self.finalization_facts(&order, &csr.key, deadline).await?,
        };
        if facts.key_blocked {
            return Err(Problem::new(ErrorKind::BadPublicKey, "the CSR's public key is forbidden"));
        }
        check_csr_names(&csr.identifiers(), &order.identifiers)?;
        let (authzs, renewal) = (facts.authorizations, facts.renewal);
        let all_valid = authzs.iter().all(|a| a.status == AuthorizationStatus::Valid);
        if !all_valid || authzs.is_empty() {
            return Err(Problem::new(ErrorKind::OrderNotReady, "not every authorization of the order is valid"));
        }
        // CAA answers age: an authorization validated long ago (reused, or a slow client) is checked again.
        let stale_before = now() - inner.caa_recheck_after;
        for authz in &authzs {
            let Some(challenge) = authz.challenges.iter().find(|c| c.status == ChallengeStatus::Valid) else {
                continue;
            };
            if challenge.validated <= stale_before {
                self.check_caa(authz, challenge.kind, deadline).await?;
            }
        }

        if inner.async_finalize {
            // The client is answered before issuance begins, so the order is processing first.
            inner.sa.set_order_processing(order.id, &inner.instance, deadline).await?;
            let registrar = self.clone();
            // The sa's conditional update succeeded: the order is processing, without reading it back (the sa
            // stamps `began_processing` by its own clock, which this one approximates; no client sees it).
            let processing = Order { status: OrderStatus::Processing, began_processing: now().max(1), ..order.clone() };
            let csr = req.csr;
            // Issuance outlives the client's request: it has its own timeout, not the request's deadline.
            let abandon = self.inner.abandon.clone();
            self.inner.background.spawn(
                async move {
                    let delay = Duration::from_secs(registrar.inner.client_testing.finalize_delay_secs);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = abandon.cancelled() => {}
                    }
                    let deadline = Some(Instant::now() + registrar.inner.finalize_timeout);
                    tokio::select! {
                        _ = registrar.issue_or_invalidate(&order, csr, renewal, Marked::Already, deadline) => {}
                        () = abandon.cancelled() => {
                            let stopped = Problem::internal("the CA stopped before this order was issued; order again");
                            registrar.fail_order(&order, &stopped, deadline).await;
                        }
                    }
                }
                .in_current_span(),
            );
            return Ok((processing, None));
        }
        // Issuance stops short of the caller's deadline, leaving the ra time to learn what became of it and answer.
        let deadline = match deadline {
            Some(deadline) => deadline.checked_sub(RECONCILE_MARGIN).filter(|d| *d > Instant::now()).or(Some(deadline)),
            None => Some(Instant::now() + inner.finalize_timeout),
        };
        let began_processing = now().max(1);
        // The order begins processing as the ca stores its precertificate, which saves the sa a write of its own.
        match self.issue_or_invalidate(&order, req.csr, renewal, Marked::WithPrecertificate, deadline).await? {
            // The sa recorded the certificate, so the order is valid: no need to read it back.
            Issuance::Issued { serial, der } => {
                Ok((Order { status: OrderStatus::Valid, certificate_serial: serial, began_processing, ..order }, der))
            }
            // The client polls the order until its certificate is stored.
            Issuance::Finishing => Ok((Order { status: OrderStatus::Processing, began_processing, ..order }, None)),
        }
    }

    /// Issues (giving the certificate's serial), or marks the order invalid: past "processing" an order cannot go
    /// back to ready, and the client starts over with a new order. When the ca's answer was lost (a timeout, a
    /// broken connection) after it stored a precertificate, the order is not failed: the certificate is finished
    /// from the precertificate in the background, so a certificate the ca signed is never lost. When the order
    /// turns out not to be ready as its precertificate is stored (another finalization began first), it is not
    /// touched: that finalization owns it.
    async fn issue_or_invalidate(
        &self,
        order: &Order,
        csr: Vec<u8>,
        renewal: bool,
        marked: Marked,
        deadline: Option<Instant>,
    ) -> Result<Issuance, Problem> {
        let problem = match self.issue(order, csr, renewal, marked, deadline).await {
            Ok((serial, der)) => return Ok(Issuance::Issued { serial, der: Some(der) }),
            Err(IssueFailure::NotReady(problem)) => return Err(problem),
            Err(IssueFailure::Failed(problem)) => problem,
        };
        if matches!(problem.kind, ErrorKind::Timeout | ErrorKind::Unavailable) {
            let lookup = Some(Instant::now() + ABANDON_RECORD_TIME);
            match self.inner.sa.get_order_precertificate(order.id, lookup).await {
                Ok(Some(serial)) => {
                    tracing::warn!(order_id = order.id, serial, %problem, "the ca's answer was lost after its precertificate: finishing from it");
                    self.finish_in_background(order.id, serial);
                    return Ok(Issuance::Finishing);
                }
                Ok(None) => {}
                // Unknown either way: the sweeper decides once the order has been processing too long.
                Err(lookup_failed) => {
                    tracing::warn!(order_id = order.id, %lookup_failed, "cannot tell whether a precertificate was signed; the sweeper will");
                    return Err(problem);
                }
            }
        }
        match self.fail_order(order, &problem, deadline).await {
            Some(serial) => Ok(Issuance::Issued { serial, der: None }),
            None => Err(problem),
        }
    }

    /// Finishes order `order_id` from its precertificate once the interrupted call has surely ended (a call the ra
    /// gave up on is cancelled at the ca, but a store already sent may still land). Failing that, the order stays
    /// processing, and the sweeper takes it over past its deadline.
    fn finish_in_background(&self, order_id: i64, serial: String) {
        let registrar = self.clone();
        let abandon = self.inner.abandon.clone();
        self.inner.background.spawn(
            async move {
                tokio::select! {
                    () = tokio::time::sleep(LOST_ANSWER_SETTLE) => {}
                    () = abandon.cancelled() => return,
                }
                let settled = registrar.order(order_id, Some(Instant::now() + ABANDON_RECORD_TIME)).await;
                if settled.is_ok_and(|order| order.status != OrderStatus::Processing) {
                    return;
                }
                tokio::select! {
                    finished = registrar.finish_from_precertificate(order_id, &serial) => {
                        if let Err(problem) = finished {
                            tracing::warn!(order_id, %problem, "finishing from the precertificate failed; the sweeper will retry");
                        }
                    }
                    () = abandon.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }

    /// Marks `order` invalid with `problem` — unless its certificate was stored meanwhile (the ca finished after
    /// this ra stopped waiting for it): then the order is valid, and that certificate's serial is returned.
    async fn fail_order(&self, order: &Order, problem: &Problem, deadline: Option<Instant>) -> Option<String> {
        // The caller's deadline may be what ran out: recording the failure gets a moment of its own.
        let deadline = deadline
            .filter(|d| *d > Instant::now() + ABANDON_RECORD_TIME)
            .or_else(|| Some(Instant::now() + ABANDON_RECORD_TIME));
        match self.inner.sa.set_order_error(order.id, problem, deadline).await {
            Ok(()) => {}
            Err(conflict) if conflict.kind == ErrorKind::Conflict => {
                let stored = self.order(order.id, deadline).await.ok().map(|o| o.certificate_serial);
                if let Some(serial) = stored.filter(|serial| !serial.is_empty()) {
                    tracing::info!(order_id = order.id, serial, "the certificate was stored after all");
                    return Some(serial);
                }
            }
            Err(failure) => tracing::error!(order_id = order.id, %failure, "cannot mark the failed order invalid"),
        }
        tracing::warn!(order_id = order.id, %problem, "issuance failed");
        None
    }

    /// Records `serial` as order `order_id`'s certificate, when the ca's answer says the sa did not as it stored it.
    /// The order is marked processing first unless it is already: an older ca or sa did not mark it as the
    /// precertificate was stored, and `finalize_order` takes only a processing order.
    pub(crate) async fn record_certificate(
        &self,
        order_id: i64,
        serial: &str,
        deadline: Option<Instant>,
    ) -> Result<(), Problem> {
        let sa = &self.inner.sa;
        match sa.set_order_processing(order_id, &self.inner.instance, deadline).await {
            Ok(()) => {}
            Err(problem) if problem.kind == ErrorKind::OrderNotReady => {}
            Err(problem) => return Err(problem),
        }
        sa.finalize_order(order_id, serial, deadline).await
    }

    /// The order to finalize, and what the sa knows that finalizing it checks when one read told both. The wfe
    /// leaves the order to that read (`None` in the request); an older wfe sends it, and an older sa answers without
    /// it: then the order is the one sent or read alone, and the facts are asked once it is known.
    async fn order_and_facts(
        &self,
        req: &FinalizeOrderRequest,
        key_hash: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(Order, Option<FinalizationFacts>), Problem> {
        if req.order.is_none() {
            let sa = &self.inner.sa;
            let asked = sa.get_finalization_facts(req.order_id, key_hash, &[], renewal_since(), true, deadline);
            if let Some(mut facts) = asked.await?
                && let Some(order) = facts.order.take()
            {
                return Ok((order, Some(facts)));
            }
        }
        Ok((self.order_from(req.order.as_ref(), req.order_id, deadline).await?, None))
    }

    /// What the sa knows that finalizing `order` with `key` checks, in one read. Whether the order is a renewal is
    /// asked here, before this order's certificate joins the history it looks at. An sa that predates the one read
    /// (during a rolling update) is asked the three reads it replaces.
    async fn finalization_facts(
        &self,
        order: &Order,
        key: &Jwk,
        deadline: Option<Instant>,
    ) -> Result<FinalizationFacts, Problem> {
        let sa = &self.inner.sa;
        let key_hash = key.key_hash().to_vec();
        let asked =
            sa.get_finalization_facts(order.id, key_hash.clone(), &order.identifiers, renewal_since(), false, deadline);
        if let Some(facts) = asked.await? {
            return Ok(facts);
        }
        Ok(FinalizationFacts {
            key_blocked: sa.key_blocked(key_hash, deadline).await?,
            authorizations: sa.get_order_authorizations(order.id, deadline).await?,
            renewal: self.is_renewal(&order.identifiers, deadline).await?,
            order: None,
        })
    }

    /// Has the ca issue `order`'s certificate, giving its serial and DER; `renewal` says whether it renews one (for
    /// the rate limits).
    async fn issue(
        &self,
        order: &Order,
        csr: Vec<u8>,
        renewal: bool,
        marked: Marked,
        deadline: Option<Instant>,
    ) -> Result<(String, Vec<u8>), IssueFailure> {
        quarry_core::fault::point("ra.finalize_before_issue");
        let processing_by = match marked {
            Marked::Already => String::new(),
            Marked::WithPrecertificate => self.inner.instance.clone(),
        };
        let issue = IssueCertificateRequest {
            csr,
            account_id: order.account_id,
            order_id: order.id,
            profile: order.profile.clone(),
            processing_by,
        };
        let issued = match self.inner.ca.issue_certificate(issue, deadline).await {
            Ok(issued) => issued,
            Err(problem) if marked == Marked::WithPrecertificate && problem.kind == ErrorKind::OrderNotReady => {
                return Err(IssueFailure::NotReady(problem));
            }
            Err(problem) => return Err(IssueFailure::Failed(problem)),
        };
        quarry_core::fault::point("ra.finalize_after_issue");
        // The sa made the order valid as it stored the certificate, and the ca says so; an older ca does not.
        if !issued.order_finalized {
            self.record_certificate(order.id, &issued.serial, deadline).await.map_err(IssueFailure::Failed)?;
        }
        let limited: Vec<Identifier> = order.identifiers.iter().map(Identifier::without_wildcard).collect();
        self.inner.limits.issued(order.account_id, &limited, renewal).await;
        tracing::info!(target: "audit", event = "certificate-issued", order_id = order.id, account_id = order.account_id, serial = %issued.serial, names = ?order.identifiers.iter().map(|i| &i.value).collect::<Vec<_>>(), "certificate issued");
        Ok((issued.serial, issued.der))
    }
}

/// Who marks the order processing, the fuse against finalizing it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marked {
    /// The ra did, before answering the client (asynchronous finalization).
    Already,
    /// The sa does, in the transaction that stores the precertificate's linting copy.
    WithPrecertificate,
}

/// Why issuance stopped.
enum IssueFailure {
    /// The order was not ready when its precertificate was to be stored: nothing was stored or signed, and the
    /// order is left as it is (another finalization began first).
    NotReady(Problem),
    /// Anything else: the order is failed, or finished from a precertificate stored before the failure.
    Failed(Problem),
}

/// What finalization achieved.
enum Issuance {
    /// The certificate is stored, under this serial; with its DER when the ca's answer to this finalization gave it
    /// (not when the ca finished after this ra stopped waiting).
    Issued { serial: String, der: Option<Vec<u8>> },
    /// Its precertificate is, and the certificate is being finished from it.
    Finishing,
}

/// What a synchronous finalization keeps of its caller's deadline to reconcile an issuance whose answer it lost.
const RECONCILE_MARGIN: Duration = Duration::from_secs(3);

/// How long an interrupted call to the ca is given to settle before its issuance is finished from the
/// precertificate.
const LOST_ANSWER_SETTLE: Duration = Duration::from_secs(2);

/// The CSR must ask for exactly the order's identifiers.
fn check_csr_names(csr_identifiers: &BTreeSet<Identifier>, identifiers: &[Identifier]) -> Result<(), Problem> {
    let ordered: BTreeSet<Identifier> = identifiers.iter().map(Identifier::normalized).collect();
    if *csr_identifiers == ordered {
        return Ok(());
    }
    let values = |set: std::collections::btree_set::Difference<'_, Identifier>| -> Vec<String> {
        set.map(|i| i.value.clone()).collect()
    };
    let missing = values(ordered.difference(csr_identifiers));
    let extra = values(csr_identifiers.difference(&ordered));
    Err(Problem::new(
        ErrorKind::BadCsr,
        format!("CSR does not specify same identifiers as Order (missing {missing:?}, not in order {extra:?})"),
    ))
}

#[cfg(test)]
mod tests {
    use quarry_core::IdentifierType;

    use super::*;

    #[test]
    fn csr_names_must_equal_the_order() {
        let ip = Identifier { kind: IdentifierType::Ip, value: "192.0.2.1".into() };
        let order = [Identifier::dns("a.example.org"), Identifier::dns("*.b.example.org"), ip.clone()];
        let names = |list: &[&str]| {
            let mut set: BTreeSet<Identifier> = list.iter().map(|s| Identifier::dns(*s)).collect();
            set.insert(ip.clone());
            set
        };
        assert!(check_csr_names(&names(&["a.example.org", "*.b.example.org"]), &order).is_ok());
        let problem = check_csr_names(&names(&["a.example.org", "c.example.org"]), &order).unwrap_err();
        assert_eq!(problem.kind, ErrorKind::BadCsr);
        assert!(problem.detail.contains("*.b.example.org") && problem.detail.contains("c.example.org"));
        let without_ip: BTreeSet<Identifier> =
            [Identifier::dns("a.example.org"), Identifier::dns("*.b.example.org")].into();
        assert!(check_csr_names(&without_ip, &order).unwrap_err().detail.contains("192.0.2.1"));
    }
}
