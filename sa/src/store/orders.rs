//! Orders: creation with their new authorizations, links to them and the FQDN set that order reuse looks up, the
//! replacement they record (RFC 9773), reads, an account's orders list, and the steps of finalization.

use quarry_core::clock::{Timestamp, now};
use quarry_core::identifier::fqdn_set_hash;
use quarry_core::model::{Authorization, AuthorizationStatus, ChallengeType, MAX_ORDER_PAGE, Order, OrderPage};
use quarry_core::{ErrorKind, Identifier, Problem};

use super::authorizations::{authorizations_from_rows, order_authorizations_read};
use super::database::{Backend, Store};
use super::errors::{db_error, internal};
use super::rows::{ReadColumn, Row, get};
use super::statements::Statement;
use crate::queries;
use crate::status::{OrderFacts, order_status};

/// The most of an account's orders one page of its orders list looks at, listed or not: a page of an account whose
/// orders are mostly invalid (expired, failed) holds fewer ids, rather than one request reading every order the
/// account ever had.
const MAX_ORDERS_EXAMINED: i64 = 2 * MAX_ORDER_PAGE;

/// The last of the orders one page may look at — the `$3 + 1`th of the account's orders after an id — and the one
/// after it, if any: read from the index `orders_account_id` alone.
const LAST_ORDER_EXAMINED: &str =
    "SELECT id FROM orders WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT 2 OFFSET $3";

/// The ids of an account's orders in an id range that are not invalid: what `status::order_status` derives on read,
/// said in SQL so that a page is one query rather than one per order. Valid (a certificate) whatever else is
/// recorded; else invalid with an error, once expired, or with an authorization that is not pending or valid, or is
/// past its expiry (a pending or valid one reads as expired then).
const LISTED_ACCOUNT_ORDERS: &str = "SELECT id FROM orders WHERE account_id = $1 AND id > $2 AND id <= $3 AND (certificate_serial != '' OR (error IS NULL AND expires > $4 AND NOT EXISTS (SELECT 1 FROM order_authorizations JOIN authorizations ON authorizations.id = order_authorizations.authorization_id WHERE order_authorizations.order_id = orders.id AND (authorizations.status NOT IN ('pending', 'valid') OR authorizations.expires <= $5)))) ORDER BY id LIMIT $6";

/// A new pending authorization to create with an order.
#[derive(Debug, Clone)]
pub struct NewAuthorization {
    pub identifier: Identifier,
    pub challenge_types: Vec<ChallengeType>,
    pub token: String,
    pub expires: Timestamp,
}

/// An order to create, with the authorizations it reuses and the ones it needs.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub account_id: i64,
    pub identifiers: Vec<Identifier>,
    pub expires: Timestamp,
    pub reused_authorization_ids: Vec<i64>,
    pub new_authorizations: Vec<NewAuthorization>,
    pub profile: String,
    /// The ARI CertID of the certificate this order replaces, as the client sent it.
    pub replaces: String,
    /// That certificate's serial (hex), recorded so that it is replaced only once; empty when none.
    pub replaces_serial: String,
}

/// Where a replacement order is recorded (RFC 9773), and what a second order replacing the same certificate does:
/// it takes the record over while the certificate is not replaced yet.
const INSERT_REPLACEMENT: &str = "INSERT INTO replacement_orders (serial, order_id, order_expires, replaced)";
const REPLACEMENT_CONFLICT: &str = "ON CONFLICT (serial) DO UPDATE SET order_id = excluded.order_id, \
     order_expires = excluded.order_expires WHERE replacement_orders.replaced = 0";

fn only_row<R>(rows: Vec<R>) -> Result<R, Problem> {
    rows.into_iter().next().ok_or_else(|| internal("an INSERT answered no row"))
}

/// A new order's links on SQLite, as one statement: its FQDN set, its authorizations in the order's order, and
/// the replaced serial. `$1` to `$4`, then the authorizations, then the replaced serial.
fn sqlite_order_links(order: &NewOrder, order_id: i64, authorization_ids: &[i64]) -> Statement {
    let mut writes = vec![
        "INSERT INTO order_fqdn_sets (set_hash, order_id, account_id, expires) VALUES ($2, $1, $3, $4)".to_owned(),
    ];
    let links: Vec<String> =
        (0..authorization_ids.len()).map(|position| format!("($1, ${}, {position})", 5 + position)).collect();
    if !links.is_empty() {
        writes.push(format!(
            "INSERT INTO order_authorizations (order_id, authorization_id, position) VALUES {}",
            links.join(", ")
        ));
    }
    if !order.replaces_serial.is_empty() {
        writes.push(format!("{} VALUES (${}, $1, $4, 0) {REPLACEMENT_CONFLICT}", INSERT_REPLACEMENT, 5 + links.len()));
    }
    let mut linked = Statement::new(Backend::Sqlite.one_statement(&writes))
        .int(order_id)
        .bytes(order_set_hash(order))
        .int(order.account_id)
        .int(order.expires);
    for authz_id in authorization_ids {
        linked = linked.int(*authz_id);
    }
    if !order.replaces_serial.is_empty() {
        linked = linked.text(order.replaces_serial.to_ascii_lowercase());
    }
    linked
}

fn order_set_hash(order: &NewOrder) -> Vec<u8> {
    fqdn_set_hash(order.identifiers.iter().map(|i| i.value.as_str()))
}

/// A new order as one PostgreSQL statement, its own transaction: its new authorizations and the order are CTEs
/// whose `RETURNING` rows the links take (reused authorizations first, then the new ones, in the order's order).
/// Its rows are the order's (`part` 0), then its authorizations' (`part` 1) in the order's order, each under the
/// column names its own reads use (the two share `id`, `account_id`, `expires`, `profile` and `created`), so that
/// nothing is read after the commit. One round trip where a transaction of its own and a read took six.
fn postgres_new_order(
    order: &NewOrder,
    authorization_inserts: Vec<Statement>,
    insert_order: Statement,
) -> Result<Statement, Problem> {
    let new_count = authorization_inserts.len();
    let mut parts: Vec<(String, Statement)> = authorization_inserts
        .into_iter()
        .enumerate()
        .map(|(i, insert)| (format!("new_authorization_{i}"), insert))
        .collect();
    parts.push(("created_order".to_owned(), insert_order));
    parts.push((
        "fqdn_set".to_owned(),
        Statement::new(
            "INSERT INTO order_fqdn_sets (set_hash, order_id, account_id, expires) \
             SELECT $1, id, account_id, expires FROM created_order",
        )
        .bytes(order_set_hash(order)),
    ));
    let reused = order.reused_authorization_ids.len();
    let mut linked: Vec<String> =
        (0..reused).map(|position| format!("SELECT ${}::BIGINT, {position}", position + 1)).collect();
    linked.extend((0..new_count).map(|i| format!("SELECT id, {} FROM new_authorization_{i}", reused + i)));
    let mut links = Statement::new(format!(
        "INSERT INTO order_authorizations (order_id, authorization_id, position) \
         SELECT created_order.id, linked.authorization_id, linked.position FROM created_order, \
         ({}) AS linked (authorization_id, position)",
        linked.join(" UNION ALL ")
    ));
    for id in &order.reused_authorization_ids {
        links = links.int(*id);
    }
    parts.push(("links".to_owned(), links));
    if !order.replaces_serial.is_empty() {
        let replacement = Statement::new(format!(
            "{INSERT_REPLACEMENT} SELECT $1, id, expires, 0 FROM created_order {REPLACEMENT_CONFLICT}"
        ))
        .text(order.replaces_serial.to_ascii_lowercase());
        parts.push(("replacement".to_owned(), replacement));
    }
    // The answer: the order's row, then each authorization's, every row with every column of both, NULL where it
    // is the other's. The reused authorizations are read as they are (the statement's snapshot); the new ones are
    // their INSERTs' `RETURNING` rows, which no read in the statement could see.
    let order_columns: Vec<&str> = queries::ORDER_COLUMNS.split(", ").collect();
    let authorization_columns: Vec<&str> = queries::AUTHORIZATION_COLUMNS.split(", ").collect();
    let mut columns = order_columns.clone();
    columns.extend(authorization_columns.iter().filter(|c| !order_columns.contains(c)));
    let select = |part: usize, position: &str, own: &[&str]| {
        let values: Vec<String> =
            columns.iter().map(|c| if own.contains(c) { (*c).to_owned() } else { format!("NULL AS {c}") }).collect();
        format!("SELECT {part} AS part, {position} AS position, {}", values.join(", "))
    };
    let mut answer = vec![format!("{} FROM created_order", select(0, "0", &order_columns))];
    answer.extend((0..reused).map(|position| {
        let read = select(1, &position.to_string(), &authorization_columns);
        format!("{read} FROM authorizations WHERE id = ${}", position + 1)
    }));
    answer.extend((0..new_count).map(|i| {
        format!("{} FROM new_authorization_{i}", select(1, &(reused + i).to_string(), &authorization_columns))
    }));
    let mut main = Statement::new(format!("{} ORDER BY part, position", answer.join(" UNION ALL ")));
    for id in &order.reused_authorization_ids {
        main = main.int(*id);
    }
    Statement::postgres_with(parts, main)
}

impl Store {
    /// Creates the new authorizations, the order and its links in one transaction; gives the order and its
    /// authorizations as recorded (the caller shows them next).
    pub async fn new_order_and_authorizations(&self, order: &NewOrder) -> Result<(Order, Vec<Authorization>), Problem> {
        let created = now();
        let insert_authorization = |authz: &NewAuthorization| {
            let types: Vec<&str> = authz.challenge_types.iter().map(|t| t.as_str()).collect();
            Statement::new(queries::INSERT_AUTHORIZATION)
                .int(order.account_id)
                .text(authz.identifier.kind.as_str())
                .text(&authz.identifier.value)
                .int(authz.expires)
                .text(types.join(","))
                .text(&authz.token)
                .text(&order.profile)
                .int(created)
        };
        let identifiers = serde_json::to_string(&order.identifiers).map_err(internal)?;
        let insert_order = Statement::new(queries::INSERT_ORDER)
            .int(order.account_id)
            .int(order.expires)
            .int(created)
            .text(&order.profile)
            .text(&order.replaces)
            .text(identifiers);
        let inserts: Vec<Statement> = order.new_authorizations.iter().map(insert_authorization).collect();
        let (order_row, authorization_rows) = match self.backend() {
            Backend::Sqlite => self.sqlite_new_order(order, inserts, insert_order).await?,
            Backend::Postgres => {
                let mut written = self.write_committed(&[postgres_new_order(order, inserts, insert_order)?]).await?;
                let mut rows = written.pop().unwrap_or_default().into_iter();
                (rows.next().ok_or_else(|| internal("a new order answered no row"))?, rows.collect())
            }
        };
        let authorizations = authorizations_from_rows(&authorization_rows, now())?;
        let created = order_from_row(&order_row, &authorizations, now())?;
        Ok((created, authorizations))
    }

    /// A new order's transaction on SQLite, run in place: the new authorizations and the order, then the order's
    /// links, its authorizations read back (on the connection that wrote them, the reused ones as they are now) and
    /// the commit. Gives the order's row and its authorizations' rows.
    async fn sqlite_new_order(
        &self,
        order: &NewOrder,
        mut inserts: Vec<Statement>,
        insert_order: Statement,
    ) -> Result<(Row, Vec<Row>), Problem> {
        inserts.push(insert_order);
        let (order_row, authorization_rows) = self
            .write_inline(|tx| {
                let mut inserted = inserts.iter().map(|insert| tx.run(insert)).collect::<Result<Vec<_>, _>>()?;
                let order_row = only_row(inserted.pop().unwrap_or_default())?;
                let mut authorization_ids = order.reused_authorization_ids.clone();
                for rows in inserted {
                    authorization_ids.push(get(&only_row(rows)?, "id")?);
                }
                let order_id: i64 = get(&order_row, "id")?;
                tx.run(&sqlite_order_links(order, order_id, &authorization_ids))?;
                let authorization_rows = tx.run(&order_authorizations_read(Backend::Sqlite, order_id))?;
                Ok((order_row, authorization_rows))
            })
            .await?;
        Ok((Row::Inline(order_row), authorization_rows.into_iter().map(Row::Inline).collect()))
    }

    /// Whether the certificate `serial` already has a replacement (RFC 9773 §5): a finalized replacement order, or
    /// one that can still be finalized. An expired or invalid replacement order does not count.
    pub async fn replacement_order_exists(&self, serial: &str) -> Result<bool, Problem> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT order_id, order_expires, replaced FROM replacement_orders WHERE serial = $1")
                .bind(serial.to_ascii_lowercase())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        let Some((order_id, order_expires, replaced)) = row else { return Ok(false) };
        if replaced != 0 {
            return Ok(true);
        }
        if order_expires <= now() {
            return Ok(false);
        }
        let order = self.get_order(order_id).await?;
        Ok(order.status != quarry_core::model::OrderStatus::Invalid)
    }

    pub async fn get_order(&self, id: i64) -> Result<Order, Problem> {
        self.get_order_and_authorizations(id).await.map(|(order, _)| order)
    }

    /// An order and its authorizations, read together: what finalizing it checks.
    pub async fn get_order_and_authorizations(&self, id: i64) -> Result<(Order, Vec<Authorization>), Problem> {
        let answers = self.read_together(&order_reads(self.backend(), id)).await?;
        order_from_answers(id, &answers[0], &answers[1])
    }
    /// The newest pending or ready order of the account for exactly this set of identifiers and profile.
    pub async fn get_order_for_names(
        &self,
        account_id: i64,
        identifiers: &[Identifier],
        profile: &str,
    ) -> Result<Order, Problem> {
        let read = [reuse_candidates_read(self.backend(), account_id, identifiers, profile)];
        let candidates = self.read_together(&read).await?;
        let order = self.first_reusable(&candidates[0]).await?;
        order.ok_or_else(|| Problem::not_found("no reusable order"))
    }

    /// One page of the account's orders list (RFC 8555 §7.1.2.1): the ids of its orders that are not invalid
    /// (pending, ready, processing, valid), after `after_id`, at most `limit` (1 to [`MAX_ORDER_PAGE`]), ascending.
    /// Keyset pagination over the index `orders_account_id`, so a page costs the same however far into the list it
    /// is; at most [`MAX_ORDERS_EXAMINED`] orders are looked at, so a page may hold fewer than `limit` ids and still
    /// have a next one.
    pub async fn account_orders(&self, account_id: i64, after_id: i64, limit: i64) -> Result<OrderPage, Problem> {
        if !(1..=MAX_ORDER_PAGE).contains(&limit) {
            return Err(Problem::malformed(format!("a page of orders holds 1 to {MAX_ORDER_PAGE}, not {limit}")));
        }
        // The range this page may look at: up to the last order examined, when the account has that many more.
        let last_examined: Vec<i64> = sqlx::query_scalar(LAST_ORDER_EXAMINED)
            .bind(account_id)
            .bind(after_id)
            .bind(MAX_ORDERS_EXAMINED - 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let (up_to, more_beyond) = match last_examined[..] {
            [last, _] => (last, true),
            [last] => (last, false),
            _ => (i64::MAX, false),
        };
        let now = now();
        // One more than the page: whether another listed order follows it.
        let mut order_ids: Vec<i64> = sqlx::query_scalar(LISTED_ACCOUNT_ORDERS)
            .bind(account_id)
            .bind(after_id)
            .bind(up_to)
            .bind(now)
            .bind(now)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let next_after_id = if order_ids.len() as i64 > limit {
            order_ids.truncate(limit as usize);
            order_ids.last().copied()
        } else {
            // A short page: the account's last orders, or the last of those examined with more beyond them.
            more_beyond.then_some(up_to)
        };
        Ok(OrderPage { order_ids, next_after_id })
    }

    /// Starts finalization by `owner` (an ra replica): succeeds once per order, and only when the order is ready.
    pub async fn set_order_processing(&self, id: i64, owner: &str) -> Result<(), Problem> {
        // The fuse is the conditional UPDATE alone: no transaction is held open while the order is read, so that
        // racing callers never wait on each other for a pooled connection.
        let order = self.get_order(id).await?;
        if order.status != quarry_core::model::OrderStatus::Ready {
            return Err(Problem::new(
                ErrorKind::OrderNotReady,
                format!("order's status ({:?}) is not acceptable for finalization", order.status.as_str()),
            ));
        }
        let updated = sqlx::query(
            "UPDATE orders SET began_processing = $1, processing_by = $3 WHERE id = $2 AND began_processing = 0",
        )
        .bind(now().max(1))
        .bind(id)
        .bind(owner)
        .execute(&self.writer)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated == 1 { Ok(()) } else { Err(Problem::new(ErrorKind::OrderNotReady, "order is already processing")) }
    }

    /// Marks an order failed — unless its certificate was stored meanwhile (the ca finished after its caller gave
    /// up): then the order is valid and this is a `conflict`.
    pub async fn set_order_error(&self, id: i64, problem: &Problem) -> Result<(), Problem> {
        let error = serde_json::to_string(problem).map_err(internal)?;
        let updated = sqlx::query("UPDATE orders SET error = $1 WHERE id = $2 AND certificate_serial = ''")
            .bind(error)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db_error)?
            .rows_affected();
        if updated == 1 {
            return Ok(());
        }
        let serial: Option<String> = sqlx::query_scalar("SELECT certificate_serial FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match serial {
            Some(serial) => Err(Problem::new(ErrorKind::Conflict, format!("order {id} has its certificate {serial}"))),
            None => Err(Problem::not_found(format!("order {id} not found"))),
        }
    }

    /// Records the certificate of a processing order and, in the same transaction, that the certificate it
    /// replaces (RFC 9773) is now replaced. Recording the same certificate again is accepted.
    pub async fn finalize_order(&self, id: i64, serial: &str) -> Result<(), Problem> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE orders SET certificate_serial = $1 WHERE id = $2 AND began_processing != 0 AND certificate_serial = '' AND error IS NULL",
        )
        .bind(serial)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if updated != 1 {
            // Recorded already (storing the certificate links its order; or a retry after a lost answer): done.
            drop(tx);
            let recorded: Option<String> = sqlx::query_scalar("SELECT certificate_serial FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
            if recorded.is_some_and(|recorded| recorded == serial) {
                return Ok(());
            }
            return Err(Problem::new(ErrorKind::OrderNotReady, "order is not processing"));
        }
        sqlx::query("UPDATE replacement_orders SET replaced = 1 WHERE order_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }
}

/// The reads of an order by id and of its authorizations (from which its status follows).
pub(super) fn order_reads(backend: Backend, id: i64) -> [Statement; 2] {
    [Statement::new(queries::ORDER_BY_ID).int(id), order_authorizations_read(backend, id)]
}

/// Order `id` and its authorizations from the answers to [`order_reads`]: `notFound` when there is no such order.
pub(super) fn order_from_answers(
    id: i64,
    order_rows: &[impl ReadColumn],
    authorization_rows: &[impl ReadColumn],
) -> Result<(Order, Vec<Authorization>), Problem> {
    let row = order_rows.first().ok_or_else(|| Problem::not_found(format!("order {id} not found")))?;
    let now = now();
    let authorizations = authorizations_from_rows(authorization_rows, now)?;
    let order = order_from_row(row, &authorizations, now)?;
    Ok((order, authorizations))
}

/// The read of the account's newest orders for exactly this set of identifiers and profile, not yet expired: the
/// candidates for reuse, which [`Store::first_reusable`] looks through.
pub(super) fn reuse_candidates_read(
    backend: Backend,
    account_id: i64,
    identifiers: &[Identifier],
    profile: &str,
) -> Statement {
    let sql = match backend {
        Backend::Sqlite => queries::ORDER_REUSE,
        Backend::Postgres => queries::ORDER_REUSE_POSTGRES,
    };
    Statement::new(sql)
        .int(account_id)
        .bytes(fqdn_set_hash(identifiers.iter().map(|i| i.value.as_str())))
        .int(now())
        .text(profile)
}

impl Store {
    /// The first pending or ready order among the candidates [`reuse_candidates_read`] found, if any.
    pub(super) async fn first_reusable(&self, candidates: &[impl ReadColumn]) -> Result<Option<Order>, Problem> {
        for row in candidates {
            let order = self.get_order(get(row, "order_id")?).await?;
            if matches!(order.status, quarry_core::model::OrderStatus::Pending | quarry_core::model::OrderStatus::Ready)
            {
                return Ok(Some(order));
            }
        }
        Ok(None)
    }
}

fn order_from_row(row: &impl ReadColumn, authorizations: &[Authorization], now: Timestamp) -> Result<Order, Problem> {
    let error: Option<String> = get(row, "error")?;
    let error: Option<Problem> = error.map(|e| serde_json::from_str(&e)).transpose().map_err(internal)?;
    let identifiers: String = get(row, "identifiers")?;
    let identifiers: Vec<Identifier> = serde_json::from_str(&identifiers).map_err(internal)?;
    let certificate_serial: String = get(row, "certificate_serial")?;
    let began_processing: i64 = get(row, "began_processing")?;
    let expires: i64 = get(row, "expires")?;
    let statuses: Vec<AuthorizationStatus> = authorizations.iter().map(|a| a.status).collect();
    let status = order_status(
        &OrderFacts {
            has_error: error.is_some(),
            expires,
            began_processing: began_processing != 0,
            has_certificate: !certificate_serial.is_empty(),
            authorizations: &statuses,
        },
        now,
    );
    Ok(Order {
        id: get(row, "id")?,
        account_id: get(row, "account_id")?,
        status,
        expires,
        identifiers,
        authorization_ids: authorizations.iter().map(|a| a.id).collect(),
        error,
        certificate_serial,
        created: get(row, "created")?,
        profile: get(row, "profile")?,
        replaces: get(row, "replaces")?,
        began_processing,
        not_before: get(row, "not_before")?,
        not_after: get(row, "not_after")?,
    })
}
