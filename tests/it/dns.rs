//! An authoritative DNS server on loopback that the test controls: `hickory-server` in-process
//! on the origins' runtime, answering A and SRV questions from a table the test changes, or
//! failing on purpose (SERVFAIL, an empty answer, no answer at all).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

/// TTL of every record: short, so refreshes follow `discovery.min_refresh`/`max_refresh`.
const TTL: u32 = 1;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the table.
    Answer,
    /// SERVFAIL to every question.
    ServFail,
    /// NOERROR with no record.
    Empty,
    /// Nothing at all: the resolver times out.
    Silent,
}

#[derive(Default)]
struct Table {
    records: Mutex<HashMap<(String, RecordType), Vec<Record>>>,
    mode: Mutex<Option<Mode>>,
    queries: AtomicUsize,
}

struct Handler(Arc<Table>);

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let mode = self.0.mode.lock().unwrap().unwrap_or(Mode::Answer);
        let builder = MessageResponseBuilder::from_message_request(request);
        let answers: Vec<Record> = match mode {
            Mode::Silent => return header.into(),
            Mode::ServFail => {
                let message = builder.error_msg(request.header(), ResponseCode::ServFail);
                return response
                    .send_response(message)
                    .await
                    .unwrap_or(header.into());
            }
            Mode::Empty => Vec::new(),
            Mode::Answer => request
                .queries()
                .first()
                .and_then(|q| {
                    let records = self.0.records.lock().unwrap();
                    records
                        .get(&(key(&q.name().to_string()), q.query_type()))
                        .cloned()
                })
                .unwrap_or_default(),
        };
        let message = builder.build(header, answers.iter(), None, None, None);
        response
            .send_response(message)
            .await
            .unwrap_or(header.into())
    }
}

/// A running DNS server.
pub struct Dns {
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    table: Arc<Table>,
}

impl Dns {
    /// Starts a server on a free loopback port; it answers when this returns.
    pub fn start() -> Dns {
        let table = Arc::new(Table::default());
        let handler = Handler(table.clone());
        let addr = crate::origin::runtime().block_on(async move {
            // The same port for UDP and TCP: try until both bind.
            for _ in 0..50 {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                    .await
                    .expect("udp");
                let addr = udp.local_addr().expect("addr");
                let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                    continue;
                };
                let mut server = ServerFuture::new(handler);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5));
                tokio::spawn(async move {
                    let _ = server.block_until_done().await;
                });
                return addr;
            }
            panic!("no port free for UDP and TCP at once");
        });
        Dns { addr, table }
    }

    /// `name` has these A records (none: the name has no A record).
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        let owner = Name::from_ascii(name).expect("name");
        let records = ips
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip))))
            .collect();
        self.set(name, RecordType::A, records);
    }

    /// `name` has these SRV records: (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, targets: &[(u16, u16, u16, &str)]) {
        let owner = Name::from_ascii(name).expect("name");
        let records = targets
            .iter()
            .map(|(priority, weight, port, target)| {
                let target = Name::from_ascii(target).expect("target");
                let srv = SRV::new(*priority, *weight, *port, target);
                Record::from_rdata(owner.clone(), TTL, RData::SRV(srv))
            })
            .collect();
        self.set(name, RecordType::SRV, records);
    }

    fn set(&self, name: &str, kind: RecordType, records: Vec<Record>) {
        self.table
            .records
            .lock()
            .unwrap()
            .insert((key(name), kind), records);
    }

    /// From now on, answers as `mode` says.
    pub fn set_mode(&self, mode: Mode) {
        *self.table.mode.lock().unwrap() = Some(mode);
    }

    /// Questions received so far.
    pub fn queries(&self) -> usize {
        self.table.queries.load(Ordering::SeqCst)
    }
}
