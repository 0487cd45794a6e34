//! One simulated `m0d` process: [`SimProcess`].
//!
//! It plays what a real `m0d` does on its HA link (see
//! `docs/emulator-protocol.md`): the entrypoint request and its QUERY retries,
//! messages with even tags, `DELIVERED` for what hax sends, resends after it
//! attaches again, and fencing on `disconnected_previously`.
//!
//! Each process owns one connection at a time, served by two tasks: a reader
//! that decodes and handles hax's frames, and a writer that drains an output
//! buffer the senders encode into. Sending never waits for a confirmation;
//! every sent message is kept until hax's `DELIVERED` confirms it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hax_core::{
    BeIoErr, Cookie, FailvecRep, FailvecReq, Fid, FidType, HaMsg, HaMsgData, HaNote, HaState, Nvec,
    NvecKind, ProcessEvent, ProcessEventKind, ProcessType, RpcEvent, ServiceEvent,
    ServiceEventKind, ServiceType, SnsErr, StobIoqError, Uint128,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::endpoint::{Endpoint, EndpointError};
use crate::wire::{
    encode_peer_delivered, encode_peer_msg, split_frame, Control, EpRep, EpReq, HaxFrame,
    PeerFrame, WireError,
};

/// First `id_of_get` of a process, as in Motr (`ha/note.c`).
pub const FIRST_GET_ID: u64 = 100;

/// What the process does with a message hax sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver at once: send `DELIVERED` as soon as it is received.
    Auto,
    /// Wait for [`SimProcess::deliver`] or [`SimProcess::deliver_all`].
    Manual,
    /// Never deliver (a hung `m0d`). It does not answer keepalives either.
    Never,
}

/// Where the process's link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Never connected.
    Idle,
    /// An entrypoint request is outstanding.
    Requesting,
    /// The link is up: CONSUME received.
    Up,
    /// The connection is gone; the link may live on at hax (see
    /// [`SimProcess::reattach`]).
    Disconnected,
    /// hax answered with `disconnected_previously`: a real `m0d` asserts and
    /// dies. Only [`SimProcess::restart`] leaves this state.
    Fenced,
    /// Closed by [`SimProcess::close`].
    Closed,
}

/// How the link of a completed entrypoint exchange came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// A first request made a new link (`link_connected`).
    New,
    /// A later request found the live link (`link_reused`).
    Reused,
    /// hax had restarted: a new link whose tags continue (`do_reconnect`).
    Reconnected,
}

/// A completed entrypoint exchange: the CONSUME reply and how it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// The CONSUME reply.
    pub reply: EpRep,
    /// QUERY replies (hax's `rc != 0`) before it.
    pub queries: u32,
    /// New, reused or reconnected link.
    pub outcome: LinkOutcome,
}

impl Entrypoint {
    /// What Motr's rconfc would object to in the reply
    /// (`conf/rconfc.c`), one sentence each; empty when nothing.
    pub fn warnings(&self) -> Vec<String> {
        let r = &self.reply;
        let mut w = Vec::new();
        if r.rm_fid.is_zero() {
            w.push("rm fid is zero: rconfc fails with -ENOKEY (fatal)".to_owned());
        }
        if r.rm_ep.is_empty() {
            w.push("rm endpoint is empty: rconfc retries (-ENOENT)".to_owned());
        }
        if r.confds.is_empty() {
            w.push("no confd in the reply".to_owned());
        }
        if r.quorum == 0 || r.quorum as usize > r.confds.len() {
            w.push(format!(
                "quorum {} with {} confds cannot be reached",
                r.quorum,
                r.confds.len()
            ));
        }
        w
    }
}

/// A message received from hax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The link it came on.
    pub link_id: u64,
    /// hax's tag.
    pub tag: u64,
    /// When it arrived.
    pub at: Instant,
    /// The message.
    pub msg: HaMsg,
}

/// Why the answer to an NVEC GET is not what a real `m0d` accepts
/// (`ha/note.c`: it asserts on each of these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvecReplyError {
    /// A SET with an `id_of_get` no GET of this process has outstanding.
    #[error("NVEC SET answers id_of_get {0}, which no outstanding GET has")]
    UnknownId(u64),
    /// Not as many notes as fids asked.
    #[error("GET {id} asked {asked} fids, the reply has {got} notes")]
    Count {
        /// The GET's id.
        id: u64,
        /// Fids asked.
        asked: usize,
        /// Notes answered.
        got: usize,
    },
    /// A fid differs, or is out of order.
    #[error("GET {id}: note {index} is for {got}, {asked} was asked")]
    Fid {
        /// The GET's id.
        id: u64,
        /// Position.
        index: usize,
        /// Fid asked at that position.
        asked: Fid,
        /// Fid answered.
        got: Fid,
    },
    /// A note with state UNKNOWN.
    #[error("GET {id}: the reply's note for {fid} has state M0_NC_UNKNOWN")]
    Unknown {
        /// The GET's id.
        id: u64,
        /// The note's fid.
        fid: Fid,
    },
}

/// Something hax did that a real `m0d` would not accept. Recorded by the
/// process ([`SimProcess::violations`]) and logged; it never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A frame that does not decode; the connection is dropped.
    #[error("bad frame from hax: {0}")]
    BadFrame(WireError),
    /// A frame other than HELLO came first; the connection is dropped.
    #[error("{0} before HELLO")]
    BeforeHello(&'static str),
    /// A second HELLO on the connection.
    #[error("second HELLO")]
    SecondHello,
    /// An `EP_REP` without an outstanding `EP_REQ`.
    #[error("EP_REP without an outstanding EP_REQ")]
    UnexpectedEpRep,
    /// A reply that is not fencing but names no link.
    #[error("EP_REP with link id 0 but without disconnected_previously")]
    ReplyWithoutLink,
    /// A first request answered with `do_reconnect` or `disconnected_previously`.
    #[error("first request answered with flags do_reconnect={do_reconnect} disconnected_previously={disconnected_previously}")]
    FirstRequestFlags {
        /// Flag bit 0.
        do_reconnect: bool,
        /// Flag bit 1.
        disconnected_previously: bool,
    },
    /// A `MSG` or `DELIVERED` for a link this process does not hold.
    #[error("{frame} for link {link_id}, but this process holds link {ours}")]
    WrongLink {
        /// The frame.
        frame: &'static str,
        /// Its link.
        link_id: u64,
        /// The process's link.
        ours: u64,
    },
    /// hax's tag has the peer's parity.
    #[error("MSG tag {0} has the wrong parity")]
    TagParity(u64),
    /// `DELIVERED` for a tag this process never sent.
    #[error("DELIVERED for tag {0}, which was never sent")]
    DeliveredUnsent(u64),
    /// An NVEC GET answer a real `m0d` asserts on.
    #[error(transparent)]
    NvecReply(NvecReplyError),
    /// An NVEC SET a real `m0d` asserts on (`note_invariant`, counts).
    #[error("NVEC SET tag {tag}: {reason}")]
    BadSet {
        /// hax's tag.
        tag: u64,
        /// Why.
        reason: String,
    },
    /// hax sent an NVEC GET (hax answers GETs, it does not ask).
    #[error("hax sent an NVEC GET (tag {0})")]
    GetFromHax(u64),
    /// A failure vector reply whose cookie no outstanding request has.
    #[error("failure vector reply with cookie {addr:#x}/{generation}, which no request has")]
    FailvecCookie {
        /// `co_addr` received.
        addr: u64,
        /// `co_generation` received.
        generation: u64,
    },
    /// A keepalive reply whose id no outstanding request has.
    #[error("keepalive reply with unknown id {0}")]
    KeepaliveId(Uint128),
}

/// Errors of [`SimProcess`] operations.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// hax's endpoint string names no socket.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The socket could not be opened.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The socket.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// A configuration value cannot go on the wire.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A message cannot be encoded (too many notes).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The operation needs a link and there is none yet.
    #[error("the process has no link (never connected)")]
    NotConnected,
    /// The process was fenced (`disconnected_previously`).
    #[error("the process was fenced: hax disconnected its link before")]
    Fenced,
    /// The process was closed.
    #[error("the process is closed")]
    Closed,
    /// The process was restarted while the operation waited.
    #[error("the process was restarted")]
    Restarted,
    /// The connection was lost during an entrypoint exchange.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A deadline passed.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The answer to an NVEC GET is wrong.
    #[error(transparent)]
    NvecReply(#[from] NvecReplyError),
    /// A failure vector reply did not echo the request's cookie.
    #[error("failure vector reply cookie {got:?} is not the request's {sent:?}")]
    FailvecCookie {
        /// Sent.
        sent: Cookie,
        /// Received.
        got: Cookie,
    },
    /// `deliver` of a tag that is not received and undelivered.
    #[error("tag {0} is not a received, undelivered message")]
    UnknownTag(u64),
    /// An entrypoint reply broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(Violation),
}

/// Counters of one process (or a sum of several, see [`SimStats::add`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages sent (each once, resends not counted).
    pub sent: u64,
    /// Messages hax confirmed with `DELIVERED`.
    pub confirmed: u64,
    /// `DELIVERED` frames for tags already confirmed.
    pub confirmed_again: u64,
    /// Messages resent after attaching again.
    pub resent: u64,
    /// Unconfirmed messages dropped by a restart.
    pub lost: u64,
    /// Messages received from hax (duplicates not counted).
    pub received: u64,
    /// Of those, NVEC SETs that answer no GET (broadcasts).
    pub received_sets: u64,
    /// Resends of already received messages, dropped.
    pub duplicates: u64,
    /// Messages with a tag beyond the next expected, dropped.
    pub out_of_order: u64,
    /// `DELIVERED` frames sent (re-acknowledgements included).
    pub delivered_sent: u64,
    /// Entrypoint requests sent.
    pub ep_requests: u64,
    /// QUERY replies.
    pub queries: u64,
    /// Connections opened.
    pub connections: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Protocol violations seen.
    pub violations: u64,
}

impl SimStats {
    /// Adds `o` to `self`, counter by counter.
    pub fn add(&mut self, o: &SimStats) {
        self.sent += o.sent;
        self.confirmed += o.confirmed;
        self.confirmed_again += o.confirmed_again;
        self.resent += o.resent;
        self.lost += o.lost;
        self.received += o.received;
        self.received_sets += o.received_sets;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.delivered_sent += o.delivered_sent;
        self.ep_requests += o.ep_requests;
        self.queries += o.queries;
        self.connections += o.connections;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.violations += o.violations;
    }
}

/// Something that happened to a process, for live reporting (`m0d-sim`).
#[derive(Debug, Clone)]
pub struct SimEvent {
    /// The process.
    pub process: Fid,
    /// When.
    pub at: Instant,
    /// What.
    pub kind: SimEventKind,
}

/// What happened; see [`SimEvent`].
#[derive(Debug, Clone)]
pub enum SimEventKind {
    /// A socket was opened.
    Connecting {
        /// hax's endpoint.
        endpoint: String,
    },
    /// An entrypoint request went out.
    Requested {
        /// Its `first_request`.
        first: bool,
        /// Its `generation`.
        generation: u64,
    },
    /// QUERY: asked again at once.
    Query(EpRep),
    /// CONSUME: the link is up.
    Up(Entrypoint),
    /// `disconnected_previously`: fenced.
    Fenced(EpRep),
    /// A message from hax.
    Received(Received),
    /// A resend of an already received message, dropped.
    Duplicate {
        /// hax's tag.
        tag: u64,
        /// `DELIVERED` was sent again.
        reacknowledged: bool,
    },
    /// A message was sent.
    Sent {
        /// Its tag.
        tag: u64,
        /// The message.
        msg: HaMsg,
    },
    /// hax's user delivered the process's message.
    Confirmed {
        /// The tag.
        tag: u64,
    },
    /// Unconfirmed messages resent after attaching.
    Resent {
        /// How many.
        count: usize,
    },
    /// `NOLINK` from hax.
    NoLink {
        /// The link named.
        link_id: u64,
    },
    /// The connection ended.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// hax broke the protocol.
    Violation(Violation),
}

/// Configuration of one simulated process.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// hax's endpoint (`inet:tcp:…`, LNet style, or `unix:PATH`).
    pub ha_endpoint: String,
    /// The process fid (type `r`).
    pub fid: Fid,
    /// The pid it reports.
    pub pid: u64,
    /// Its own endpoint, as reported in `EP_REQ` (nothing listens there).
    pub endpoint: String,
    /// `git_rev_id` of the request.
    pub git_rev: String,
    /// Its services, for service events.
    pub services: Vec<(Fid, ServiceType)>,
    /// What it does with hax's messages.
    pub delivery: Delivery,
    /// Most unconfirmed messages [`SimProcess::send_many`] lets in flight.
    pub window: usize,
    /// Deadline of entrypoint exchanges and request/reply operations.
    pub timeout: Duration,
    /// Where to report [`SimEvent`]s, if anywhere.
    pub events: Option<mpsc::UnboundedSender<SimEvent>>,
}

impl SimConfig {
    /// A process `fid` talking to `ha_endpoint`, with an endpoint, pid and one
    /// IOS service derived from the fid's key.
    pub fn new(ha_endpoint: impl Into<String>, fid: Fid) -> Self {
        let k = fid.key;
        SimConfig {
            ha_endpoint: ha_endpoint.into(),
            fid,
            pid: 10_000 + k % 1_000_000,
            endpoint: format!("inet:tcp:127.0.0.1@{}", 30_000 + k % 30_000),
            git_rev: concat!("hax-sim-", env!("CARGO_PKG_VERSION")).to_owned(),
            services: vec![(
                Fid::typed(FidType::Service, fid.container & 0xff_ffff, k),
                ServiceType::Ios,
            )],
            delivery: Delivery::Auto,
            window: 8192,
            timeout: Duration::from_secs(10),
            events: None,
        }
    }

    fn check(&self) -> Result<(), SimError> {
        let probe = PeerFrame::EpReq(EpReq {
            first_request: true,
            generation: 0,
            process_fid: self.fid,
            pid: self.pid,
            cookie_expected: Uint128::default(),
            link_id: 0,
            next_out_tag: 0,
            next_in_tag: 0,
            endpoint: self.endpoint.clone(),
            git_rev_id: self.git_rev.clone(),
        });
        probe
            .encode(&mut Vec::new())
            .map_err(|e| SimError::Config(format!("endpoint or git rev: {e}")))?;
        if self.window == 0 {
            return Err(SimError::Config("window must be at least 1".into()));
        }
        Ok(())
    }
}

/// Output bytes above which [`SimProcess::send_many`] waits for the writer.
const OUT_HIGH: usize = 4 << 20;
/// Read granularity.
const READ_CHUNK: usize = 64 << 10;

pub(crate) type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub(crate) type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// Opens a stream socket to `ep`.
pub(crate) async fn open(ep: &Endpoint) -> io::Result<(BoxRead, BoxWrite)> {
    match ep {
        Endpoint::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            Ok((Box::pin(r), Box::pin(w)))
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await?;
            let (r, w) = s.into_split();
            Ok((Box::pin(r), Box::pin(w)))
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "unix sockets are not available here",
        )),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct Conn {
    seq: u64,
    wake: Arc<Notify>,
    stop_reading: watch::Sender<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Conn {
    fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }
}

struct PendingGet {
    fids: Vec<Fid>,
    tx: oneshot::Sender<Result<Vec<HaNote>, SimError>>,
}

struct PendingFvec {
    cookie: Cookie,
    tx: oneshot::Sender<Result<FailvecRep, SimError>>,
}

/// Everything about the process, under one lock.
struct Inner {
    state: LinkState,
    delivery: Delivery,
    conn: Option<Conn>,
    conn_seq: u64,
    /// Encoded frames not yet taken by the writer.
    out: Vec<u8>,
    got_hello: bool,
    /// Entrypoint.
    generation: u64,
    cookie: Uint128,
    ep_outstanding: bool,
    ep_first: bool,
    ep_queries: u32,
    ep_reconnected: bool,
    ep_error: Option<String>,
    /// Counts entrypoint exchanges; `ep_done` is the last one that got CONSUME.
    ep_seq: u64,
    ep_done: u64,
    last_reply: Option<EpRep>,
    entrypoint: Option<Entrypoint>,
    /// Link.
    link_id: u64,
    next_out: u64,
    unconfirmed: BTreeMap<u64, HaMsg>,
    next_in: u64,
    in_undelivered: BTreeSet<u64>,
    received: Vec<Received>,
    /// Requests awaiting replies.
    next_get_id: u64,
    gets: BTreeMap<u64, PendingGet>,
    next_keepalive: u64,
    keepalive_counter: u64,
    keepalives: HashMap<Uint128, oneshot::Sender<Result<u64, SimError>>>,
    next_cookie: u64,
    fvecs: Vec<PendingFvec>,
    stats: SimStats,
    violations: Vec<Violation>,
}

struct Shared {
    cfg: SimConfig,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data behind: every
        // mutation is a plain field update.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn emit(&self, kind: SimEventKind) {
        if let Some(tx) = &self.cfg.events {
            let _ = tx.send(SimEvent {
                process: self.cfg.fid,
                at: Instant::now(),
                kind,
            });
        }
    }

    fn violation(&self, g: &mut Inner, v: Violation) {
        tracing::warn!(process = %self.cfg.fid, "protocol violation: {v}");
        g.stats.violations += 1;
        g.violations.push(v.clone());
        self.emit(SimEventKind::Violation(v));
    }

    fn wake_writer(&self, g: &Inner) {
        if let Some(c) = &g.conn {
            c.wake.notify_one();
        }
    }

    /// Drops the connection, if it is `seq` (any, if `None`).
    fn drop_conn(&self, g: &mut Inner, seq: Option<u64>, reason: &str) -> bool {
        match &g.conn {
            Some(c) if seq.is_none_or(|s| s == c.seq) => {}
            _ => return false,
        }
        if let Some(c) = g.conn.take() {
            c.abort();
        }
        g.out.clear();
        g.ep_outstanding = false;
        if matches!(g.state, LinkState::Up | LinkState::Requesting) {
            g.state = LinkState::Disconnected;
            g.ep_error = Some(reason.to_owned());
        }
        tracing::info!(process = %self.cfg.fid, "connection closed: {reason}");
        self.emit(SimEventKind::ConnectionLost {
            reason: reason.to_owned(),
        });
        true
    }

    fn fail_pending(&self, g: &mut Inner, err: fn() -> SimError) {
        for (_, p) in std::mem::take(&mut g.gets) {
            let _ = p.tx.send(Err(err()));
        }
        for (_, tx) in g.keepalives.drain() {
            let _ = tx.send(Err(err()));
        }
        for p in g.fvecs.drain(..) {
            let _ = p.tx.send(Err(err()));
        }
    }

    /// Sends an entrypoint request on the current connection.
    fn request(&self, g: &mut Inner, first: bool) {
        g.generation += 1;
        let req = if first {
            EpReq {
                first_request: true,
                generation: g.generation,
                process_fid: self.cfg.fid,
                pid: self.cfg.pid,
                cookie_expected: g.cookie,
                link_id: 0,
                next_out_tag: 0,
                next_in_tag: 0,
                endpoint: self.cfg.endpoint.clone(),
                git_rev_id: self.cfg.git_rev.clone(),
            }
        } else {
            EpReq {
                first_request: false,
                generation: g.generation,
                process_fid: self.cfg.fid,
                pid: self.cfg.pid,
                cookie_expected: g.cookie,
                link_id: g.link_id,
                // The next message it will send: the first one hax has not
                // confirmed, which it resends once attached.
                next_out_tag: g.unconfirmed.keys().next().copied().unwrap_or(g.next_out),
                next_in_tag: g.next_in,
                endpoint: self.cfg.endpoint.clone(),
                git_rev_id: self.cfg.git_rev.clone(),
            }
        };
        // The configuration was checked, so this encodes.
        if let Err(e) = PeerFrame::EpReq(req).encode(&mut g.out) {
            tracing::error!(process = %self.cfg.fid, "cannot encode EP_REQ: {e}");
            return;
        }
        g.ep_outstanding = true;
        g.state = LinkState::Requesting;
        g.stats.ep_requests += 1;
        self.emit(SimEventKind::Requested {
            first,
            generation: g.generation,
        });
        self.wake_writer(g);
    }

    /// Assigns a tag to `msg`, keeps it until confirmed, and writes it if the
    /// link is up.
    fn enqueue(&self, g: &mut Inner, msg: HaMsg) -> Result<u64, SimError> {
        match g.state {
            LinkState::Fenced => return Err(SimError::Fenced),
            LinkState::Closed => return Err(SimError::Closed),
            LinkState::Idle => return Err(SimError::NotConnected),
            _ if g.link_id == 0 => return Err(SimError::NotConnected),
            _ => {}
        }
        let tag = g.next_out;
        if g.state == LinkState::Up && g.conn.is_some() {
            let link = g.link_id;
            encode_peer_msg(&mut g.out, link, tag, &msg)?;
        } else {
            // Not attached: check now, write on attach.
            encode_peer_msg(&mut Vec::new(), g.link_id, tag, &msg)?;
        }
        g.next_out += 2;
        g.stats.sent += 1;
        if self.cfg.events.is_some() {
            self.emit(SimEventKind::Sent {
                tag,
                msg: msg.clone(),
            });
        }
        g.unconfirmed.insert(tag, msg);
        Ok(tag)
    }

    fn send_delivered(&self, g: &mut Inner, tag: u64) {
        if g.conn.is_some() {
            let link = g.link_id;
            encode_peer_delivered(&mut g.out, link, tag);
            g.stats.delivered_sent += 1;
        }
    }

    fn handle_frame(&self, g: &mut Inner, seq: u64, f: HaxFrame) {
        if !g.got_hello {
            if f == HaxFrame::Hello {
                g.got_hello = true;
                return;
            }
            self.violation(g, Violation::BeforeHello(f.name()));
            self.drop_conn(g, Some(seq), "frame before HELLO");
            return;
        }
        match f {
            HaxFrame::Hello => self.violation(g, Violation::SecondHello),
            HaxFrame::EpRep(rep) => self.handle_ep_rep(g, seq, rep),
            HaxFrame::Msg { link_id, tag, msg } => self.handle_msg(g, link_id, tag, msg),
            HaxFrame::Delivered { link_id, tag } => {
                if link_id != g.link_id {
                    let ours = g.link_id;
                    self.violation(
                        g,
                        Violation::WrongLink {
                            frame: "DELIVERED",
                            link_id,
                            ours,
                        },
                    );
                } else if g.unconfirmed.remove(&tag).is_some() {
                    g.stats.confirmed += 1;
                    if self.cfg.events.is_some() {
                        self.emit(SimEventKind::Confirmed { tag });
                    }
                } else if tag < g.next_out {
                    g.stats.confirmed_again += 1;
                } else {
                    self.violation(g, Violation::DeliveredUnsent(tag));
                }
            }
            HaxFrame::NoLink { link_id } => {
                self.emit(SimEventKind::NoLink { link_id });
                if link_id != g.link_id || link_id == 0 {
                    tracing::debug!(process = %self.cfg.fid, link_id, "NOLINK for another link");
                } else if g.ep_outstanding {
                    // The outstanding request's answer tells what became of
                    // the link.
                } else if matches!(g.state, LinkState::Up | LinkState::Requesting) {
                    tracing::info!(process = %self.cfg.fid, link_id, "NOLINK: asking the entrypoint again");
                    g.ep_first = false;
                    g.ep_seq += 1;
                    g.ep_queries = 0;
                    g.ep_reconnected = false;
                    self.request(g, false);
                }
            }
            HaxFrame::CtlReply { seq, rc } => {
                // A process sends no CTL (that is SimControl's connection).
                tracing::warn!(process = %self.cfg.fid, seq, rc, "CTL_R without a CTL");
            }
        }
    }

    fn handle_ep_rep(&self, g: &mut Inner, seq: u64, rep: EpRep) {
        if !g.ep_outstanding {
            self.violation(g, Violation::UnexpectedEpRep);
            return;
        }
        g.ep_outstanding = false;
        g.cookie = rep.cookie;
        g.last_reply = Some(rep.clone());
        let first = g.generation_first();
        if first && (rep.do_reconnect || rep.disconnected_previously) {
            self.violation(
                g,
                Violation::FirstRequestFlags {
                    do_reconnect: rep.do_reconnect,
                    disconnected_previously: rep.disconnected_previously,
                },
            );
        }
        if rep.disconnected_previously {
            // A real m0d asserts here and dies.
            tracing::warn!(process = %self.cfg.fid, link_id = g.link_id, "fenced: hax disconnected this process before");
            g.state = LinkState::Fenced;
            self.emit(SimEventKind::Fenced(rep));
            self.fail_pending(g, || SimError::Fenced);
            if let Some(c) = g.conn.take() {
                c.abort();
            }
            g.out.clear();
            return;
        }
        if rep.link_id == 0 {
            self.violation(g, Violation::ReplyWithoutLink);
            self.drop_conn(g, Some(seq), "entrypoint reply without a link");
            return;
        }
        let new_link = first || rep.do_reconnect || rep.link_id != g.link_id;
        if rep.do_reconnect {
            g.ep_reconnected = true;
        }
        if new_link {
            g.link_id = rep.link_id;
            g.next_in = rep.next_in_tag;
            // Unconfirmed messages continue on the new link from the tag it
            // expects, in order.
            if g.unconfirmed.keys().next() != Some(&rep.next_out_tag) && !g.unconfirmed.is_empty() {
                tracing::info!(process = %self.cfg.fid, from = rep.next_out_tag, "renumbering unconfirmed messages for the new link");
                let old = std::mem::take(&mut g.unconfirmed);
                let mut t = rep.next_out_tag;
                for (_, m) in old {
                    g.unconfirmed.insert(t, m);
                    t += 2;
                }
                g.next_out = t;
            } else if g.unconfirmed.is_empty() {
                g.next_out = rep.next_out_tag;
            }
            g.in_undelivered.clear();
        } else if rep.next_in_tag != g.next_in {
            tracing::debug!(process = %self.cfg.fid, ours = g.next_in, theirs = rep.next_in_tag, "reused link: hax's next tag differs");
        }
        match rep.control {
            Control::Query => {
                g.ep_queries += 1;
                g.stats.queries += 1;
                tracing::debug!(process = %self.cfg.fid, "QUERY: asking again");
                self.emit(SimEventKind::Query(rep));
                self.request(g, false);
            }
            Control::Consume => {
                let outcome = if g.ep_first {
                    LinkOutcome::New
                } else if g.ep_reconnected {
                    LinkOutcome::Reconnected
                } else {
                    LinkOutcome::Reused
                };
                let ep = Entrypoint {
                    reply: rep,
                    queries: g.ep_queries,
                    outcome,
                };
                g.state = LinkState::Up;
                g.entrypoint = Some(ep.clone());
                g.ep_done = g.ep_seq;
                g.ep_error = None;
                tracing::info!(process = %self.cfg.fid, link_id = g.link_id, ?outcome, "link up");
                self.emit(SimEventKind::Up(ep));
                let link = g.link_id;
                let mut count = 0;
                let Inner {
                    unconfirmed, out, ..
                } = g;
                for (tag, m) in unconfirmed.iter() {
                    // Checked when first sent.
                    let _ = encode_peer_msg(out, link, *tag, m);
                    count += 1;
                }
                if count > 0 {
                    g.stats.resent += count as u64;
                    self.emit(SimEventKind::Resent { count });
                }
                self.wake_writer(g);
            }
        }
    }

    fn handle_msg(&self, g: &mut Inner, link_id: u64, tag: u64, msg: HaMsg) {
        if link_id != g.link_id || link_id == 0 {
            let ours = g.link_id;
            self.violation(
                g,
                Violation::WrongLink {
                    frame: "MSG",
                    link_id,
                    ours,
                },
            );
            return;
        }
        if (tag ^ g.next_in) & 1 != 0 {
            self.violation(g, Violation::TagParity(tag));
            return;
        }
        if tag < g.next_in {
            g.stats.duplicates += 1;
            let delivered = !g.in_undelivered.contains(&tag);
            if delivered {
                self.send_delivered(g, tag);
            }
            self.emit(SimEventKind::Duplicate {
                tag,
                reacknowledged: delivered,
            });
            return;
        }
        if tag > g.next_in {
            g.stats.out_of_order += 1;
            tracing::debug!(process = %self.cfg.fid, tag, expected = g.next_in, "MSG beyond the next tag dropped");
            return;
        }
        g.next_in += 2;
        g.stats.received += 1;
        if matches!(&msg.data, HaMsgData::Nvec(n) if n.kind == hax_core::NvecKind::Set && n.id_of_get == 0)
        {
            g.stats.received_sets += 1;
        }
        self.check_msg(g, tag, &msg);
        match g.delivery {
            Delivery::Auto => self.send_delivered(g, tag),
            Delivery::Manual | Delivery::Never => {
                g.in_undelivered.insert(tag);
            }
        }
        let r = Received {
            link_id,
            tag,
            at: Instant::now(),
            msg,
        };
        if self.cfg.events.is_some() {
            self.emit(SimEventKind::Received(r.clone()));
        }
        g.received.push(r);
    }

    /// What a real m0d does with a received message: answer it, or assert.
    fn check_msg(&self, g: &mut Inner, tag: u64, msg: &HaMsg) {
        match &msg.data {
            HaMsgData::Nvec(n) if n.kind == NvecKind::Get => {
                self.violation(g, Violation::GetFromHax(tag));
            }
            HaMsgData::Nvec(n) => {
                let pending = if n.id_of_get == 0 {
                    None
                } else {
                    g.gets.remove(&n.id_of_get)
                };
                if n.id_of_get == 0 || pending.is_none() {
                    if let Some(reason) = set_problem(n) {
                        self.violation(g, Violation::BadSet { tag, reason });
                    }
                }
                if n.id_of_get == 0 {
                    return;
                }
                match pending {
                    Some(p) => {
                        let r = check_get_reply(n.id_of_get, &p.fids, &n.notes);
                        match &r {
                            Err(e) => self.violation(g, Violation::NvecReply(e.clone())),
                            Ok(_) => {
                                if let Some(reason) = set_problem(n) {
                                    self.violation(g, Violation::BadSet { tag, reason });
                                }
                            }
                        }
                        let _ = p.tx.send(r.map_err(SimError::NvecReply));
                    }
                    None => {
                        let e = NvecReplyError::UnknownId(n.id_of_get);
                        self.violation(g, Violation::NvecReply(e.clone()));
                        // The oldest outstanding GET will not be answered
                        // rightly: fail it now rather than at its deadline.
                        if let Some((_, p)) = g.gets.pop_first() {
                            let _ = p.tx.send(Err(SimError::NvecReply(e)));
                        }
                    }
                }
            }
            HaMsgData::FailvecRep(rep) => {
                if let Some(i) = g.fvecs.iter().position(|p| p.cookie == rep.cookie) {
                    let p = g.fvecs.remove(i);
                    let _ = p.tx.send(Ok(rep.clone()));
                } else {
                    self.violation(
                        g,
                        Violation::FailvecCookie {
                            addr: rep.cookie.addr,
                            generation: rep.cookie.generation,
                        },
                    );
                    if !g.fvecs.is_empty() {
                        let p = g.fvecs.remove(0);
                        let _ = p.tx.send(Err(SimError::FailvecCookie {
                            sent: p.cookie,
                            got: rep.cookie,
                        }));
                    }
                }
            }
            HaMsgData::KeepaliveRep { id, counter } => match g.keepalives.remove(id) {
                Some(tx) => {
                    let _ = tx.send(Ok(*counter));
                }
                None => self.violation(g, Violation::KeepaliveId(*id)),
            },
            HaMsgData::KeepaliveReq { id } if g.delivery != Delivery::Never => {
                // Motr's dispatcher answers keepalives, with message fid 0
                // and its own count of replies.
                g.keepalive_counter += 1;
                let rep = HaMsg {
                    time_ns: now_ns(),
                    ..HaMsg::new(HaMsgData::KeepaliveRep {
                        id: *id,
                        counter: g.keepalive_counter,
                    })
                };
                if let Err(e) = self.enqueue(g, rep) {
                    tracing::warn!(process = %self.cfg.fid, "cannot answer a keepalive: {e}");
                }
            }
            _ => {}
        }
    }
}

impl Inner {
    /// Whether the request being answered is a first request. The QUERY
    /// re-asks of a first request are not first requests.
    fn generation_first(&self) -> bool {
        self.ep_first && self.ep_queries == 0
    }
}

/// What a real m0d asserts on in an NVEC SET it receives (`ha/note.c`).
fn set_problem(n: &Nvec) -> Option<String> {
    if n.notes.is_empty() {
        return Some("no notes (Motr's senders assert nr > 0)".into());
    }
    for note in &n.notes {
        if note.state == HaState::Unknown {
            return Some(format!("note for {} has state M0_NC_UNKNOWN", note.fid));
        }
        let kind = note.fid.kind();
        if !note.fid.is_zero() && kind.is_none() {
            return Some(format!("note for {} is not a configuration fid", note.fid));
        }
        if matches!(note.state, HaState::Repair | HaState::Rebalance)
            && !matches!(
                kind,
                Some(FidType::Pool | FidType::Sdev | FidType::Node | FidType::Drive)
            )
        {
            return Some(format!(
                "note for {}: {} applies only to pools, sdevs, nodes and drives",
                note.fid, note.state
            ));
        }
    }
    None
}

/// The rules of an answer to an NVEC GET: same count, same fids in the same
/// order, no UNKNOWN state.
pub fn check_get_reply(
    id: u64,
    asked: &[Fid],
    notes: &[HaNote],
) -> Result<Vec<HaNote>, NvecReplyError> {
    if asked.len() != notes.len() {
        return Err(NvecReplyError::Count {
            id,
            asked: asked.len(),
            got: notes.len(),
        });
    }
    for (index, (a, n)) in asked.iter().zip(notes).enumerate() {
        if *a != n.fid {
            return Err(NvecReplyError::Fid {
                id,
                index,
                asked: *a,
                got: n.fid,
            });
        }
        if n.state == HaState::Unknown {
            return Err(NvecReplyError::Unknown { id, fid: n.fid });
        }
    }
    Ok(notes.to_vec())
}

async fn reader(shared: Arc<Shared>, seq: u64, mut r: BoxRead, mut stop: watch::Receiver<bool>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK * 2);
    loop {
        if *stop.borrow_and_update() {
            // A peer that no longer reads: keep the socket, read nothing.
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            continue;
        }
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n,
            _ = stop.changed() => continue,
        };
        let (n, reason) = match n {
            Ok(0) => (0, Some("closed by hax".to_owned())),
            Ok(n) => (n, None),
            Err(e) => (0, Some(format!("read error: {e}"))),
        };
        let mut g = shared.lock();
        if g.conn.as_ref().map(|c| c.seq) != Some(seq) {
            return;
        }
        if let Some(reason) = reason {
            shared.drop_conn(&mut g, Some(seq), &reason);
            drop(g);
            shared.bump();
            return;
        }
        g.stats.bytes_in += n as u64;
        let mut used = 0;
        let mut bad = None;
        loop {
            match split_frame(&buf[used..]) {
                Ok(Some((frame, len))) => {
                    used += len;
                    match HaxFrame::decode(frame) {
                        Ok(f) => shared.handle_frame(&mut g, seq, f),
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    }
                    if g.conn.as_ref().map(|c| c.seq) != Some(seq) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = bad {
            let reason = format!("bad frame: {e}");
            shared.violation(&mut g, Violation::BadFrame(e));
            shared.drop_conn(&mut g, Some(seq), &reason);
        }
        let gone = g.conn.as_ref().map(|c| c.seq) != Some(seq);
        shared.wake_writer(&g);
        drop(g);
        shared.bump();
        if gone {
            return;
        }
        buf.drain(..used);
    }
}

async fn writer(shared: Arc<Shared>, seq: u64, mut w: BoxWrite, wake: Arc<Notify>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        wake.notified().await;
        loop {
            {
                let mut g = shared.lock();
                if g.conn.as_ref().map(|c| c.seq) != Some(seq) {
                    return;
                }
                std::mem::swap(&mut g.out, &mut buf);
                g.stats.bytes_out += buf.len() as u64;
            }
            if buf.is_empty() {
                break;
            }
            if let Err(e) = w.write_all(&buf).await {
                let mut g = shared.lock();
                shared.drop_conn(&mut g, Some(seq), &format!("write error: {e}"));
                drop(g);
                shared.bump();
                return;
            }
            buf.clear();
            shared.bump();
        }
    }
}

/// One simulated `m0d`. Dropping it drops its connection.
#[derive(Debug)]
pub struct SimProcess {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProcess")
            .field("fid", &self.cfg.fid)
            .finish_non_exhaustive()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        if let Some(c) = g.conn.take() {
            c.abort();
        }
    }
}

impl SimProcess {
    /// A process that has not connected yet.
    pub fn new(cfg: SimConfig) -> Result<SimProcess, SimError> {
        cfg.check()?;
        let delivery = cfg.delivery;
        Ok(SimProcess {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    state: LinkState::Idle,
                    delivery,
                    conn: None,
                    conn_seq: 0,
                    out: Vec::new(),
                    got_hello: false,
                    generation: 0,
                    cookie: Uint128::default(),
                    ep_outstanding: false,
                    ep_first: false,
                    ep_queries: 0,
                    ep_reconnected: false,
                    ep_error: None,
                    ep_seq: 0,
                    ep_done: 0,
                    last_reply: None,
                    entrypoint: None,
                    link_id: 0,
                    next_out: 0,
                    unconfirmed: BTreeMap::new(),
                    next_in: 0,
                    in_undelivered: BTreeSet::new(),
                    received: Vec::new(),
                    next_get_id: FIRST_GET_ID,
                    gets: BTreeMap::new(),
                    next_keepalive: 1,
                    keepalive_counter: 0,
                    keepalives: HashMap::new(),
                    next_cookie: 1,
                    fvecs: Vec::new(),
                    stats: SimStats::default(),
                    violations: Vec::new(),
                }),
                changed: watch::channel(0).0,
                cfg,
            }),
        })
    }

    /// A new process connected: HELLO, a first entrypoint request, and its
    /// QUERY retries until CONSUME.
    pub async fn connect(cfg: SimConfig) -> Result<SimProcess, SimError> {
        let p = SimProcess::new(cfg)?;
        p.start().await?;
        Ok(p)
    }

    /// Connects a process that never connected (see [`SimProcess::new`]).
    pub async fn start(&self) -> Result<Entrypoint, SimError> {
        {
            let g = self.shared.lock();
            if g.state != LinkState::Idle {
                return Err(SimError::Config(format!(
                    "start() needs a process that never connected, this one is {:?}",
                    g.state
                )));
            }
        }
        self.exchange(true).await
    }

    /// Opens a connection and runs an entrypoint exchange on it.
    async fn exchange(&self, first: bool) -> Result<Entrypoint, SimError> {
        let cfg = &self.shared.cfg;
        let ep: Endpoint = cfg.ha_endpoint.parse()?;
        self.shared.emit(SimEventKind::Connecting {
            endpoint: cfg.ha_endpoint.clone(),
        });
        let (r, w) = open(&ep).await.map_err(|source| SimError::Connect {
            endpoint: cfg.ha_endpoint.clone(),
            source,
        })?;
        let seq = {
            let mut g = self.shared.lock();
            if let Some(c) = g.conn.take() {
                c.abort();
            }
            match g.state {
                LinkState::Closed => return Err(SimError::Closed),
                LinkState::Fenced if !first => return Err(SimError::Fenced),
                _ => {}
            }
            g.conn_seq += 1;
            let seq = g.conn_seq;
            let wake = Arc::new(Notify::new());
            let (stop_tx, stop_rx) = watch::channel(false);
            let reader = tokio::spawn(reader(self.shared.clone(), seq, r, stop_rx));
            let writer = tokio::spawn(writer(self.shared.clone(), seq, w, wake.clone()));
            g.conn = Some(Conn {
                seq,
                wake,
                stop_reading: stop_tx,
                reader,
                writer,
            });
            g.stats.connections += 1;
            g.out.clear();
            g.got_hello = false;
            // Cannot fail: no string, no notes.
            let _ = PeerFrame::Hello.encode(&mut g.out);
            g.ep_first = first;
            g.ep_seq += 1;
            g.ep_queries = 0;
            g.ep_reconnected = false;
            g.ep_error = None;
            self.shared.request(&mut g, first);
            g.ep_seq
        };
        self.shared.bump();
        self.wait_entrypoint(seq, cfg.timeout).await
    }

    async fn wait_entrypoint(&self, seq: u64, timeout: Duration) -> Result<Entrypoint, SimError> {
        self.wait_until(timeout, "the entrypoint reply", |g| match g.state {
            _ if g.ep_done >= seq => g.entrypoint.clone().map(Ok),
            LinkState::Requesting | LinkState::Up => None,
            LinkState::Fenced => Some(Err(SimError::Fenced)),
            LinkState::Closed => Some(Err(SimError::Closed)),
            LinkState::Idle | LinkState::Disconnected => Some(Err(match g.violations.last() {
                Some(v @ Violation::ReplyWithoutLink) => SimError::Protocol(v.clone()),
                _ => SimError::ConnectionLost(
                    g.ep_error.clone().unwrap_or_else(|| "disconnected".into()),
                ),
            })),
        })
        .await
    }

    /// Waits until `f` gives an answer, or `timeout` passes.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Inner) -> Option<Result<T, SimError>>,
    ) -> Result<T, SimError> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(r) = f(&self.shared.lock()) {
                return r;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`.
                Ok(Err(_)) | Err(_) => {
                    return Err(SimError::Timeout {
                        what: what.to_owned(),
                        after: timeout,
                    })
                }
            }
        }
    }

    /// Drops the connection without a word: the link stays alive at hax, and
    /// both sides keep their unconfirmed messages.
    pub fn vanish(&self) {
        let mut g = self.shared.lock();
        self.shared.drop_conn(&mut g, None, "vanished");
        drop(g);
        self.shared.bump();
    }

    /// Stops reading the socket (a peer that hangs); writing goes on. hax's
    /// output to it piles up until the emulator gives up on the connection.
    pub fn stop_reading(&self) {
        let g = self.shared.lock();
        if let Some(c) = &g.conn {
            let _ = c.stop_reading.send(true);
        }
    }

    /// Reads the socket again after [`SimProcess::stop_reading`].
    pub fn resume_reading(&self) {
        let g = self.shared.lock();
        if let Some(c) = &g.conn {
            let _ = c.stop_reading.send(false);
        }
    }

    /// Comes back on a new connection (after [`SimProcess::vanish`] or a lost
    /// connection): a request with `first_request = 0`, the link parameters
    /// and the last cookie. hax answers `link_reused` if the link lives, a new
    /// link with `do_reconnect` if hax restarted, or fences the process. Once
    /// attached, unconfirmed messages are resent in tag order.
    pub async fn reattach(&self) -> Result<Entrypoint, SimError> {
        {
            let g = self.shared.lock();
            match g.state {
                LinkState::Fenced => return Err(SimError::Fenced),
                LinkState::Closed => return Err(SimError::Closed),
                _ if g.link_id == 0 => return Err(SimError::NotConnected),
                _ => {}
            }
        }
        self.exchange(false).await
    }

    /// A restarted `m0d` with the same fid: everything it knew is gone
    /// (unconfirmed messages are counted as lost), and it makes a first
    /// request on a new connection.
    pub async fn restart(&self) -> Result<Entrypoint, SimError> {
        {
            let mut g = self.shared.lock();
            if g.state == LinkState::Closed {
                return Err(SimError::Closed);
            }
            if let Some(c) = g.conn.take() {
                c.abort();
            }
            g.out.clear();
            self.shared.fail_pending(&mut g, || SimError::Restarted);
            g.stats.lost += g.unconfirmed.len() as u64;
            g.unconfirmed.clear();
            g.in_undelivered.clear();
            g.link_id = 0;
            g.next_out = 0;
            g.next_in = 0;
            g.generation = 0;
            g.cookie = Uint128::default();
            g.next_get_id = FIRST_GET_ID;
            g.ep_outstanding = false;
            g.entrypoint = None;
            g.state = LinkState::Idle;
        }
        self.shared.bump();
        self.exchange(true).await
    }

    /// Drops the connection for good; waiting operations fail with `Closed`.
    pub fn close(&self) {
        let mut g = self.shared.lock();
        if let Some(c) = g.conn.take() {
            c.abort();
        }
        g.out.clear();
        g.state = LinkState::Closed;
        self.shared.fail_pending(&mut g, || SimError::Closed);
        drop(g);
        self.shared.bump();
    }

    // ------------------------------------------------------------ sending

    /// Sends a message (its tag is assigned here; any tag in `msg` is not
    /// used). Does not wait: the message is kept until hax confirms it, and
    /// written at once if the link is up, else when it is attached again.
    pub fn send(&self, msg: HaMsg) -> Result<u64, SimError> {
        let mut g = self.shared.lock();
        let tag = self.shared.enqueue(&mut g, msg)?;
        self.shared.wake_writer(&g);
        Ok(tag)
    }

    /// Sends many messages, pipelined, holding at most the configured window
    /// of unconfirmed messages and a few MiB of unwritten bytes. Returns the
    /// number sent and the last tag.
    pub async fn send_many<I>(&self, msgs: I) -> Result<(u64, Option<u64>), SimError>
    where
        I: IntoIterator<Item = HaMsg>,
    {
        let window = self.shared.cfg.window;
        let mut it = msgs.into_iter().peekable();
        let mut count = 0u64;
        let mut last = None;
        let mut rx = self.shared.changed.subscribe();
        while it.peek().is_some() {
            rx.borrow_and_update();
            let room = {
                let mut g = self.shared.lock();
                match g.state {
                    LinkState::Fenced => return Err(SimError::Fenced),
                    LinkState::Closed => return Err(SimError::Closed),
                    _ => {}
                }
                let room = window.saturating_sub(g.unconfirmed.len());
                let mut n = 0;
                while n < room && g.out.len() < OUT_HIGH {
                    let Some(m) = it.next() else { break };
                    last = Some(self.shared.enqueue(&mut g, m)?);
                    n += 1;
                }
                count += n as u64;
                self.shared.wake_writer(&g);
                n
            };
            if room == 0 && rx.changed().await.is_err() {
                return Err(SimError::Closed);
            }
        }
        Ok((count, last))
    }

    fn msg(&self, fid: Fid, data: HaMsgData) -> HaMsg {
        HaMsg {
            fid,
            time_ns: now_ns(),
            ..HaMsg::new(data)
        }
    }

    /// A process event about this process (`M0_CONF_HA_PROCESS_M0D`).
    pub fn process_event(&self, event: ProcessEventKind) -> HaMsg {
        self.msg(
            self.shared.cfg.fid,
            HaMsgData::ProcessEvent(ProcessEvent {
                event,
                process_type: ProcessType::M0d,
                pid: self.shared.cfg.pid,
            }),
        )
    }

    /// A service event about `service` of this process.
    pub fn service_event(
        &self,
        service: Fid,
        service_type: ServiceType,
        event: ServiceEventKind,
    ) -> HaMsg {
        HaMsg {
            source_process: self.shared.cfg.fid,
            source_service: service,
            ..self.msg(
                service,
                HaMsgData::ServiceEvent(ServiceEvent {
                    event,
                    service_type,
                    pid: self.shared.cfg.pid,
                }),
            )
        }
    }

    /// Sends a process event about this process.
    pub fn send_process_event(&self, event: ProcessEventKind) -> Result<u64, SimError> {
        self.send(self.process_event(event))
    }

    /// Sends a service event about `service`.
    pub fn send_service_event(
        &self,
        service: Fid,
        service_type: ServiceType,
        event: ServiceEventKind,
    ) -> Result<u64, SimError> {
        self.send(self.service_event(service, service_type, event))
    }

    /// Sends a service event for each configured service; returns the tags.
    pub fn send_service_events(&self, event: ServiceEventKind) -> Result<Vec<u64>, SimError> {
        let services = self.shared.cfg.services.clone();
        services
            .into_iter()
            .map(|(fid, ty)| self.send_service_event(fid, ty, event))
            .collect()
    }

    /// Sends the state of this process's RPC connection to `service`.
    pub fn send_rpc_event(
        &self,
        service: Fid,
        attempts: u64,
        state: HaState,
    ) -> Result<u64, SimError> {
        self.send(self.msg(service, HaMsgData::RpcEvent(RpcEvent { attempts, state })))
    }

    /// Reports a failed disk I/O (the message fid is the sdev).
    pub fn send_stob_ioq(&self, err: StobIoqError) -> Result<u64, SimError> {
        self.send(self.msg(err.conf_sdev, HaMsgData::StobIoq(err)))
    }

    /// Reports a BE I/O error.
    pub fn send_be_io_err(&self, err: BeIoErr) -> Result<u64, SimError> {
        self.send(self.msg(self.shared.cfg.fid, HaMsgData::BeIoErr(err)))
    }

    /// Reports an SNS copy machine error.
    pub fn send_sns_err(&self, err: SnsErr) -> Result<u64, SimError> {
        self.send(self.msg(self.shared.cfg.fid, HaMsgData::SnsErr(err)))
    }

    /// Sends a keepalive request and waits for the reply with the same id;
    /// returns hax's counter.
    pub async fn keepalive(&self) -> Result<u64, SimError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            let id = Uint128::new(self.shared.cfg.fid.key, g.next_keepalive);
            g.next_keepalive += 1;
            let msg = self.msg(self.shared.cfg.fid, HaMsgData::KeepaliveReq { id });
            self.shared.enqueue(&mut g, msg)?;
            g.keepalives.insert(id, tx);
            self.shared.wake_writer(&g);
        }
        self.await_reply(rx, "a keepalive reply").await
    }

    /// Sends an NVEC GET for `fids` and waits for the SET that answers it.
    /// The answer is checked as a real `m0d` does: same `id_of_get`, same
    /// count, same fids in the same order, no UNKNOWN state.
    pub async fn nvec_get(&self, fids: &[Fid]) -> Result<Vec<HaNote>, SimError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            let id = g.next_get_id;
            let msg = HaMsg::new(HaMsgData::Nvec(Nvec {
                kind: NvecKind::Get,
                id_of_get: id,
                ignore_same_state: false,
                notes: fids
                    .iter()
                    .map(|f| HaNote::new(*f, HaState::Unknown))
                    .collect(),
            }));
            let msg = HaMsg {
                time_ns: now_ns(),
                ..msg
            };
            self.shared.enqueue(&mut g, msg)?;
            g.next_get_id += 1;
            g.gets.insert(
                id,
                PendingGet {
                    fids: fids.to_vec(),
                    tx,
                },
            );
            self.shared.wake_writer(&g);
        }
        self.await_reply(rx, "the answer to an NVEC GET").await
    }

    /// Sends a failure vector request for `pool` and waits for the reply
    /// that echoes its cookie.
    pub async fn failvec(&self, pool: Fid) -> Result<FailvecRep, SimError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.shared.lock();
            let cookie = Cookie {
                addr: 0x5151_0000_0000 | g.next_cookie,
                generation: g.next_cookie,
            };
            let msg = self.msg(
                Fid::default(),
                HaMsgData::FailvecReq(FailvecReq { pool, cookie }),
            );
            self.shared.enqueue(&mut g, msg)?;
            g.next_cookie += 1;
            g.fvecs.push(PendingFvec { cookie, tx });
            self.shared.wake_writer(&g);
        }
        self.await_reply(rx, "a failure vector reply").await
    }

    async fn await_reply<T>(
        &self,
        rx: oneshot::Receiver<Result<T, SimError>>,
        what: &str,
    ) -> Result<T, SimError> {
        let timeout = self.shared.cfg.timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SimError::Closed),
            Err(_) => Err(SimError::Timeout {
                what: what.to_owned(),
                after: timeout,
            }),
        }
    }

    // ------------------------------------------------------------ delivery

    /// Delivers hax's message `tag` (policy [`Delivery::Manual`] or
    /// [`Delivery::Never`]): sends `DELIVERED`.
    pub fn deliver(&self, tag: u64) -> Result<(), SimError> {
        let mut g = self.shared.lock();
        if !g.in_undelivered.remove(&tag) {
            return Err(SimError::UnknownTag(tag));
        }
        self.shared.send_delivered(&mut g, tag);
        self.shared.wake_writer(&g);
        Ok(())
    }

    /// Delivers every received, undelivered message; returns how many.
    pub fn deliver_all(&self) -> usize {
        let mut g = self.shared.lock();
        let tags = std::mem::take(&mut g.in_undelivered);
        for &t in &tags {
            self.shared.send_delivered(&mut g, t);
        }
        self.shared.wake_writer(&g);
        tags.len()
    }

    /// Changes the delivery policy (already received messages stay as they
    /// are).
    pub fn set_delivery(&self, d: Delivery) {
        self.shared.lock().delivery = d;
    }

    // ------------------------------------------------------------ waiting

    /// Waits until at least `n` messages have been received from hax since
    /// the process was made (resends not counted).
    pub async fn wait_received(&self, n: usize, timeout: Duration) -> Result<(), SimError> {
        self.wait_until(timeout, &format!("{n} received messages"), |g| {
            (g.stats.received >= n as u64).then_some(Ok(()))
        })
        .await
    }

    /// Waits until at least `n` protocol violations have been seen.
    pub async fn wait_violations(&self, n: usize, timeout: Duration) -> Result<(), SimError> {
        self.wait_until(timeout, &format!("{n} protocol violations"), |g| {
            (g.violations.len() >= n).then_some(Ok(()))
        })
        .await
    }

    /// Waits until hax confirmed the message `tag`.
    pub async fn wait_confirmed(&self, tag: u64, timeout: Duration) -> Result<(), SimError> {
        self.wait_until(timeout, &format!("confirmation of tag {tag}"), |g| {
            if tag < g.next_out && !g.unconfirmed.contains_key(&tag) {
                Some(Ok(()))
            } else {
                ended(g)
            }
        })
        .await
    }

    /// Waits until hax confirmed every message sent so far.
    pub async fn wait_all_confirmed(&self, timeout: Duration) -> Result<(), SimError> {
        self.wait_until(timeout, "confirmation of every sent message", |g| {
            if g.unconfirmed.is_empty() {
                Some(Ok(()))
            } else {
                ended(g)
            }
        })
        .await
    }

    /// Waits until the link is in `state`.
    pub async fn wait_state(&self, state: LinkState, timeout: Duration) -> Result<(), SimError> {
        self.wait_until(timeout, &format!("state {state:?}"), |g| {
            (g.state == state).then_some(Ok(()))
        })
        .await
    }

    /// Waits until the process is fenced; returns the fencing reply.
    pub async fn wait_fenced(&self, timeout: Duration) -> Result<EpRep, SimError> {
        self.wait_until(timeout, "fencing", |g| {
            (g.state == LinkState::Fenced).then(|| {
                g.last_reply
                    .clone()
                    .ok_or_else(|| SimError::Config("fenced without a reply".into()))
            })
        })
        .await
    }

    // ------------------------------------------------------------ observing

    /// The process fid.
    pub fn fid(&self) -> Fid {
        self.shared.cfg.fid
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Where the link stands.
    pub fn state(&self) -> LinkState {
        self.shared.lock().state
    }

    /// The link id (0 when none).
    pub fn link_id(&self) -> u64 {
        self.shared.lock().link_id
    }

    /// The last completed entrypoint exchange.
    pub fn entrypoint(&self) -> Option<Entrypoint> {
        self.shared.lock().entrypoint.clone()
    }

    /// The last entrypoint reply, whatever it said.
    pub fn last_reply(&self) -> Option<EpRep> {
        self.shared.lock().last_reply.clone()
    }

    /// Every message received from hax, in order (resends not repeated).
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Takes the recorded messages out (for long runs); counts and
    /// [`SimProcess::wait_received`] are not affected.
    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut self.shared.lock().received)
    }

    /// How many messages were received from hax since the process was made.
    pub fn received_count(&self) -> usize {
        self.shared.lock().stats.received as usize
    }

    /// Tags of received messages not delivered yet.
    pub fn undelivered(&self) -> Vec<u64> {
        self.shared.lock().in_undelivered.iter().copied().collect()
    }

    /// Tags of sent messages hax has not confirmed yet.
    pub fn unconfirmed(&self) -> Vec<u64> {
        self.shared.lock().unconfirmed.keys().copied().collect()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats
    }

    /// Protocol violations seen, in order.
    pub fn violations(&self) -> Vec<Violation> {
        self.shared.lock().violations.clone()
    }
}

fn ended<T>(g: &Inner) -> Option<Result<T, SimError>> {
    match g.state {
        LinkState::Fenced => Some(Err(SimError::Fenced)),
        LinkState::Closed => Some(Err(SimError::Closed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(k: u64) -> Fid {
        Fid::typed(FidType::Sdev, 1, k)
    }

    #[test]
    fn get_reply_rules() {
        let asked = [f(1), f(2)];
        let ok = [
            HaNote::new(f(1), HaState::Online),
            HaNote::new(f(2), HaState::Failed),
        ];
        assert_eq!(check_get_reply(100, &asked, &ok), Ok(ok.to_vec()));
        assert_eq!(
            check_get_reply(100, &asked, &ok[..1]),
            Err(NvecReplyError::Count {
                id: 100,
                asked: 2,
                got: 1
            })
        );
        let swapped = [ok[1], ok[0]];
        assert_eq!(
            check_get_reply(100, &asked, &swapped),
            Err(NvecReplyError::Fid {
                id: 100,
                index: 0,
                asked: f(1),
                got: f(2)
            })
        );
        let unknown = [ok[0], HaNote::new(f(2), HaState::Unknown)];
        assert_eq!(
            check_get_reply(7, &asked, &unknown),
            Err(NvecReplyError::Unknown { id: 7, fid: f(2) })
        );
    }

    #[test]
    fn set_rules() {
        let set = |notes| Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state: true,
            notes,
        };
        assert_eq!(
            set_problem(&set(vec![HaNote::new(f(1), HaState::Repair)])),
            None
        );
        assert!(set_problem(&set(vec![])).is_some());
        assert!(set_problem(&set(vec![HaNote::new(f(1), HaState::Unknown)])).is_some());
        assert!(set_problem(&set(vec![HaNote::new(Fid::new(1, 1), HaState::Online)])).is_some());
        let proc_fid = Fid::typed(FidType::Process, 1, 1);
        assert!(set_problem(&set(vec![HaNote::new(proc_fid, HaState::Rebalance)])).is_some());
    }

    #[test]
    fn rconfc_warnings() {
        let ep = Entrypoint {
            reply: EpRep {
                control: Control::Consume,
                do_reconnect: false,
                disconnected_previously: false,
                req_id: Uint128::default(),
                cookie: Uint128::default(),
                link_id: 1,
                next_out_tag: 2,
                next_in_tag: 1,
                quorum: 0,
                rm_fid: Fid::default(),
                rm_ep: String::new(),
                confds: vec![],
            },
            queries: 0,
            outcome: LinkOutcome::New,
        };
        assert_eq!(ep.warnings().len(), 4);
    }

    #[test]
    fn config_is_checked() {
        let mut cfg = SimConfig::new("inet:tcp:127.0.0.1@1", Fid::typed(FidType::Process, 1, 1));
        assert!(SimProcess::new(cfg.clone()).is_ok());
        cfg.endpoint = "x".repeat(300);
        assert!(matches!(SimProcess::new(cfg), Err(SimError::Config(_))));
    }

    #[test]
    fn wire_limits_are_the_core_limits() {
        assert_eq!(crate::wire::NOTES_MAX, hax_core::NOTES_MAX);
    }
}
