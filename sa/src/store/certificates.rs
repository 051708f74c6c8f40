//! Issuance records: reserved serials, precertificates and certificates, and what storing one records beside it —
//! its revocation status, its FQDN set, its names and its key — which renewal detection and rate limits read back.

use quarry_core::clock::{Timestamp, now};
use quarry_core::identifier::fqdn_set_hash;
use quarry_core::model::Certificate;
use quarry_core::{ErrorKind, Identifier, Problem};

use super::database::{Backend, Store};
use super::errors::db_error;
use super::rows::{ReadColumn, get};
use super::statements::Statement;
use crate::queries;

/// `www.example.com` → `com.example.www`, so names under one domain sort together.
fn reversed_name(name: &str) -> String {
    name.split('.').rev().collect::<Vec<_>>().join(".")
}

/// A serial reserved in the transaction that stores its precertificate.
#[derive(Debug, Clone, Copy)]
pub struct SerialReservation<'a> {
    /// The order the serial is for.
    pub order_id: i64,
    /// When the reservation may go: the certificate's notAfter.
    pub expires: Timestamp,
    /// The ra replica the order begins processing by, in the same transaction; `None`: the ra marked it already (or
    /// the ca is older; see [`Store::reserve_and_add_precertificate`]).
    pub processing_by: Option<&'a str>,
}

/// What storing a final certificate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCertificate {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Whether the order the caller named now has it.
    pub order_finalized: bool,
}

/// A precertificate (the ca's linting copy of it) stored before the real one is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precertificate {
    pub serial: String,
    pub account_id: i64,
    pub der: Vec<u8>,
    pub issued: Timestamp,
    pub expires: Timestamp,
    pub issuer_id: i64,
}

impl Store {
    /// Reserves a serial for a certificate of `order_id` (0: of no order).
    pub async fn add_serial(
        &self,
        account_id: i64,
        order_id: i64,
        serial: &str,
        created: Timestamp,
        expires: Timestamp,
    ) -> Result<(), Problem> {
        sqlx::query("INSERT INTO serials (serial, account_id, order_id, created, expires) VALUES ($1, $2, $3, $4, $5)")
            .bind(serial.to_ascii_lowercase())
            .bind(account_id)
            .bind(order_id)
            .bind(created)
            .bind(expires)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn serial_exists(&self, serial: &str) -> Result<bool, Problem> {
        let found: Option<String> = sqlx::query_scalar("SELECT serial FROM serials WHERE serial = $1")
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(found.is_some())
    }

    /// Stores a precertificate (the ca's linting copy) with everything issuance records: its status (so it can be
    /// revoked from now on), its FQDN set, its names and its key. A serial is stored once, and only if reserved
    /// (by [`Store::add_serial`]); the same precertificate stored again (a retry after a lost answer) is accepted.
    pub async fn add_precertificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
    ) -> Result<String, Problem> {
        self.store_precertificate(account_id, der, issued, issuer_id, None).await
    }

    /// Reserves the precertificate's serial for `order_id` (as [`Store::add_serial`], expiring at `expires`) and
    /// stores the precertificate (as [`Store::add_precertificate`]) in one transaction, so that the serial row the
    /// order's recovery looks for and the precertificate exist together or not at all. A serial taken already is
    /// `duplicate` (the ca draws another); the same precertificate stored again (a retry) is accepted.
    ///
    /// With `processing_by` (a name) the order also begins processing by that ra replica, as
    /// [`Store::set_order_processing`] does, in the same transaction: an order that is not ready (processing
    /// already, failed, finalized or expired) gets nothing stored, and the answer is `orderNotReady`. So the fuse
    /// against finalizing an order twice costs no write of its own, and nothing is signed past it.
    pub async fn reserve_and_add_precertificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
        reservation: SerialReservation<'_>,
    ) -> Result<String, Problem> {
        let processing_by = reservation.processing_by.filter(|_| reservation.order_id != 0);
        let reservation = SerialReservation { processing_by, ..reservation };
        self.store_precertificate(account_id, der, issued, issuer_id, Some(reservation)).await
    }

    async fn store_precertificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
        reservation: Option<SerialReservation<'_>>,
    ) -> Result<String, Problem> {
        let facts = CertificateFacts::parse(der)?;
        // With a reservation, a retry is found when the serial turns out to be taken, so the usual first try reads
        // nothing before it writes.
        if reservation.is_none() {
            if self.precertificate_stored(&facts.serial, der).await? {
                return Ok(facts.serial);
            }
            if !self.serial_exists(&facts.serial).await? {
                return Err(Problem::malformed(format!("serial {} was never reserved", facts.serial)));
            }
        }
        // Everything issuance records, as one statement: its parameters are $1 to $9, the names next, and the
        // reservation's last. Each INSERT is its table and columns, and the rows it adds.
        let mut inserts = vec![
            (
                "INSERT INTO precertificates (serial, account_id, der, issued, expires, issuer_id)",
                "($1, $2, $4, $3, $5, $6)".to_owned(),
            ),
            (
                "INSERT INTO certificate_status (serial, status, not_after, issuer_id)",
                "($1, 'good', $5, $6)".to_owned(),
            ),
            ("INSERT INTO fqdn_sets (set_hash, serial, issued, expires)", "($7, $1, $3, $5)".to_owned()),
            ("INSERT INTO key_hash_to_serial (key_hash, cert_not_after, serial)", "($8, $5, $1)".to_owned()),
        ];
        let names: Vec<String> = (0..facts.names.len()).map(|i| format!("(${}, $9, $1, 0)", 10 + i)).collect();
        if !names.is_empty() {
            inserts.push(("INSERT INTO issued_names (reversed_name, not_before, serial, renewal)", names.join(", ")));
        }
        if reservation.is_some() {
            let (order_id, expires) = (10 + names.len(), 11 + names.len());
            inserts.push((
                "INSERT INTO serials (serial, account_id, order_id, created, expires)",
                format!("($1, $2, ${order_id}, $3, ${expires})"),
            ));
        }
        // The fuse: the order begins processing only while it is ready. Its row alone is the statement's answer.
        let begins_processing = reservation.is_some_and(|r| r.processing_by.is_some());
        let fuse = begins_processing.then(|| {
            let (order_id, began, by) = (10 + names.len(), 12 + names.len(), 13 + names.len());
            format!(
                "UPDATE orders SET began_processing = ${began}, processing_by = ${by} WHERE id = ${order_id} \
                 AND began_processing = 0 AND certificate_serial = '' AND error IS NULL AND expires > ${began} RETURNING id"
            )
        });
        // With the fuse, every INSERT adds its rows only if the fuse was taken, so nothing needs a look before the
        // commit: on PostgreSQL each is a CTE that reads the UPDATE's answer; SQLite has no UPDATE in a CTE, so the
        // UPDATE runs first and each INSERT goes on only if the statement before it changed rows (`changes()`).
        let sql = match (self.backend(), &fuse) {
            (backend, None) => backend.one_statement(
                &inserts.iter().map(|(insert, rows)| format!("{insert} VALUES {rows}")).collect::<Vec<_>>(),
            ),
            (Backend::Postgres, Some(fuse)) => {
                let ctes: Vec<String> = inserts
                    .iter()
                    .enumerate()
                    .map(|(i, (insert, rows))| {
                        format!(
                            "w{i} AS ({insert} SELECT * FROM (VALUES {rows}) AS v WHERE EXISTS (SELECT 1 FROM fuse))"
                        )
                    })
                    .collect();
                format!("WITH fuse AS ({fuse}), {} SELECT id FROM fuse", ctes.join(", "))
            }
            (Backend::Sqlite, Some(fuse)) => {
                let inserts = inserts
                    .iter()
                    .map(|(insert, rows)| format!("{insert} SELECT * FROM (VALUES {rows}) AS v WHERE changes() > 0"));
                std::iter::once(fuse.clone()).chain(inserts).collect::<Vec<_>>().join(";\n")
            }
        };
        let mut write = Statement::new(sql)
            .text(&facts.serial)
            .int(account_id)
            .int(issued)
            .bytes(der)
            .int(facts.not_after)
            .int(issuer_id)
            .bytes(fqdn_set_hash(facts.names.iter().map(String::as_str)))
            .bytes(facts.key_hash)
            .int(facts.not_before);
        for name in &facts.names {
            write = write.text(reversed_name(name));
        }
        if let Some(reservation) = reservation {
            write = write.int(reservation.order_id).int(reservation.expires);
            if let Some(by) = reservation.processing_by {
                write = write.int(now().max(1)).text(by);
            }
        }
        // In place on SQLite, or one round trip, with the commit. Its rows are the UPDATE's.
        let rows = match self.write_committed(&[write]).await {
            Ok(rows) => rows,
            Err(problem) => {
                // A retry of this very call that raced the first one (its answer lost) finds it stored by now.
                if problem.kind == ErrorKind::Duplicate && self.precertificate_stored(&facts.serial, der).await? {
                    return Ok(facts.serial);
                }
                return Err(problem);
            }
        };
        if begins_processing && rows.first().is_none_or(Vec::is_empty) {
            // The fuse was not taken, and nothing was stored: a retry whose first try committed, or an order that
            // is not ready.
            return match self.precertificate_stored(&facts.serial, der).await {
                Ok(true) => Ok(facts.serial),
                Ok(false) => Err(not_ready()),
                Err(problem) if problem.kind == ErrorKind::Duplicate => Err(not_ready()),
                Err(problem) => Err(problem),
            };
        }
        Ok(facts.serial)
    }

    /// Whether order `order_id` has the certificate `serial`.
    async fn order_has(&self, order_id: i64, serial: &str) -> Result<bool, Problem> {
        let recorded: Option<String> = sqlx::query_scalar("SELECT certificate_serial FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(recorded.is_some_and(|recorded| recorded == serial))
    }

    /// Whether `serial`'s precertificate is stored already as `der` (a retry); another one under it is `duplicate`.
    async fn precertificate_stored(&self, serial: &str, der: &[u8]) -> Result<bool, Problem> {
        match self.get_precertificate(serial).await {
            Ok(stored) if stored.der == der => Ok(true),
            Ok(_) => Err(Problem::new(ErrorKind::Duplicate, format!("serial {serial} is taken"))),
            Err(problem) if problem.kind == ErrorKind::NotFound => Ok(false),
            Err(problem) => Err(problem),
        }
    }

    /// Stores the final certificate of a stored precertificate (same serial, same issuer); see
    /// [`Store::add_certificate_for_order`], which this is without naming an order.
    pub async fn add_certificate(
        &self,
        account_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
    ) -> Result<String, Problem> {
        Ok(self.add_certificate_for_order(account_id, 0, der, issued, issuer_id).await?.serial)
    }

    /// Stores the final certificate of a stored precertificate (same serial, same issuer) and, in the same
    /// transaction, makes the order its serial was reserved for (else `order_id`) valid, as `finalize_order` does
    /// (RFC 9773: its replaced certificate is now replaced), superseding a failure recorded meanwhile (the ra gave
    /// up waiting): so an order whose caller crashed, or gave up, after the ca finished is not left behind. Says
    /// whether `order_id` (non-zero) now has this certificate. A certificate is stored whatever the order's state,
    /// since it is signed already. The same certificate stored again (a retry after a lost answer) is accepted.
    pub async fn add_certificate_for_order(
        &self,
        account_id: i64,
        order_id: i64,
        der: &[u8],
        issued: Timestamp,
        issuer_id: i64,
    ) -> Result<StoredCertificate, Problem> {
        let facts = CertificateFacts::parse(der)?;
        // What the serial has already, in one read: its precertificate, a certificate stored by an earlier try,
        // the order it was reserved for (a reservation never changes, so it need not be read in the write), and
        // whether the order that will take the certificate replaces another (`replaces` is set at its creation).
        let read = Statement::new(
            "SELECT p.account_id, p.issuer_id, c.der AS stored_der, s.order_id AS reserved_for, o.replaces AS replaces \
             FROM precertificates p LEFT JOIN certificates c ON c.serial = p.serial \
             LEFT JOIN serials s ON s.serial = p.serial \
             LEFT JOIN orders o ON o.id = COALESCE(NULLIF(s.order_id, 0), $2) WHERE p.serial = $1",
        )
        .text(&facts.serial)
        .int(order_id);
        let row = self
            .read_together(&[read])
            .await?
            .pop()
            .and_then(|rows| rows.into_iter().next())
            .ok_or_else(|| Problem::malformed(format!("serial {} has no precertificate", facts.serial)))?;
        let (precertificate_account, precertificate_issuer): (i64, i64) =
            (get(&row, "account_id")?, get(&row, "issuer_id")?);
        if precertificate_issuer != issuer_id || precertificate_account != account_id {
            return Err(Problem::malformed(format!(
                "serial {}'s precertificate has another issuer or account",
                facts.serial
            )));
        }
        match get::<Option<Vec<u8>>>(&row, "stored_der")? {
            Some(stored) if stored == der => {
                let order_finalized = order_id != 0 && self.order_has(order_id, &facts.serial).await?;
                return Ok(StoredCertificate { serial: facts.serial, order_finalized });
            }
            Some(_) => return Err(Problem::new(ErrorKind::Duplicate, format!("serial {} is taken", facts.serial))),
            None => {}
        }
        let reserved_for: Option<i64> = get(&row, "reserved_for")?;
        // The reservation names the order; a caller naming another one is answered "not finalized" (it then records
        // the certificate itself, and learns why it cannot), while the certificate is stored all the same.
        let linked = reserved_for.filter(|id| *id != 0).unwrap_or(order_id);
        let replaces = linked != 0 && get::<Option<String>>(&row, "replaces")?.is_some_and(|r| !r.is_empty());
        let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        // The certificate and its order's update in one statement ($8 the order); the order takes the certificate
        // only while it is processing and has none.
        let mut writes = vec![
            "INSERT INTO certificates (serial, account_id, digest, der, issued, expires, issuer_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                .to_owned(),
        ];
        if linked != 0 {
            writes.push(
                "UPDATE orders SET certificate_serial = $1, error = NULL WHERE id = $8 AND certificate_serial = '' AND began_processing != 0 RETURNING id"
                    .to_owned(),
            );
        }
        let mut store = Statement::new(self.backend().one_statement(&writes))
            .text(&facts.serial)
            .int(account_id)
            .text(&digest)
            .bytes(der)
            .int(issued)
            .int(facts.not_after)
            .int(issuer_id);
        if linked != 0 {
            store = store.int(linked);
        }
        let mut statements = vec![store];
        if replaces {
            // RFC 9773: the replaced certificate is replaced once its replacement order has this certificate, which
            // the UPDATE above gave it (or `finalize_order` recorded first, having marked it then). The statement
            // must see that UPDATE: one of its own, not a part of the one above (PostgreSQL's parts would all see
            // the state before).
            statements.push(
                Statement::new(
                    "UPDATE replacement_orders SET replaced = 1 WHERE order_id = $1 \
                     AND EXISTS (SELECT 1 FROM orders WHERE id = $1 AND certificate_serial = $2)",
                )
                .int(linked)
                .text(&facts.serial),
            );
        }
        // Nothing needs a look before the commit: in place on SQLite, or one statement on PostgreSQL
        // for an order that replaces nothing.
        let answers = self.write_committed(&statements).await?;
        let took_it = answers.first().is_some_and(|rows| !rows.is_empty());
        let order_finalized = match took_it {
            true => linked == order_id,
            // Not processing, or it has a certificate: this one, when an earlier try got this far.
            false if linked != 0 && linked == order_id => self.order_has(order_id, &facts.serial).await?,
            false => false,
        };
        Ok(StoredCertificate { serial: facts.serial, order_finalized })
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Certificate, Problem> {
        let row = sqlx::query(queries::CERTIFICATE_BY_SERIAL)
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let row = row.ok_or_else(|| Problem::not_found(format!("certificate {serial} not found")))?;
        Ok(Certificate {
            serial: get(&row, "serial")?,
            account_id: get(&row, "account_id")?,
            der: get(&row, "der")?,
            issued: get(&row, "issued")?,
            expires: get(&row, "expires")?,
            digest: get(&row, "digest")?,
            issuer_id: get(&row, "issuer_id")?,
        })
    }

    /// (status, revoked_date, revoked_reason, not_after, issuer_id) of a certificate.
    pub async fn get_certificate_status(&self, serial: &str) -> Result<(String, i64, i64, i64, i64), Problem> {
        let row = sqlx::query(queries::CERTIFICATE_STATUS_BY_SERIAL)
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let row = row.ok_or_else(|| Problem::not_found(format!("certificate {serial} not found")))?;
        Ok((
            get(&row, "status")?,
            get(&row, "revoked_date")?,
            get(&row, "revoked_reason")?,
            get(&row, "not_after")?,
            get(&row, "issuer_id")?,
        ))
    }

    /// When certificates for exactly this set of identifiers were issued since `since`, newest first.
    pub async fn fqdn_set_issuance_times(
        &self,
        identifiers: &[Identifier],
        since: Timestamp,
    ) -> Result<Vec<Timestamp>, Problem> {
        let answers = self.read_together(&[fqdn_set_times_read(identifiers, since)]).await?;
        issuance_times(&answers[0])
    }

    /// How many certificates named `domain` or a name under it, with a notBefore after `since`.
    pub async fn certificates_for_domain(&self, domain: &str, since: Timestamp) -> Result<i64, Problem> {
        let reversed = reversed_name(&domain.to_ascii_lowercase());
        // Names under the domain sort between "com.example." and "com.example/" ('/' follows '.'): a range the
        // (reversed_name, not_before) index answers on both engines, where LIKE would not use it on SQLite.
        sqlx::query_scalar(queries::CERTIFICATES_FOR_DOMAIN)
            .bind(&reversed)
            .bind(format!("{reversed}."))
            .bind(format!("{reversed}/"))
            .bind(since)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    pub async fn get_precertificate(&self, serial: &str) -> Result<Precertificate, Problem> {
        let row = sqlx::query(
            "SELECT serial, account_id, der, issued, expires, issuer_id FROM precertificates WHERE serial = $1",
        )
        .bind(serial.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?
        .ok_or_else(|| Problem::not_found(format!("precertificate {serial} not found")))?;
        Ok(Precertificate {
            serial: get(&row, "serial")?,
            account_id: get(&row, "account_id")?,
            der: get(&row, "der")?,
            issued: get(&row, "issued")?,
            expires: get(&row, "expires")?,
            issuer_id: get(&row, "issuer_id")?,
        })
    }
}

/// The read of when certificates for exactly `identifiers` were issued since `since`, newest first.
pub(super) fn fqdn_set_times_read(identifiers: &[Identifier], since: Timestamp) -> Statement {
    Statement::new(queries::FQDN_SET_TIMES)
        .bytes(fqdn_set_hash(identifiers.iter().map(|i| i.value.as_str())))
        .int(since)
}

/// The read of when certificates for exactly order `order_id`'s identifiers were issued since `since`, newest
/// first: the set's hash recorded with the order, so that the read need not wait for the order's.
pub(super) fn order_fqdn_set_times_read(order_id: i64, since: Timestamp) -> Statement {
    Statement::new(queries::ORDER_FQDN_SET_TIMES).int(order_id).int(since)
}

/// The issuance times a read of [`fqdn_set_times_read`] or [`order_fqdn_set_times_read`] found.
pub(super) fn issuance_times(rows: &[impl ReadColumn]) -> Result<Vec<Timestamp>, Problem> {
    rows.iter().map(|row| get(row, "issued")).collect()
}

/// What the sa records about a certificate, read from its DER.
struct CertificateFacts {
    serial: String,
    not_before: i64,
    not_after: i64,
    names: Vec<String>,
    key_hash: Vec<u8>,
}

impl CertificateFacts {
    fn parse(der: &[u8]) -> Result<Self, Problem> {
        use x509_parser::prelude::*;
        let (_, cert) =
            parse_x509_certificate(der).map_err(|_| Problem::malformed("certificate DER does not parse"))?;
        let names = quarry_core::certificate::identifiers(&cert).into_iter().map(|id| id.value).collect();
        // The key→serial index is keyed by the canonical key hash, whatever encoding the certificate carries.
        let key = quarry_jose::Jwk::from_spki_der(cert.public_key().raw)
            .map_err(|e| Problem::malformed(format!("certificate public key: {e}")))?;
        Ok(Self {
            serial: hex::encode(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
            key_hash: key.key_hash().to_vec(),
        })
    }
}

fn not_ready() -> Problem {
    Problem::new(ErrorKind::OrderNotReady, "order is already processing, or no longer ready")
}
