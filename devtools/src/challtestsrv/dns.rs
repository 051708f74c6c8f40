//! The challenge test server's DNS side: authoritative answers from the mock data, over UDP and TCP on one port.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::error::Error;
use super::state::{CaaPolicy, ChallTestSrv, DnsQuestion, DnsRequestEvent, State, host_key};

/// Records live for 0 seconds: tests change the data between queries and must never see a cached answer.
const TTL: u32 = 0;
/// Aliases followed before giving up, so that a CNAME loop set up by a test cannot hang the server.
const MAX_CNAME_HOPS: usize = 8;
/// The EDNS payload size advertised in answers (the DNS flag day 2020 value, safe from fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
/// Largest UDP request read; anything bigger than any sane query is cut and fails to parse.
const UDP_BUFFER: usize = 4096;
/// How long an idle TCP connection is kept, and how long one message may take to arrive or leave.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often binding a TCP listener on the port the OS picked for UDP is retried with a fresh port.
const BIND_ATTEMPTS: usize = 16;
/// The UDP socket's receive buffer asked for. A loaded dev stack's vas send bursts of questions (every perspective
/// asks A, AAAA and each name of the CAA climb at once): at 64 clients they overflowed Linux's default of about
/// 200 KiB (a few hundred queries) while the stack held both CPUs, and every question lost cost its va a query
/// timeout. The kernel grants at most `net.core.rmem_max`.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Binds UDP and TCP on the same address; with port 0, on the same port the OS picks.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let bind_err = |protocol, addr, source| Error::Bind { what: "DNS", protocol, addr, source };
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await.map_err(|err| bind_err("UDP", addr, err))?;
        if let Err(err) = socket2::SockRef::from(&udp).set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
            tracing::debug!(error = %err, "challtestsrv: the DNS socket keeps its default receive buffer");
        }
        let udp_addr = udp.local_addr().map_err(|err| bind_err("UDP", addr, err))?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port picked for UDP may be taken for TCP; another pick will do.
            Err(err) if addr.port() == 0 && err.kind() == io::ErrorKind::AddrInUse => continue,
            Err(err) => return Err(bind_err("TCP", udp_addr, err)),
        }
    }
    Err(bind_err("TCP", addr, io::Error::new(io::ErrorKind::AddrInUse, "no port free for both UDP and TCP")))
}

pub(crate) async fn serve_udp(socket: UdpSocket, srv: ChallTestSrv) {
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!(error = %err, "challtestsrv: DNS UDP receive failed");
                // Some errors repeat at once (ICMP feedback, resource limits); pausing keeps this from spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(response) = respond(&srv, &buf[..len], Transport::Udp)
            && let Err(err) = socket.send_to(&response, peer).await
        {
            tracing::debug!(error = %err, %peer, "challtestsrv: DNS UDP send failed");
        }
    }
}

pub(crate) async fn serve_tcp(listener: TcpListener, srv: ChallTestSrv) {
    // Connections live in this set, so aborting the server task closes them too.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(serve_tcp_connection(stream, srv.clone()));
            }
            Err(err) => {
                tracing::debug!(error = %err, "challtestsrv: DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, srv: ChallTestSrv) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
        let mut request = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut request)).await else { return };
        let Some(response) = respond(&srv, &request, Transport::Tcp) else { continue };
        let Ok(len) = u16::try_from(response.len()) else { return };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await, Ok(Ok(()))) {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The wire-format answer to a wire-format request, or `None` when nothing should be sent back.
fn respond(srv: &ChallTestSrv, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = match Message::from_vec(request) {
        Ok(request) => request,
        Err(_) => return format_error(request),
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let response = answer(srv, &request);
    let encoded = response.to_vec().ok()?;
    let limit = match (&request.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => usize::from(edns.max_payload().max(512)),
        (None, Transport::Udp) => 512,
    };
    if encoded.len() <= limit {
        Some(encoded)
    } else {
        // Too big for the client's buffer: it retries over TCP on seeing the TC bit.
        response.truncate().to_vec().ok()
    }
}

/// A FORMERR for a request whose header is readable, so the client fails at once instead of timing out.
fn format_error(request: &[u8]) -> Option<Vec<u8>> {
    let header: &[u8; 12] = request.get(..12)?.try_into().ok()?;
    // Never answer a response: two servers pointed at each other would bounce errors forever.
    if header[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok()
}

pub(crate) fn answer(srv: &ChallTestSrv, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    // The server answers for every name, as a recursive resolver would; stub resolvers warn when RA is clear.
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return response;
    }

    let mut state = srv.lock();
    for query in &request.queries {
        state.record_dns(DnsRequestEvent {
            question: DnsQuestion {
                name: query.name().to_ascii(),
                qtype: query.query_type().into(),
                qclass: query.query_class().into(),
            },
        });
        match resolve(&state, query) {
            Ok(records) => {
                response.add_answers(records);
            }
            Err(code) => response.metadata.response_code = code,
        }
    }
    drop(state);

    if response.answers.is_empty() && response.metadata.response_code == ResponseCode::NoError {
        // An SOA with a zero minimum tells caching resolvers not to remember that the records are absent.
        response.add_authority(mock_soa());
    }
    response
}

/// The answer records for one question: the CNAME chain from the asked name, then the records of its end.
fn resolve(state: &State, query: &Query) -> Result<Vec<Record>, ResponseCode> {
    let qtype = query.query_type();
    let mut answers = Vec::new();
    // The mock data is Internet-class; a CHAOS `version.bind` probe, say, finds nothing.
    if query.query_class() != DNSClass::IN {
        return Ok(answers);
    }
    // The owner keeps the case the client asked with; clients using 0x20 randomisation compare it.
    let mut owner = query.name().clone();
    for _ in 0..=MAX_CNAME_HOPS {
        let key = host_key(&owner.to_ascii());
        if state.servfail.contains(&key) {
            return Err(ResponseCode::ServFail);
        }
        if let Some(target) = state.cname.get(&key) {
            answers.push(Record::from_rdata(owner, TTL, RData::CNAME(CNAME(target.clone()))));
            if qtype == RecordType::CNAME {
                return Ok(answers);
            }
            owner = target.clone();
            continue;
        }
        answers.extend(records_at(state, &owner, &key, qtype));
        return Ok(answers);
    }
    // An alias loop: the chain so far is all there is, and the client's own loop detection takes over.
    Ok(answers)
}

fn records_at(state: &State, owner: &Name, key: &str, qtype: RecordType) -> Vec<Record> {
    let record = |rdata| Record::from_rdata(owner.clone(), TTL, rdata);
    // An address asked as a name is a client bug; answering it with the default address would hide that.
    let is_ip_literal = key.parse::<IpAddr>().is_ok();
    match qtype {
        RecordType::A if !is_ip_literal => match state.a.get(key) {
            Some(addresses) if !addresses.is_empty() => addresses.iter().map(|ip| record(RData::A(A(*ip)))).collect(),
            _ => state.default_ipv4.map(|ip| record(RData::A(A(ip)))).into_iter().collect(),
        },
        RecordType::AAAA if !is_ip_literal => match state.aaaa.get(key) {
            Some(addresses) if !addresses.is_empty() => {
                addresses.iter().map(|ip| record(RData::AAAA(AAAA(*ip)))).collect()
            }
            _ => state.default_ipv6.map(|ip| record(RData::AAAA(AAAA(ip)))).into_iter().collect(),
        },
        RecordType::TXT => {
            state.txt.get(key).into_iter().flatten().map(|value| record(RData::TXT(txt(value)))).collect()
        }
        RecordType::CAA => {
            state.caa.get(key).into_iter().flatten().map(|policy| record(RData::CAA(caa(policy)))).collect()
        }
        _ => Vec::new(),
    }
}

/// A TXT record holding `value`, in as many 255-byte character-strings as it takes; readers concatenate them.
fn txt(value: &str) -> TXT {
    let chunks: Vec<&[u8]> = value.as_bytes().chunks(255).collect();
    if chunks.is_empty() { TXT::from_bytes(vec![b""]) } else { TXT::from_bytes(chunks) }
}

fn caa(policy: &CaaPolicy) -> CAA {
    // CAA is non-exhaustive; starting from a constructor and overwriting the public fields carries the tag and the
    // value verbatim, whatever their syntax.
    let mut caa = CAA::new_issue(false, None, Vec::new());
    caa.issuer_critical = policy.flags & 0b1000_0000 != 0;
    caa.reserved_flags = policy.flags & 0b0111_1111;
    caa.tag = policy.tag.clone();
    caa.value = policy.value.as_bytes().to_vec();
    caa
}

fn mock_soa() -> Record {
    let name = |s: &str| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    let soa = SOA::new(name("ns.challtestsrv.invalid."), name("master.challtestsrv.invalid."), 1, 1, 1, 1, 0);
    Record::from_rdata(name("challtestsrv.invalid."), TTL, RData::SOA(soa))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ask(srv: &ChallTestSrv, name: &str, qtype: RecordType) -> Message {
        ask_in_class(srv, name, qtype, DNSClass::IN)
    }

    fn ask_in_class(srv: &ChallTestSrv, name: &str, qtype: RecordType, class: DNSClass) -> Message {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        let mut query = Query::query(Name::from_ascii(name).unwrap(), qtype);
        query.set_query_class(class);
        request.add_query(query);
        let bytes = respond(srv, &request.to_vec().unwrap(), Transport::Udp).unwrap();
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert!(response.metadata.authoritative);
        response
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_udp_socket_holds_a_burst_of_questions() {
        let (udp, _tcp) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        // Linux reports twice what was granted (its bookkeeping included); the grant is capped at `rmem_max`.
        let most = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse::<usize>().unwrap();
        let granted = socket2::SockRef::from(&udp).recv_buffer_size().unwrap();
        assert!(granted >= 2 * UDP_RECEIVE_BUFFER.min(most), "{granted} bytes (rmem_max {most})");
    }

    #[test]
    fn answers_default_and_per_host_addresses() {
        let srv = ChallTestSrv::new(Some(Ipv4Addr::LOCALHOST), None);
        let response = ask(&srv, "Anything.Example.", RecordType::A);
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
        // The owner keeps the asked case.
        assert_eq!(response.answers[0].name.to_ascii(), "Anything.Example.");

        let response = ask(&srv, "anything.example.", RecordType::AAAA);
        assert!(response.answers.is_empty());
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.authorities.len(), 1);

        srv.add_a("host.example", [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]);
        srv.add_aaaa("host.example.", [Ipv6Addr::LOCALHOST]);
        assert_eq!(ask(&srv, "HOST.example.", RecordType::A).answers.len(), 2);
        assert_eq!(
            ask(&srv, "host.example.", RecordType::AAAA).answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))
        );

        srv.set_default_ipv4(None);
        assert!(ask(&srv, "other.example.", RecordType::A).answers.is_empty());
    }

    #[test]
    fn other_types_and_classes_get_empty_answers() {
        let srv = ChallTestSrv::new(Some(Ipv4Addr::LOCALHOST), None);
        for response in [
            ask(&srv, "example.com.", RecordType::MX),
            ask_in_class(&srv, "version.bind.", RecordType::TXT, DNSClass::CH),
            ask_in_class(&srv, "example.com.", RecordType::A, DNSClass::CH),
        ] {
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert!(response.answers.is_empty());
        }
        // Asked all the same.
        assert_eq!(srv.dns_request_history("version.bind")[0].question.qclass, 3);
    }

    #[test]
    fn long_txt_values_are_split_into_character_strings() {
        let value = "x".repeat(300);
        let txt = txt(&value);
        assert_eq!(txt.txt_data.len(), 2);
        assert_eq!(txt.txt_data.concat(), value.as_bytes());
    }

    #[test]
    fn caa_records_carry_flags_tag_and_value() {
        let srv = ChallTestSrv::default();
        srv.add_caa("example.org", [CaaPolicy { flags: 128, tag: "issue".into(), value: "quarry.test; x=y".into() }])
            .unwrap();
        let response = ask(&srv, "example.org.", RecordType::CAA);
        let RData::CAA(caa) = &response.answers[0].data else { panic!("not a CAA record") };
        assert_eq!(caa.flags(), 128);
        assert_eq!(caa.tag, "issue");
        assert_eq!(caa.value, b"quarry.test; x=y");
    }

    #[test]
    fn cname_loops_end() {
        let srv = ChallTestSrv::default();
        srv.set_cname("a.example", "b.example").unwrap();
        srv.set_cname("b.example", "a.example").unwrap();
        let response = ask(&srv, "a.example.", RecordType::A);
        assert_eq!(response.answers.len(), MAX_CNAME_HOPS + 1);
    }

    #[test]
    fn big_udp_answers_are_truncated() {
        let srv = ChallTestSrv::default();
        for i in 0..20 {
            srv.set_txt("big.example", &format!("{i:0>60}"));
        }
        let response = ask(&srv, "big.example.", RecordType::TXT);
        assert!(response.metadata.truncation);
        assert!(response.answers.is_empty());
    }

    #[test]
    fn garbage_gets_a_format_error_and_responses_get_nothing() {
        let srv = ChallTestSrv::default();
        let reply = respond(&srv, &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], Transport::Udp).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(respond(&srv, &[0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], Transport::Udp).is_none());
        assert!(respond(&srv, &[1, 2, 3], Transport::Udp).is_none());
    }
}
