//! The account's orders list (RFC 8555 §7.1.2.1) as a client sees it: the `orders` URL of the account, pages of
//! order URLs linked by `rel="next"`, and who may read them how.

use quarry_jose::Algorithm;
use quarry_testkit::client::{AcmeAccount, HttpResponse};
use serde_json::json;

use crate::harness::{Stack, csr};

/// The `rel="next"` URL of a response, if it has one.
fn next_link(response: &HttpResponse) -> Option<String> {
    let links = response.headers_all("link");
    let next = links.iter().find_map(|link| link.strip_suffix(";rel=\"next\""))?;
    Some(next.trim_start_matches('<').trim_end_matches('>').to_owned())
}

/// The order URLs of a page.
fn orders_of(page: &HttpResponse) -> Vec<String> {
    let orders = page.json()["orders"].as_array().unwrap_or_else(|| panic!("{}", page.json())).clone();
    orders.iter().map(|url| url.as_str().expect("an order URL").to_owned()).collect()
}

/// Pages of two: the account's orders but the invalid one, in creation order, every `next` link followed to the
/// end; another account's order is not there. Past the end is an empty page. Only the account itself reads its list,
/// with POST-as-GET, signing the page's URL query and all.
#[tokio::test]
async fn an_accounts_orders_come_in_pages_linked_by_next() {
    let stack = Stack::start_with(|config| config.orders_per_page = 2).await;
    let account = stack.account(Algorithm::Es256).await;
    let other = stack.account(Algorithm::Es256).await;
    let account_url = account.url.clone().unwrap();
    let orders_url = format!("{account_url}/orders");
    let shown = stack.client.post(&account, &account_url, None).await.unwrap().json();
    assert_eq!(shown["orders"], json!(orders_url), "{shown}");

    let (pending, _) = stack.order(&account, &["pending.list.example.org"]).await;
    let (invalid, order) = stack.order(&account, &["invalid.list.example.org"]).await;
    let authorization = order["authorizations"][0].as_str().unwrap();
    let deactivate = json!({"status": "deactivated"});
    assert_eq!(stack.client.post(&account, authorization, Some(&deactivate)).await.unwrap().status, 200);
    let invalidated = stack.client.post(&account, &invalid, None).await.unwrap().json();
    assert_eq!(invalidated["status"], "invalid", "{invalidated}");
    let (others, _) = stack.order(&other, &["other.list.example.org"]).await;
    let (ready, order) = stack.order(&account, &["ready.list.example.org"]).await;
    stack.make_ready(&account, &ready, &order).await;
    let (valid, order) = stack.order(&account, &["valid.list.example.org"]).await;
    stack.make_ready(&account, &valid, &order).await;
    let finalize = order["finalize"].as_str().unwrap();
    let payload = json!({"csr": csr(&["valid.list.example.org"])});
    let issued = stack.client.post(&account, finalize, Some(&payload)).await.unwrap().json();
    assert_eq!(issued["status"], "valid", "{issued}");
    let (last, _) = stack.order(&account, &["last.list.example.org"]).await;

    let mut pages = Vec::new();
    let mut url = orders_url.clone();
    loop {
        let page = stack.client.post(&account, &url, None).await.unwrap();
        assert_eq!(page.status, 200, "{url}: {}", String::from_utf8_lossy(&page.body));
        assert_eq!(page.header("content-type").as_deref(), Some("application/json"));
        assert!(page.headers_all("link").iter().any(|link| link.ends_with("rel=\"index\"")), "{url}");
        pages.push(orders_of(&page));
        let Some(next) = next_link(&page) else { break };
        assert!(next.starts_with(&format!("{orders_url}?cursor=")), "{next}");
        url = next;
    }
    assert_eq!(pages, [vec![pending.clone(), ready.clone()], vec![valid.clone(), last.clone()]]);
    assert!(!pages.concat().contains(&others));

    // Past the end: nothing more, and no next page.
    let last_id = last.rsplit('/').next().unwrap();
    let past = stack.client.post(&account, &format!("{orders_url}?cursor={last_id}"), None).await.unwrap();
    assert_eq!((past.status, past.json()), (200, json!({"orders": []})));
    assert_eq!(next_link(&past), None);

    // Another account's list: refused as for any resource of another account.
    let foreign = stack.client.post(&other, &orders_url, None).await.unwrap();
    assert_eq!((foreign.status, foreign.problem_type().as_deref()), (403, Some("unauthorized")));
    // Only POST-as-GET: any payload is malformed.
    let with_payload = stack.client.post(&account, &orders_url, Some(&json!({}))).await.unwrap();
    assert_eq!((with_payload.status, with_payload.problem_type().as_deref()), (400, Some("malformed")));
    // Neither a plain GET.
    let plain = stack.client.request(http::Method::GET, &orders_url, None, Vec::new()).await.unwrap();
    assert_eq!((plain.status, plain.header("allow").as_deref()), (405, Some("POST")));
    // A cursor is only what a next link says.
    for query in ["cursor=first", "cursor=-1", "page=2"] {
        let made_up = stack.client.post(&account, &format!("{orders_url}?{query}"), None).await.unwrap();
        assert_eq!(made_up.problem_type().as_deref(), Some("malformed"), "{query}");
    }
    // The JWS names the page it asks for, query included: one signed for the first page does not read another.
    let second_page = format!("{orders_url}?cursor={}", ready.rsplit('/').next().unwrap());
    let signed_for_the_first = account.sign(&orders_url, &stack.client.nonce().await.unwrap(), None);
    let replayed = stack.client.post_body(&second_page, signed_for_the_first).await.unwrap();
    assert_eq!((replayed.status, replayed.problem_type().as_deref()), (403, Some("unauthorized")));
}

/// A new account's list is one empty page; an account key that signs for no account reads none.
#[tokio::test]
async fn a_new_account_has_an_empty_list_and_a_stranger_none() {
    let stack = Stack::start().await;
    let account = stack.account(Algorithm::Es384).await;
    let orders_url = format!("{}/orders", account.url.clone().unwrap());
    let empty = stack.client.post(&account, &orders_url, None).await.unwrap();
    assert_eq!((empty.status, empty.json()), (200, json!({"orders": []})));
    assert_eq!(next_link(&empty), None);

    let mut stranger = AcmeAccount::generate(Algorithm::Es256);
    stranger.url = Some(format!("{}/acme/acct/999999", stack.base));
    let unknown = stack.client.post(&stranger, &format!("{}/orders", stranger.url.clone().unwrap()), None).await;
    assert_eq!(unknown.unwrap().problem_type().as_deref(), Some("accountDoesNotExist"));
}
