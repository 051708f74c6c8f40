//! One DNS question asked of one server, as the va's lookups need it: over UDP, again over TCP when the answer comes
//! back truncated, with every reply checked against its question so that a forged datagram is dropped, not believed.
//!
//! The va used hickory's full resolver for this: a name-server pool, shared lookups and a response cache, for one
//! server and no caching, five questions per perspective and validation. This client cut the whole stack's CPU per
//! certificate by 6.8 % at 4 clients (docs/performance.md). Boulder's va, likewise, asks its configured resolver
//! through a small client of its own rather than a resolver library.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN), or has no records of the type asked for.
    NotFound,
    /// The resolver failed; the text (`SERVFAIL`, `timeout`, ...) is fit for a problem detail.
    Failed(String),
}

/// The UDP payload advertised with EDNS(0): the size the DNS flag day of 2020 settled on, small enough not to be
/// fragmented on any path; a larger answer comes back truncated and is asked again over TCP.
const UDP_PAYLOAD: u16 = 1232;

/// Asks one server, `attempts` times at most, each attempt bounded by `timeout` (and its TCP retry by another).
#[derive(Debug, Clone)]
pub struct DnsExchange {
    server: SocketAddr,
    timeout: Duration,
    attempts: u32,
}

/// Why one attempt got no answer.
enum Miss {
    TimedOut,
    Network(std::io::Error),
}

impl DnsExchange {
    pub fn new(server: SocketAddr, timeout: Duration, attempts: u32) -> Self {
        Self { server, timeout, attempts: attempts.max(1) }
    }

    /// The answer section for `name` (fully qualified or not) and `record_type`: NXDOMAIN is `NotFound`, a
    /// successful answer without records of the type is an empty list, and any other response code, a timeout or a
    /// network failure is `Failed`, worded as dig would.
    pub async fn ask(&self, name: &str, record_type: RecordType) -> Result<Vec<Record>, LookupError> {
        let name = Name::from_utf8(name).map_err(|_| LookupError::Failed(format!("invalid name {name:?}")))?;
        let mut miss = Miss::TimedOut;
        for _ in 0..self.attempts {
            let question = Question::new(&name, record_type);
            match self.attempt(&question).await {
                Ok(reply) => return outcome(reply),
                Err(this) => miss = this,
            }
        }
        Err(match miss {
            Miss::TimedOut => LookupError::Failed("timeout".to_owned()),
            Miss::Network(err) => {
                tracing::debug!(server = %self.server, error = %err, "dns query failed");
                LookupError::Failed("networking error".to_owned())
            }
        })
    }

    async fn attempt(&self, question: &Question) -> Result<Message, Miss> {
        let reply = within(self.timeout, self.over_udp(question)).await?;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        within(self.timeout, self.over_tcp(question)).await
    }

    /// A socket of its own per question, connected to the server: the kernel picks a random source port and drops
    /// datagrams from anyone else, and a reply that does not match the question is skipped while the wait lasts.
    async fn over_udp(&self, question: &Question) -> std::io::Result<Message> {
        let local: SocketAddr = if self.server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(self.server).await?;
        socket.send(&question.wire).await?;
        let mut buffer = vec![0u8; 4096];
        loop {
            let len = socket.recv(&mut buffer).await?;
            match Message::from_vec(&buffer[..len]) {
                Ok(reply) if question.answered_by(&reply) => return Ok(reply),
                _ => tracing::debug!(server = %self.server, "dns reply not matching its question dropped"),
            }
        }
    }

    async fn over_tcp(&self, question: &Question) -> std::io::Result<Message> {
        let mut stream = TcpStream::connect(self.server).await?;
        stream.set_nodelay(true)?;
        let len = u16::try_from(question.wire.len()).map_err(std::io::Error::other)?;
        let mut framed = Vec::with_capacity(question.wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&question.wire);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buffer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buffer).await?;
        match Message::from_vec(&buffer) {
            Ok(reply) if question.answered_by(&reply) => Ok(reply),
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "reply does not match its question")),
        }
    }
}

/// A query as sent, with what its reply must echo.
struct Question {
    id: u16,
    query: Query,
    wire: Vec<u8>,
}

impl Question {
    /// A fresh random id for every attempt, recursion desired, EDNS(0) with [`UDP_PAYLOAD`].
    fn new(name: &Name, record_type: RecordType) -> Self {
        let mut id = [0u8; 2];
        // The id is half of what keeps a forged reply out (the random source port is the other): never a constant.
        aws_lc_rs::rand::fill(&mut id).expect("the system's random generator works");
        let id = u16::from_be_bytes(id);
        let query = Query::query(name.clone(), record_type);
        let mut message = Message::new(id, MessageType::Query, hickory_proto::op::OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        message.edns = Some(edns);
        let wire = message.to_vec().expect("a query for a parsed name encodes");
        Self { id, query, wire }
    }

    /// The same id, a response, and the same single question (names compare without regard to case).
    fn answered_by(&self, reply: &Message) -> bool {
        reply.metadata.id == self.id
            && reply.metadata.message_type == MessageType::Response
            && reply.queries.len() == 1
            && reply.queries[0].name() == self.query.name()
            && reply.queries[0].query_type() == self.query.query_type()
    }
}

async fn within<T>(limit: Duration, io: impl Future<Output = std::io::Result<T>>) -> Result<T, Miss> {
    match tokio::time::timeout(limit, io).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Miss::Network(err)),
        Err(_) => Err(Miss::TimedOut),
    }
}

fn outcome(reply: Message) -> Result<Vec<Record>, LookupError> {
    match reply.metadata.response_code {
        ResponseCode::NoError => Ok(reply.answers),
        ResponseCode::NXDomain => Err(LookupError::NotFound),
        code => Err(LookupError::Failed(response_code_name(code))),
    }
}

/// The mnemonic operators know from dig, rather than the library's prose.
fn response_code_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        other => format!("rcode {}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use hickory_proto::op::OpCode;
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::A;

    fn reply_to(query: &[u8], id_offset: u16, records: usize, truncated: bool) -> Vec<u8> {
        let query = Message::from_vec(query).unwrap();
        let mut reply = Message::response(query.metadata.id.wrapping_add(id_offset), OpCode::Query);
        reply.metadata.truncation = truncated;
        let name = query.queries[0].name().clone();
        reply.add_query(query.queries[0].clone());
        for i in 0..records {
            reply.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, i as u8))));
        }
        reply.to_vec().unwrap()
    }

    /// A server on loopback that answers each UDP query first with a forged reply (wrong id), then with one that
    /// says it is truncated; over TCP it gives the whole answer. Returns its address and how many queries it saw.
    async fn forging_then_truncating_server() -> (SocketAddr, tokio::task::JoinHandle<usize>) {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
            let query = buffer[..len].to_vec();
            udp.send_to(&reply_to(&query, 1, 1, false), from).await.unwrap();
            udp.send_to(&reply_to(&query, 0, 0, true), from).await.unwrap();
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut query = vec![0u8; usize::from(len)];
            stream.read_exact(&mut query).await.unwrap();
            let reply = reply_to(&query, 0, 3, false);
            stream.write_all(&(reply.len() as u16).to_be_bytes()).await.unwrap();
            stream.write_all(&reply).await.unwrap();
            2
        });
        (addr, server)
    }

    #[tokio::test]
    async fn a_forged_reply_is_dropped_and_a_truncated_one_asked_again_over_tcp() {
        let (addr, server) = forging_then_truncating_server().await;
        let exchange = DnsExchange::new(addr, Duration::from_secs(5), 1);
        let records = exchange.ask("Example.ORG.", RecordType::A).await.expect("answered over TCP");
        // The forged reply had one record and the truncated one none: the three are TCP's.
        assert_eq!(records.len(), 3);
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_after_every_attempt() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let exchange = DnsExchange::new(silent.local_addr().unwrap(), Duration::from_millis(100), 2);
        let started = std::time::Instant::now();
        let outcome = exchange.ask("example.org", RecordType::CAA).await;
        assert_eq!(outcome, Err(LookupError::Failed("timeout".into())));
        assert!(started.elapsed() >= Duration::from_millis(200), "both attempts waited");
        // Both attempts reached the server, each its own question.
        let mut buffer = [0u8; 512];
        for _ in 0..2 {
            let (len, _) = silent.recv_from(&mut buffer).await.unwrap();
            let query = Message::from_vec(&buffer[..len]).expect("a query");
            assert_eq!(query.queries[0].query_type(), RecordType::CAA);
            assert!(query.metadata.recursion_desired);
            assert_eq!(query.edns.as_ref().map(Edns::max_payload), Some(UDP_PAYLOAD));
        }
    }

    #[test]
    fn response_codes_read_like_dig() {
        let coded = |code| {
            let mut reply = Message::response(1, OpCode::Query);
            reply.metadata.response_code = code;
            outcome(reply)
        };
        assert_eq!(coded(ResponseCode::ServFail), Err(LookupError::Failed("SERVFAIL".into())));
        assert_eq!(coded(ResponseCode::Refused), Err(LookupError::Failed("REFUSED".into())));
        assert_eq!(coded(ResponseCode::NXDomain), Err(LookupError::NotFound));
        assert_eq!(coded(ResponseCode::NoError), Ok(vec![]));
    }
}
