//! The wfe as a real HTTP server in front of real ra, sa, ca and nonce services over mutual TLS (and a fake va),
//! driven by the project's own ACME client: resources, headers, and the JWS checks with the right problem types.

mod account_orders;
mod caa;
mod client_testing;
mod concurrency;
mod external_accounts;
mod harness;
mod held_polls;
mod https;
mod issued_certificates;
mod jws_checks;
mod profiles_and_renewal;
mod rate_limits;
mod resources;
mod revocation;
mod shown_authorizations;
