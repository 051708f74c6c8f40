//! The download that follows a finalize is served from the certificate its answer issued (`[certificate_cache]`):
//! the chain a read of the sa gives, refused to another account as a read is, and served once.

use quarry_jose::Algorithm;
use quarry_testkit::client::AcmeAccount;

use crate::harness::{Stack, csr};

/// Issues a certificate for `name` to `account`: gives its URL.
async fn issued(stack: &Stack, account: &AcmeAccount, name: &str) -> String {
    let der = quarry_jose::b64_decode(&csr(&[name])).unwrap();
    let done = stack.finalize(account, &[name], &der).await;
    assert_eq!(done.json()["status"], "valid", "{}", String::from_utf8_lossy(&done.body));
    done.json()["certificate"].as_str().unwrap().to_owned()
}

/// Issues two certificates: downloads the first twice as its account, and lets another account try the second
/// before its own account downloads it. Gives the four statuses and the first's two downloads.
async fn downloads(cache_ttl_ms: u64) -> ([u16; 4], [Vec<u8>; 2]) {
    let stack = Stack::start_with(|wfe| wfe.certificate_cache.ttl_ms = cache_ttl_ms).await;
    stack.va.pass();
    let account = stack.account(Algorithm::Es256).await;
    let url = issued(&stack, &account, "issued.example.org").await;
    let first = stack.client.post(&account, &url, None).await.unwrap();
    let second = stack.client.post(&account, &url, None).await.unwrap();
    let url = issued(&stack, &account, "other.example.org").await;
    let other = stack.account(Algorithm::Es256).await;
    let refused = stack.client.post(&other, &url, None).await.unwrap();
    let own = stack.client.post(&account, &url, None).await.unwrap();
    ([first.status, second.status, refused.status, own.status], [first.body, second.body])
}

#[tokio::test]
async fn the_download_after_a_finalize_is_what_a_read_gives_and_refused_to_another_account() {
    let (statuses, [from_copy, from_read]) = downloads(30_000).await;
    assert_eq!(statuses, [200, 200, 403, 200]);
    assert_eq!(from_copy, from_read, "the copy and the sa's read give the same chain");
    let pem = String::from_utf8_lossy(&from_copy);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf and issuer: {pem}");
    let (without_copies, [first, second]) = downloads(0).await;
    assert_eq!(without_copies, statuses);
    assert_eq!(first, second);
}
