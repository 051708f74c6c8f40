//! One DNS question asked of one server, as the va's lookups need it: over UDP, again over TCP when the answer comes
//! back truncated, with every reply checked against its question so that a forged datagram is dropped, not believed.
//!
//! The va used hickory's full resolver for this: a name-server pool, shared lookups and a response cache, for one
//! server and no caching, five questions per perspective and validation. This client cut the whole stack's CPU per
//! certificate by 6.8 % at 4 clients (docs/performance.md). Boulder's va, likewise, asks its configured resolver
//! through a small client of its own rather than a resolver library.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
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

/// At most this many questions follow one CNAME chain past the first answer, as hickory's resolver allowed: a
/// resolver normally answers with the whole chain, but one that stops part-way leaves the rest to its client.
const MOST_CHAIN_QUESTIONS: usize = 8;

/// Asks one server, `attempts` times at most, each attempt (over UDP, and over TCP after a truncated answer) bounded
/// by `timeout` in all.
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
    /// A reply carrying the question's id that does not parse, or a TCP reply not answering the question.
    Malformed,
}

impl DnsExchange {
    pub fn new(server: SocketAddr, timeout: Duration, attempts: u32) -> Self {
        Self { server, timeout, attempts: attempts.max(1) }
    }

    /// The records of `record_type` for `name` (fully qualified or not), CNAMEs followed: only records owned by the
    /// name or by a name its chain of aliases leads to count, and a chain the answer leaves unfinished is asked on
    /// from where it stops. NXDOMAIN is `NotFound`; an answer without records of the type is an empty list; any other
    /// response code, a timeout, a network failure or a malformed reply is `Failed`, worded as dig would.
    pub async fn lookup(&self, name: &str, record_type: RecordType) -> Result<Vec<Record>, LookupError> {
        let mut owner = Name::from_utf8(name).map_err(|_| LookupError::Failed(format!("invalid name {name:?}")))?;
        let mut aliases = Vec::new();
        for _ in 0..=MOST_CHAIN_QUESTIONS {
            let answers = self.ask(&owner, record_type).await?;
            match follow_chain(owner, record_type, answers, &mut aliases) {
                Chain::Records(records) => return Ok(records),
                Chain::ContinuesAt(target) => owner = target,
            }
        }
        Err(LookupError::Failed("CNAME chain too long".to_owned()))
    }

    /// The answer section to one question, after at most `attempts` attempts.
    async fn ask(&self, name: &Name, record_type: RecordType) -> Result<Vec<Record>, LookupError> {
        let mut miss = Miss::TimedOut;
        for _ in 0..self.attempts {
            let question = Question::new(name, record_type);
            match within(self.timeout, self.attempt(&question)).await {
                Ok(reply) => return outcome(reply),
                Err(this) => miss = this,
            }
        }
        Err(match miss {
            Miss::TimedOut => LookupError::Failed("timeout".to_owned()),
            Miss::Malformed => LookupError::Failed("malformed reply".to_owned()),
            Miss::Network(err) => {
                tracing::debug!(server = %self.server, error = %err, "dns query failed");
                LookupError::Failed("networking error".to_owned())
            }
        })
    }

    async fn attempt(&self, question: &Question) -> Result<Message, Miss> {
        let reply = self.over_udp(question).await?;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        self.over_tcp(question).await
    }

    /// A socket of its own per question, connected to the server: the kernel picks a random source port and drops
    /// datagrams from anyone else. A datagram with another id, or not answering the question, is skipped while the
    /// wait lasts; one with the question's id that does not parse ends the attempt.
    async fn over_udp(&self, question: &Question) -> Result<Message, Miss> {
        let local: SocketAddr = if self.server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local).await.map_err(Miss::Network)?;
        socket.connect(self.server).await.map_err(Miss::Network)?;
        socket.send(&question.wire).await.map_err(Miss::Network)?;
        // As large as a datagram can be, so that a server ignoring the advertised size is not cut short; filled
        // without being zeroed first, as most of it never is.
        let mut buffer = Vec::with_capacity(usize::from(u16::MAX));
        loop {
            buffer.clear();
            socket.recv_buf(&mut buffer).await.map_err(Miss::Network)?;
            let datagram = buffer.as_slice();
            if datagram.len() < 2 || u16::from_be_bytes([datagram[0], datagram[1]]) != question.id {
                tracing::debug!(server = %self.server, "dns reply with another id dropped");
                continue;
            }
            match Message::from_vec(datagram) {
                Ok(reply) if question.answered_by(&reply) => return Ok(reply),
                Ok(_) => tracing::debug!(server = %self.server, "dns reply not answering its question dropped"),
                Err(_) => return Err(Miss::Malformed),
            }
        }
    }

    async fn over_tcp(&self, question: &Question) -> Result<Message, Miss> {
        let mut stream = TcpStream::connect(self.server).await.map_err(Miss::Network)?;
        quarry_core::tcp::no_delay(&mut stream);
        let len = u16::try_from(question.wire.len()).map_err(|_| Miss::Malformed)?;
        let mut framed = Vec::with_capacity(question.wire.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&question.wire);
        stream.write_all(&framed).await.map_err(Miss::Network)?;
        let len = stream.read_u16().await.map_err(Miss::Network)?;
        let mut buffer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buffer).await.map_err(Miss::Network)?;
        match Message::from_vec(&buffer) {
            Ok(reply) if question.answered_by(&reply) => Ok(reply),
            _ => Err(Miss::Malformed),
        }
    }
}

/// Where following the aliases of one answer ends.
enum Chain {
    /// The records of the type at the chain's end, or none: the end has none, or the chain loops.
    Records(Vec<Record>),
    /// The chain leads to a name the answer says nothing about: it is asked next.
    ContinuesAt(Name),
}

/// Follows the CNAMEs of `answers` from `owner`, keeping only the records of `record_type` owned by a name on the
/// chain (a record of another name in the answer is not believed). `aliases` remembers the names followed across
/// questions, so that a loop ends the lookup instead of asking on.
fn follow_chain(mut owner: Name, record_type: RecordType, answers: Vec<Record>, aliases: &mut Vec<Name>) -> Chain {
    loop {
        if aliases.contains(&owner) {
            return Chain::Records(Vec::new());
        }
        aliases.push(owner.clone());
        let owned = |record: &&Record| record.name == owner;
        let records: Vec<Record> =
            answers.iter().filter(owned).filter(|record| record.record_type() == record_type).cloned().collect();
        if !records.is_empty() {
            return Chain::Records(records);
        }
        let target = answers.iter().filter(owned).find_map(|record| match &record.data {
            RData::CNAME(alias) => Some(alias.0.clone()),
            _ => None,
        });
        let Some(target) = target else { return Chain::Records(Vec::new()) };
        // A name followed already is a loop, which the top of the loop ends.
        if !aliases.contains(&target) && !answers.iter().any(|record| record.name == target) {
            return Chain::ContinuesAt(target);
        }
        owner = target;
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
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
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
            && reply.metadata.op_code == OpCode::Query
            && reply.queries.len() == 1
            && reply.queries[0].name() == self.query.name()
            && reply.queries[0].query_type() == self.query.query_type()
            && reply.queries[0].query_class() == self.query.query_class()
    }
}

async fn within<T>(limit: Duration, attempt: impl Future<Output = Result<T, Miss>>) -> Result<T, Miss> {
    tokio::time::timeout(limit, attempt).await.unwrap_or(Err(Miss::TimedOut))
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
    use std::sync::{Arc, Mutex};

    use super::*;

    use hickory_proto::rr::rdata::{A, CNAME};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Transport {
        Udp,
        Tcp,
    }

    type Asked = Arc<Mutex<Vec<(Transport, String)>>>;

    /// A DNS server on loopback for one test: each UDP question is answered with the datagrams `udp` makes of it and
    /// each TCP question with what `tcp` makes of it; the questions asked are kept, in order. It stops when dropped,
    /// or after 64 questions.
    struct ScriptedServer {
        addr: SocketAddr,
        asked: Asked,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for ScriptedServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl ScriptedServer {
        async fn start(
            udp: impl Fn(&Message) -> Vec<Vec<u8>> + Send + 'static,
            tcp: impl Fn(&Message) -> Vec<u8> + Send + 'static,
        ) -> Self {
            // TCP on the port the system picked for UDP, which may be taken for TCP: another port then.
            let (socket, listener) = 'bound: {
                for _ in 0..16 {
                    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    if let Ok(listener) = tokio::net::TcpListener::bind(socket.local_addr().unwrap()).await {
                        break 'bound (socket, listener);
                    }
                }
                panic!("no port free for both UDP and TCP");
            };
            let addr = socket.local_addr().unwrap();
            let asked = Asked::default();
            let log = Arc::clone(&asked);
            let task = tokio::spawn(async move {
                let note = |transport, query: &Message| {
                    log.lock().unwrap().push((transport, query.queries[0].name().to_ascii()));
                };
                let mut buffer = vec![0u8; 4096];
                for _ in 0..64 {
                    tokio::select! {
                        Ok((len, from)) = socket.recv_from(&mut buffer) => {
                            let query = Message::from_vec(&buffer[..len]).unwrap();
                            note(Transport::Udp, &query);
                            for datagram in udp(&query) {
                                socket.send_to(&datagram, from).await.unwrap();
                            }
                        }
                        Ok((mut stream, _)) = listener.accept() => {
                            let len = stream.read_u16().await.unwrap();
                            let mut wire = vec![0u8; usize::from(len)];
                            stream.read_exact(&mut wire).await.unwrap();
                            let query = Message::from_vec(&wire).unwrap();
                            note(Transport::Tcp, &query);
                            let reply = tcp(&query);
                            stream.write_all(&(reply.len() as u16).to_be_bytes()).await.unwrap();
                            stream.write_all(&reply).await.unwrap();
                        }
                    }
                }
            });
            Self { addr, asked, task }
        }

        fn asked(&self) -> Vec<(Transport, String)> {
            self.asked.lock().unwrap().clone()
        }
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn address(owner: &str, last: u8) -> Record {
        Record::from_rdata(name(owner), 60, RData::A(A::new(192, 0, 2, last)))
    }

    fn alias(owner: &str, target: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
    }

    /// A reply to `query` carrying `answers`, as a server would send it.
    fn reply(query: &Message, answers: Vec<Record>) -> Message {
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.add_query(query.queries[0].clone());
        reply.insert_answers(answers);
        reply
    }

    fn wire(message: &Message) -> Vec<u8> {
        message.to_vec().unwrap()
    }

    fn no_tcp(_: &Message) -> Vec<u8> {
        panic!("no TCP question expected")
    }

    #[tokio::test]
    async fn forged_and_stray_replies_are_dropped_and_a_truncated_one_asked_again_over_tcp() {
        let server = ScriptedServer::start(
            |query| {
                let mut forged = reply(query, vec![address("example.org.", 66)]);
                forged.metadata.id = query.metadata.id.wrapping_add(1);
                let mut stray = reply(query, vec![address("other.example.", 67)]);
                stray.queries[0].name = name("other.example.");
                let mut truncated = reply(query, vec![]);
                truncated.metadata.truncation = true;
                vec![wire(&forged), wire(&stray), wire(&truncated)]
            },
            |query| wire(&reply(query, (1..=3).map(|i| address("example.org.", i)).collect())),
        )
        .await;
        let exchange = DnsExchange::new(server.addr, Duration::from_secs(5), 1);
        let records = exchange.lookup("Example.ORG.", RecordType::A).await.expect("answered over TCP");
        // The forged and the stray reply each carried one record, the truncated one none: the three are TCP's.
        let last_octets: Vec<u8> = records
            .iter()
            .map(|record| match &record.data {
                RData::A(a) => a.0.octets()[3],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(last_octets, [1, 2, 3]);
        let asked = server.asked();
        assert_eq!(asked.iter().map(|(transport, _)| *transport).collect::<Vec<_>>(), [Transport::Udp, Transport::Tcp]);
        assert!(asked.iter().all(|(_, asked)| asked.eq_ignore_ascii_case("example.org.")), "{asked:?}");
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_after_every_attempt() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let exchange = DnsExchange::new(silent.local_addr().unwrap(), Duration::from_millis(100), 2);
        let started = std::time::Instant::now();
        let outcome = exchange.lookup("example.org", RecordType::CAA).await;
        assert_eq!(outcome, Err(LookupError::Failed("timeout".into())));
        assert!(started.elapsed() >= Duration::from_millis(200), "both attempts waited");
        // Both attempts reached the server, each a whole question.
        let mut buffer = [0u8; 512];
        for _ in 0..2 {
            let (len, _) = silent.recv_from(&mut buffer).await.unwrap();
            let query = Message::from_vec(&buffer[..len]).expect("a query");
            assert_eq!(query.queries[0].query_type(), RecordType::CAA);
            assert!(query.metadata.recursion_desired);
            assert_eq!(query.edns.as_ref().map(Edns::max_payload), Some(UDP_PAYLOAD));
        }
    }

    #[tokio::test]
    async fn a_malformed_reply_fails_without_waiting_out_the_timeout() {
        let server = ScriptedServer::start(
            |query| {
                let mut garbage = query.metadata.id.to_be_bytes().to_vec();
                garbage.extend_from_slice(&[0xff; 9]);
                vec![garbage]
            },
            no_tcp,
        )
        .await;
        let exchange = DnsExchange::new(server.addr, Duration::from_secs(5), 2);
        let started = std::time::Instant::now();
        let outcome = exchange.lookup("example.org", RecordType::TXT).await;
        assert_eq!(outcome, Err(LookupError::Failed("malformed reply".into())));
        assert!(started.elapsed() < Duration::from_secs(5), "not a timeout: {:?}", started.elapsed());
        assert_eq!(server.asked().len(), 2);
    }

    #[tokio::test]
    async fn a_chain_of_aliases_is_followed_and_records_of_other_names_are_ignored() {
        let server = ScriptedServer::start(
            |query| {
                let answers = vec![
                    alias("a.example.", "b.example."),
                    address("elsewhere.example.", 9),
                    alias("b.example.", "c.example."),
                    address("c.example.", 1),
                ];
                vec![wire(&reply(query, answers))]
            },
            no_tcp,
        )
        .await;
        let exchange = DnsExchange::new(server.addr, Duration::from_secs(5), 1);
        let records = exchange.lookup("a.example.", RecordType::A).await.unwrap();
        assert_eq!(records, vec![address("c.example.", 1)]);
        assert_eq!(server.asked().len(), 1);
    }

    #[tokio::test]
    async fn a_chain_the_answer_leaves_unfinished_is_asked_on_and_a_loop_ends_it() {
        let server = ScriptedServer::start(
            |query| {
                let answers = match query.queries[0].name().to_ascii().as_str() {
                    "a.example." => vec![alias("a.example.", "b.example.")],
                    "b.example." => vec![address("b.example.", 2)],
                    "loop.example." => vec![alias("loop.example.", "back.example.")],
                    "back.example." => vec![alias("back.example.", "loop.example.")],
                    _ => vec![],
                };
                vec![wire(&reply(query, answers))]
            },
            no_tcp,
        )
        .await;
        let exchange = DnsExchange::new(server.addr, Duration::from_secs(5), 1);
        assert_eq!(exchange.lookup("a.example.", RecordType::A).await.unwrap(), vec![address("b.example.", 2)]);
        assert_eq!(exchange.lookup("loop.example.", RecordType::A).await.unwrap(), vec![]);
        let asked: Vec<String> = server.asked().into_iter().map(|(_, name)| name).collect();
        assert_eq!(asked, ["a.example.", "b.example.", "loop.example.", "back.example."]);
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
