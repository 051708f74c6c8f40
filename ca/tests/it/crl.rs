//! GenerateCrl over gRPC: a shard's entries are signed, and a request that shows another shard count than the ca's
//! `crl_shards` (an entry of another shard, a shard the ca does not have) is refused, naming what disagrees.

use quarry_core::ErrorKind;
use quarry_core::crl::DEFAULT_SHARDS;
use quarry_proto::ca::crl_generator_client::CrlGeneratorClient;
use quarry_proto::ca::generate_crl_request::Payload;
use quarry_proto::ca::{CrlEntry, CrlMetadata, GenerateCrlRequest};
use tonic::Code;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::{Stack, read_cert};

/// A serial in `shard` of the ca's count (its last byte is the shard: 256 is a multiple of the count), told apart
/// from others of the shard by `tag`.
fn serial_in(shard: i64, tag: u8) -> String {
    assert!(shard < DEFAULT_SHARDS && 256 % DEFAULT_SHARDS == 0);
    let serial = format!("01{tag:02x}aabbccddeeff001122{shard:02x}");
    assert_eq!(quarry_core::crl::shard(&serial, DEFAULT_SHARDS), shard);
    serial
}

fn messages(issuer_id: i64, shard: i64, serials: &[String]) -> Vec<GenerateCrlRequest> {
    let now = quarry_core::clock::now();
    let metadata = Payload::Metadata(CrlMetadata { issuer_id, shard, this_update: now });
    let entries = serials
        .iter()
        .map(|serial| Payload::Entry(CrlEntry { serial: serial.clone(), reason: 1, revoked_at: now - 60 }));
    std::iter::once(metadata).chain(entries).map(|payload| GenerateCrlRequest { payload: Some(payload) }).collect()
}

/// The CRL the ca signs for `messages`, or its refusal.
async fn generate(stack: &Stack, messages: Vec<GenerateCrlRequest>) -> Result<Vec<u8>, tonic::Status> {
    let channel = stack.pki.channel("crl-updater", "ca", stack.addr);
    let mut chunks = CrlGeneratorClient::new(channel).generate_crl(futures::stream::iter(messages)).await?.into_inner();
    let mut crl = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        crl.extend_from_slice(&chunk.chunk);
    }
    Ok(crl)
}

fn issuer_id(stack: &Stack) -> i64 {
    let der = read_cert(&stack.pki.issuer_cert());
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("issuer");
    quarry_core::certificate::issuer_id(cert.subject().as_raw())
}

#[tokio::test]
async fn a_shards_entries_are_signed() {
    let stack = Stack::start().await;
    let serials = [serial_in(3, 1), serial_in(3, 2)];
    let der = generate(&stack, messages(issuer_id(&stack), 3, &serials)).await.expect("signed");
    let (_, crl) = CertificateRevocationList::from_der(&der).expect("CRL parses");
    let listed: Vec<String> = crl.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect();
    assert_eq!(listed, serials);
}

#[tokio::test]
async fn an_entry_of_another_shard_is_refused_naming_the_serial_and_both_shards() {
    let stack = Stack::start().await;
    let stray = serial_in(5, 2);
    let refused =
        generate(&stack, messages(issuer_id(&stack), 3, &[serial_in(3, 1), stray.clone()])).await.expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(quarry_core::Problem::from(refused.clone()).kind, ErrorKind::Misconfigured);
    let detail = refused.message();
    let named = format!(
        "revoked serial {stray} belongs to CRL shard 5 under the ca's crl_shards {DEFAULT_SHARDS}, not to the \
         requested shard 3"
    );
    assert!(detail.contains(&named), "{detail}");
}

#[tokio::test]
async fn a_shard_beyond_the_cas_count_is_refused() {
    let stack = Stack::start().await;
    for shard in [DEFAULT_SHARDS, -1] {
        let refused = generate(&stack, messages(issuer_id(&stack), shard, &[])).await.expect_err("refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{shard}: {refused:?}");
        let detail = refused.message();
        assert!(detail.contains(&format!("CRL shard {shard} is not one of the ca's crl_shards {DEFAULT_SHARDS}")));
    }
}
