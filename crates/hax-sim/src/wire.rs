//! The emulator peer protocol (`docs/emulator-protocol.md`): frames in both
//! directions, encoded and decoded with every check the protocol asks for.
//!
//! A frame on the stream is `u32 len` followed by `len` bytes: a type byte and
//! the body. [`frame_len`] checks a length header, [`split_frame`] cuts one
//! complete frame off a buffer, and [`PeerFrame::decode`] / [`HaxFrame::decode`]
//! turn the `type + body` bytes into a typed frame. Decoding never panics: every
//! malformed input is a [`WireError`].

use hax_core::{
    BeIoErr, BeLocation, CmOp, Cookie, FailvecRep, FailvecReq, Fid, HaMsg, HaMsgData, HaNote,
    HaState, Nvec, NvecKind, OutOfRange, ProcessEvent, ProcessEventKind, ProcessType, RpcEvent,
    ServiceEvent, ServiceEventKind, ServiceType, SnsErr, StobIoqError, Uint128,
};

/// `HELLO` magic, "HAXE".
pub const MAGIC: u32 = 0x4841_5845;
/// Protocol version.
pub const VERSION: u32 = 1;
/// Largest `len` of a frame (type byte plus body).
pub const FRAME_MAX: usize = 65536;
/// Largest `str`, in bytes.
pub const STR_MAX: usize = 255;
/// Most notes in an NVEC or a failure vector reply.
pub const NOTES_MAX: usize = 1024;
/// Most confds in an `EP_REP`.
pub const CONFDS_MAX: usize = 64;
/// Size of the length header.
pub const HEADER_LEN: usize = 4;

/// Frame type bytes.
pub mod frame_type {
    /// Peer → hax `HELLO`.
    pub const PEER_HELLO: u8 = 0x01;
    /// Peer → hax `EP_REQ`.
    pub const EP_REQ: u8 = 0x02;
    /// Peer → hax `MSG`.
    pub const PEER_MSG: u8 = 0x03;
    /// Peer → hax `DELIVERED`.
    pub const PEER_DELIVERED: u8 = 0x04;
    /// Peer → hax `CTL`.
    pub const CTL: u8 = 0x05;
    /// Hax → peer `HELLO`.
    pub const HAX_HELLO: u8 = 0x81;
    /// Hax → peer `EP_REP`.
    pub const EP_REP: u8 = 0x82;
    /// Hax → peer `MSG`.
    pub const HAX_MSG: u8 = 0x83;
    /// Hax → peer `DELIVERED`.
    pub const HAX_DELIVERED: u8 = 0x84;
    /// Hax → peer `NOLINK`.
    pub const NOLINK: u8 = 0x85;
    /// Hax → peer `CTL_R`.
    pub const CTL_R: u8 = 0x86;
}

/// Why bytes are not a valid frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length header is 0 or above [`FRAME_MAX`].
    #[error("frame length {0} is outside 1..={FRAME_MAX}")]
    BadLength(u64),
    /// A type byte this direction does not have.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// The body ends before its fields do.
    #[error("{frame} frame is shorter than its fields")]
    Truncated {
        /// The frame's name.
        frame: &'static str,
    },
    /// Bytes are left after the last field.
    #[error("{frame} frame has {extra} bytes after its last field")]
    TrailingBytes {
        /// The frame's name.
        frame: &'static str,
        /// How many.
        extra: usize,
    },
    /// `HELLO` with another magic or version.
    #[error("HELLO with magic {magic:#010x} version {version} (expected {MAGIC:#010x} version {VERSION})")]
    BadHello {
        /// Magic found.
        magic: u32,
        /// Version found.
        version: u32,
    },
    /// A `str` longer than [`STR_MAX`].
    #[error("string of {0} bytes: at most {STR_MAX}")]
    StringTooLong(usize),
    /// A `str` that is not UTF-8.
    #[error("string is not UTF-8")]
    StringNotUtf8,
    /// A `str` with a NUL byte.
    #[error("string contains a NUL byte")]
    StringHasNul,
    /// A note count above [`NOTES_MAX`].
    #[error("{0} notes: at most {NOTES_MAX}")]
    TooManyNotes(u64),
    /// A confd count above [`CONFDS_MAX`].
    #[error("{0} confds: at most {CONFDS_MAX}")]
    TooManyConfds(u64),
    /// A note state outside 0..=7.
    #[error("note state {0} is out of range 0..=7")]
    BadState(u64),
    /// An HA message type outside 1..=11.
    #[error("HA message type {0} is out of range 1..=11")]
    BadMsgType(u32),
    /// A 0/1 field with another value.
    #[error("{field} is {value}: must be 0 or 1")]
    BadBool {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// `EP_REP` control other than 0 (CONSUME) or 2 (QUERY).
    #[error("EP_REP control {0}: must be 0 (CONSUME) or 2 (QUERY)")]
    BadControl(u32),
    /// `EP_REP` flags with bits other than 0 and 1.
    #[error("EP_REP flags {0:#04x} has undefined bits")]
    BadFlags(u8),
    /// An enumeration field of a payload is out of range.
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    /// A `CTL` frame with an unknown operation, a field out of its range,
    /// or a count over what the frame holds.
    #[error("CTL {field} {value} is out of range")]
    BadCtl {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// Checks a length header; returns the number of bytes that follow it.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > FRAME_MAX {
        return Err(WireError::BadLength(len as u64));
    }
    Ok(len)
}

/// Cuts the first complete frame off `buf`. Returns the frame's `type + body`
/// bytes and the number of bytes it takes in `buf` (header included), or `None`
/// when `buf` does not yet hold a whole frame. A bad length header is an error
/// as soon as the header is there.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; 4];
    h.copy_from_slice(header);
    let len = frame_len(h)?;
    Ok(buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .map(|frame| (frame, HEADER_LEN + len)))
}

/// An entrypoint request (`EP_REQ`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpReq {
    /// A new process asking for the first time.
    pub first_request: bool,
    /// Counts the peer's requests.
    pub generation: u64,
    /// The peer's process fid.
    pub process_fid: Fid,
    /// The peer's pid.
    pub pid: u64,
    /// The `cookie` of the last `EP_REP` the peer got, zero before that.
    pub cookie_expected: Uint128,
    /// The peer's current link id (0 on a first request).
    pub link_id: u64,
    /// The tag of the next message the peer will send.
    pub next_out_tag: u64,
    /// The tag of the next message the peer expects from hax.
    pub next_in_tag: u64,
    /// The peer's own endpoint.
    pub endpoint: String,
    /// The peer's build.
    pub git_rev_id: String,
}

/// `EP_REP` control: what the peer does with the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// hax's `rc` was 0: use the reply.
    Consume,
    /// hax's `rc` was not 0: ask again.
    Query,
}

impl Control {
    /// The wire value.
    pub const fn raw(self) -> u32 {
        match self {
            Control::Consume => 0,
            Control::Query => 2,
        }
    }
}

/// One confd in an entrypoint reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confd {
    /// The confd service fid.
    pub fid: Fid,
    /// Its endpoint.
    pub ep: String,
}

/// An entrypoint reply (`EP_REP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpRep {
    /// CONSUME or QUERY.
    pub control: Control,
    /// Flag bit 0: the link was created anew by a restarted hax.
    pub do_reconnect: bool,
    /// Flag bit 1: hax disconnected this peer's link: the peer is fenced.
    pub disconnected_previously: bool,
    /// The id hax's user saw for the request.
    pub req_id: Uint128,
    /// Identifies the run of hax.
    pub cookie: Uint128,
    /// The link made or found, 0 when there is none.
    pub link_id: u64,
    /// The tag of the next message the peer must send.
    pub next_out_tag: u64,
    /// The tag of the next message hax will send.
    pub next_in_tag: u64,
    /// Confd quorum.
    pub quorum: u32,
    /// Active RM service fid.
    pub rm_fid: Fid,
    /// Active RM endpoint.
    pub rm_ep: String,
    /// The confds, at most [`CONFDS_MAX`].
    pub confds: Vec<Confd>,
}

/// A frame from a peer to hax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    /// `HELLO` with [`MAGIC`] and [`VERSION`].
    Hello,
    /// `EP_REQ`.
    EpReq(EpReq),
    /// `MSG`.
    Msg {
        /// The link.
        link_id: u64,
        /// The tag the link assigned.
        tag: u64,
        /// The message.
        msg: HaMsg,
    },
    /// `DELIVERED`: the peer delivered hax's message `tag`.
    Delivered {
        /// The link.
        link_id: u64,
        /// hax's tag.
        tag: u64,
    },
    /// `CTL`: a control operation on the emulator's client model.
    Ctl {
        /// Echoed by the `CTL_R` that answers it.
        seq: u64,
        /// The operation.
        op: CtlOp,
    },
}

/// A frame from hax to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaxFrame {
    /// `HELLO` with [`MAGIC`] and [`VERSION`].
    Hello,
    /// `EP_REP`.
    EpRep(EpRep),
    /// `MSG`.
    Msg {
        /// The link.
        link_id: u64,
        /// hax's tag.
        tag: u64,
        /// The message.
        msg: HaMsg,
    },
    /// `DELIVERED`: hax's user delivered the peer's message `tag`.
    Delivered {
        /// The link.
        link_id: u64,
        /// The peer's tag.
        tag: u64,
    },
    /// `NOLINK`: the link does not exist.
    NoLink {
        /// The link.
        link_id: u64,
    },
    /// `CTL_R`: the answer to a `CTL`.
    CtlReply {
        /// The `CTL`'s seq.
        seq: u64,
        /// 0, or the negative errno the model refused it with.
        rc: i32,
    },
}

// ---------------------------------------------------------------- encoding

/// Appends little-endian fields to a buffer.
struct Wr<'a> {
    out: &'a mut Vec<u8>,
}

impl Wr<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn fid(&mut self, f: &Fid) {
        self.u64(f.container);
        self.u64(f.key);
    }
    fn u128(&mut self, v: &Uint128) {
        self.u64(v.hi);
        self.u64(v.lo);
    }
    fn str(&mut self, s: &str) -> Result<(), WireError> {
        check_str(s)?;
        self.u16(s.len() as u16);
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn notes(&mut self, notes: &[HaNote]) -> Result<(), WireError> {
        if notes.len() > NOTES_MAX {
            return Err(WireError::TooManyNotes(notes.len() as u64));
        }
        self.u32(notes.len() as u32);
        for n in notes {
            self.fid(&n.fid);
            self.u32(n.state.raw());
        }
        Ok(())
    }
}

fn check_str(s: &str) -> Result<(), WireError> {
    if s.len() > STR_MAX {
        return Err(WireError::StringTooLong(s.len()));
    }
    if s.as_bytes().contains(&0) {
        return Err(WireError::StringHasNul);
    }
    Ok(())
}

/// Writes one frame: header, type, body written by `body`. On error `out` is
/// left as it was.
fn frame(
    out: &mut Vec<u8>,
    ty: u8,
    body: impl FnOnce(&mut Wr<'_>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(ty);
    let r = body(&mut Wr { out: &mut *out });
    let len = out.len() - start - HEADER_LEN;
    if let Err(e) = r {
        out.truncate(start);
        return Err(e);
    }
    if len > FRAME_MAX {
        out.truncate(start);
        return Err(WireError::BadLength(len as u64));
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

fn encode_msg_body(w: &mut Wr<'_>, m: &HaMsg) -> Result<(), WireError> {
    w.fid(&m.fid);
    w.fid(&m.source_process);
    w.fid(&m.source_service);
    w.u64(m.time_ns);
    w.u64(m.epoch);
    w.u32(m.data.type_id());
    match &m.data {
        HaMsgData::StobIoq(s) => {
            w.fid(&s.conf_sdev);
            w.fid(&s.stob_domain);
            w.fid(&s.stob_fid);
            w.i64(s.fd);
            w.i64(s.opcode);
            w.i64(s.rc);
            w.u64(s.offset);
            w.u64(s.size);
            w.u32(s.bshift);
        }
        HaMsgData::Nvec(n) => {
            w.u64(match n.kind {
                NvecKind::Set => 0,
                NvecKind::Get => 1,
            });
            w.u64(n.id_of_get);
            w.u64(u64::from(n.ignore_same_state));
            w.notes(&n.notes)?;
        }
        HaMsgData::FailvecReq(r) => {
            w.fid(&r.pool);
            w.u64(r.cookie.addr);
            w.u64(r.cookie.generation);
        }
        HaMsgData::FailvecRep(r) => {
            w.fid(&r.pool);
            w.u64(r.cookie.addr);
            w.u64(r.cookie.generation);
            w.notes(&r.notes)?;
        }
        HaMsgData::KeepaliveReq { id } => w.u128(id),
        HaMsgData::KeepaliveRep { id, counter } => {
            w.u128(id);
            w.u64(*counter);
        }
        HaMsgData::ProcessEvent(e) => {
            w.u64(u64::from(e.event.raw()));
            w.u64(u64::from(e.process_type.raw()));
            w.u64(e.pid);
        }
        HaMsgData::ServiceEvent(e) => {
            w.u64(u64::from(e.event.raw()));
            w.u64(u64::from(e.service_type.raw()));
            w.u64(e.pid);
        }
        HaMsgData::RpcEvent(e) => {
            w.u64(e.attempts);
            w.u64(u64::from(e.state.raw()));
        }
        HaMsgData::BeIoErr(e) => {
            w.u32(e.errcode);
            w.u8(e.location.raw() as u8);
            w.u8(e.opcode);
        }
        HaMsgData::SnsErr(e) => {
            w.u32(e.errcode);
            w.u8(e.opcode.raw() as u8);
        }
    }
    Ok(())
}

fn encode_msg_frame(
    out: &mut Vec<u8>,
    ty: u8,
    link_id: u64,
    tag: u64,
    msg: &HaMsg,
) -> Result<(), WireError> {
    frame(out, ty, |w| {
        w.u64(link_id);
        w.u64(tag);
        encode_msg_body(w, msg)
    })
}

/// Appends a peer `MSG` frame to `out` (the hot path of a sending peer).
pub fn encode_peer_msg(
    out: &mut Vec<u8>,
    link_id: u64,
    tag: u64,
    msg: &HaMsg,
) -> Result<(), WireError> {
    encode_msg_frame(out, frame_type::PEER_MSG, link_id, tag, msg)
}

/// Appends a peer `DELIVERED` frame to `out`.
pub fn encode_peer_delivered(out: &mut Vec<u8>, link_id: u64, tag: u64) {
    out.extend_from_slice(&17u32.to_le_bytes());
    out.push(frame_type::PEER_DELIVERED);
    out.extend_from_slice(&link_id.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
}

impl PeerFrame {
    /// Appends the frame, header included, to `out`. Fails (leaving `out` as
    /// it was) on a string, note count or length a receiver would reject.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        use frame_type::*;
        match self {
            PeerFrame::Hello => frame(out, PEER_HELLO, |w| {
                w.u32(MAGIC);
                w.u32(VERSION);
                Ok(())
            }),
            PeerFrame::EpReq(r) => frame(out, EP_REQ, |w| {
                w.u8(u8::from(r.first_request));
                w.u64(r.generation);
                w.fid(&r.process_fid);
                w.u64(r.pid);
                w.u128(&r.cookie_expected);
                w.u64(r.link_id);
                w.u64(r.next_out_tag);
                w.u64(r.next_in_tag);
                w.str(&r.endpoint)?;
                w.str(&r.git_rev_id)
            }),
            PeerFrame::Msg { link_id, tag, msg } => encode_peer_msg(out, *link_id, *tag, msg),
            PeerFrame::Delivered { link_id, tag } => {
                encode_peer_delivered(out, *link_id, *tag);
                Ok(())
            }
            PeerFrame::Ctl { seq, op } => frame(out, CTL, |w| {
                w.u64(*seq);
                ctl::encode_ctl(w, op)
            }),
        }
    }

    /// Decodes a frame's `type + body` bytes (see [`split_frame`]).
    pub fn decode(frame: &[u8]) -> Result<PeerFrame, WireError> {
        use frame_type::*;
        let (&ty, body) = frame.split_first().ok_or(WireError::BadLength(0))?;
        match ty {
            PEER_HELLO => decode_all("HELLO", body, decode_hello),
            EP_REQ => decode_all("EP_REQ", body, decode_ep_req),
            PEER_MSG => decode_all("MSG", body, |r| {
                let (link_id, tag, msg) = decode_msg_frame(r)?;
                Ok(PeerFrame::Msg { link_id, tag, msg })
            }),
            PEER_DELIVERED => decode_all("DELIVERED", body, |r| {
                Ok(PeerFrame::Delivered {
                    link_id: r.u64()?,
                    tag: r.u64()?,
                })
            }),
            CTL => decode_all("CTL", body, |r| {
                Ok(PeerFrame::Ctl {
                    seq: r.u64()?,
                    op: ctl::decode_ctl(r)?,
                })
            }),
            _ => Err(WireError::UnknownFrameType(ty)),
        }
    }

    /// The frame's name in the protocol.
    pub fn name(&self) -> &'static str {
        match self {
            PeerFrame::Hello => "HELLO",
            PeerFrame::EpReq(_) => "EP_REQ",
            PeerFrame::Msg { .. } => "MSG",
            PeerFrame::Delivered { .. } => "DELIVERED",
            PeerFrame::Ctl { .. } => "CTL",
        }
    }
}

impl HaxFrame {
    /// Appends the frame, header included, to `out`. Fails (leaving `out` as
    /// it was) on a string, count or length a receiver would reject.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        use frame_type::*;
        match self {
            HaxFrame::Hello => frame(out, HAX_HELLO, |w| {
                w.u32(MAGIC);
                w.u32(VERSION);
                Ok(())
            }),
            HaxFrame::EpRep(r) => frame(out, EP_REP, |w| {
                w.u32(r.control.raw());
                w.u8(u8::from(r.do_reconnect) | (u8::from(r.disconnected_previously) << 1));
                w.u128(&r.req_id);
                w.u128(&r.cookie);
                w.u64(r.link_id);
                w.u64(r.next_out_tag);
                w.u64(r.next_in_tag);
                w.u32(r.quorum);
                w.fid(&r.rm_fid);
                w.str(&r.rm_ep)?;
                if r.confds.len() > CONFDS_MAX {
                    return Err(WireError::TooManyConfds(r.confds.len() as u64));
                }
                w.u32(r.confds.len() as u32);
                for c in &r.confds {
                    w.fid(&c.fid);
                    w.str(&c.ep)?;
                }
                Ok(())
            }),
            HaxFrame::Msg { link_id, tag, msg } => {
                encode_msg_frame(out, HAX_MSG, *link_id, *tag, msg)
            }
            HaxFrame::Delivered { link_id, tag } => frame(out, HAX_DELIVERED, |w| {
                w.u64(*link_id);
                w.u64(*tag);
                Ok(())
            }),
            HaxFrame::NoLink { link_id } => frame(out, NOLINK, |w| {
                w.u64(*link_id);
                Ok(())
            }),
            HaxFrame::CtlReply { seq, rc } => frame(out, CTL_R, |w| {
                w.u64(*seq);
                w.u32(*rc as u32);
                Ok(())
            }),
        }
    }

    /// Decodes a frame's `type + body` bytes (see [`split_frame`]).
    pub fn decode(frame: &[u8]) -> Result<HaxFrame, WireError> {
        use frame_type::*;
        let (&ty, body) = frame.split_first().ok_or(WireError::BadLength(0))?;
        match ty {
            HAX_HELLO => decode_all("HELLO", body, decode_hello),
            EP_REP => decode_all("EP_REP", body, decode_ep_rep),
            HAX_MSG => decode_all("MSG", body, |r| {
                let (link_id, tag, msg) = decode_msg_frame(r)?;
                Ok(HaxFrame::Msg { link_id, tag, msg })
            }),
            HAX_DELIVERED => decode_all("DELIVERED", body, |r| {
                Ok(HaxFrame::Delivered {
                    link_id: r.u64()?,
                    tag: r.u64()?,
                })
            }),
            NOLINK => decode_all("NOLINK", body, |r| {
                Ok(HaxFrame::NoLink { link_id: r.u64()? })
            }),
            CTL_R => decode_all("CTL_R", body, |r| {
                Ok(HaxFrame::CtlReply {
                    seq: r.u64()?,
                    rc: r.u32()? as i32,
                })
            }),
            _ => Err(WireError::UnknownFrameType(ty)),
        }
    }

    /// The frame's name in the protocol.
    pub fn name(&self) -> &'static str {
        match self {
            HaxFrame::Hello => "HELLO",
            HaxFrame::EpRep(_) => "EP_REP",
            HaxFrame::Msg { .. } => "MSG",
            HaxFrame::Delivered { .. } => "DELIVERED",
            HaxFrame::NoLink { .. } => "NOLINK",
            HaxFrame::CtlReply { .. } => "CTL_R",
        }
    }
}

// ---------------------------------------------------------------- decoding

/// Reads little-endian fields off a body. A short read is reported as
/// [`WireError::Truncated`] with the frame's name filled in by [`decode_all`].
struct Rd<'a> {
    buf: &'a [u8],
}

/// Marker for "ran out of bytes"; turned into `Truncated` with the frame name.
const SHORT: WireError = WireError::Truncated { frame: "" };

impl<'a> Rd<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or(SHORT)?;
        self.buf = rest;
        Ok(*head)
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(SHORT);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn fid(&mut self) -> Result<Fid, WireError> {
        Ok(Fid::new(self.u64()?, self.u64()?))
    }
    fn u128(&mut self) -> Result<Uint128, WireError> {
        Ok(Uint128::new(self.u64()?, self.u64()?))
    }
    fn bool8(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadBool {
                field,
                value: u64::from(v),
            }),
        }
    }
    fn bool64(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::BadBool { field, value }),
        }
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u16()?);
        if n > STR_MAX {
            return Err(WireError::StringTooLong(n));
        }
        let b = self.bytes(n)?;
        let s = std::str::from_utf8(b).map_err(|_| WireError::StringNotUtf8)?;
        if b.contains(&0) {
            return Err(WireError::StringHasNul);
        }
        Ok(s.to_owned())
    }
    fn notes(&mut self) -> Result<Vec<HaNote>, WireError> {
        let nr = self.u32()?;
        if nr as usize > NOTES_MAX {
            return Err(WireError::TooManyNotes(u64::from(nr)));
        }
        // Never trust a count for an allocation beyond what the body holds.
        let mut notes = Vec::with_capacity((nr as usize).min(self.buf.len() / 20));
        for _ in 0..nr {
            let fid = self.fid()?;
            let raw = self.u32()?;
            let state = HaState::try_from(u64::from(raw))
                .map_err(|_| WireError::BadState(u64::from(raw)))?;
            notes.push(HaNote::new(fid, state));
        }
        Ok(notes)
    }
}

fn decode_all<T>(
    name: &'static str,
    body: &[u8],
    f: impl FnOnce(&mut Rd<'_>) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let mut r = Rd { buf: body };
    let v = f(&mut r).map_err(|e| match e {
        WireError::Truncated { .. } => WireError::Truncated { frame: name },
        e => e,
    })?;
    if !r.buf.is_empty() {
        return Err(WireError::TrailingBytes {
            frame: name,
            extra: r.buf.len(),
        });
    }
    Ok(v)
}

trait FromHello {
    fn hello() -> Self;
}
impl FromHello for PeerFrame {
    fn hello() -> Self {
        PeerFrame::Hello
    }
}
impl FromHello for HaxFrame {
    fn hello() -> Self {
        HaxFrame::Hello
    }
}

fn decode_hello<T: FromHello>(r: &mut Rd<'_>) -> Result<T, WireError> {
    let magic = r.u32()?;
    let version = r.u32()?;
    if magic != MAGIC || version != VERSION {
        return Err(WireError::BadHello { magic, version });
    }
    Ok(T::hello())
}

fn decode_ep_req(r: &mut Rd<'_>) -> Result<PeerFrame, WireError> {
    Ok(PeerFrame::EpReq(EpReq {
        first_request: r.bool8("first_request")?,
        generation: r.u64()?,
        process_fid: r.fid()?,
        pid: r.u64()?,
        cookie_expected: r.u128()?,
        link_id: r.u64()?,
        next_out_tag: r.u64()?,
        next_in_tag: r.u64()?,
        endpoint: r.str()?,
        git_rev_id: r.str()?,
    }))
}

fn decode_ep_rep(r: &mut Rd<'_>) -> Result<HaxFrame, WireError> {
    let control = match r.u32()? {
        0 => Control::Consume,
        2 => Control::Query,
        c => return Err(WireError::BadControl(c)),
    };
    let flags = r.u8()?;
    if flags & !0b11 != 0 {
        return Err(WireError::BadFlags(flags));
    }
    let req_id = r.u128()?;
    let cookie = r.u128()?;
    let link_id = r.u64()?;
    let next_out_tag = r.u64()?;
    let next_in_tag = r.u64()?;
    let quorum = r.u32()?;
    let rm_fid = r.fid()?;
    let rm_ep = r.str()?;
    let nr = r.u32()?;
    if nr as usize > CONFDS_MAX {
        return Err(WireError::TooManyConfds(u64::from(nr)));
    }
    let mut confds = Vec::with_capacity(nr as usize);
    for _ in 0..nr {
        confds.push(Confd {
            fid: r.fid()?,
            ep: r.str()?,
        });
    }
    Ok(HaxFrame::EpRep(EpRep {
        control,
        do_reconnect: flags & 1 != 0,
        disconnected_previously: flags & 2 != 0,
        req_id,
        cookie,
        link_id,
        next_out_tag,
        next_in_tag,
        quorum,
        rm_fid,
        rm_ep,
        confds,
    }))
}

fn decode_msg_frame(r: &mut Rd<'_>) -> Result<(u64, u64, HaMsg), WireError> {
    let link_id = r.u64()?;
    let tag = r.u64()?;
    Ok((link_id, tag, decode_msg(r)?))
}

fn decode_msg(r: &mut Rd<'_>) -> Result<HaMsg, WireError> {
    let fid = r.fid()?;
    let source_process = r.fid()?;
    let source_service = r.fid()?;
    let time_ns = r.u64()?;
    let epoch = r.u64()?;
    let ty = r.u32()?;
    let data = match ty {
        1 => HaMsgData::StobIoq(StobIoqError {
            conf_sdev: r.fid()?,
            stob_domain: r.fid()?,
            stob_fid: r.fid()?,
            fd: r.i64()?,
            opcode: r.i64()?,
            rc: r.i64()?,
            offset: r.u64()?,
            size: r.u64()?,
            bshift: r.u32()?,
        }),
        2 => {
            let kind = match r.u64()? {
                0 => NvecKind::Set,
                1 => NvecKind::Get,
                value => {
                    return Err(WireError::BadBool {
                        field: "NVEC dir",
                        value,
                    })
                }
            };
            HaMsgData::Nvec(Nvec {
                kind,
                id_of_get: r.u64()?,
                ignore_same_state: r.bool64("NVEC ignore_same")?,
                notes: r.notes()?,
            })
        }
        3 => HaMsgData::FailvecReq(FailvecReq {
            pool: r.fid()?,
            cookie: Cookie {
                addr: r.u64()?,
                generation: r.u64()?,
            },
        }),
        4 => HaMsgData::FailvecRep(FailvecRep {
            pool: r.fid()?,
            cookie: Cookie {
                addr: r.u64()?,
                generation: r.u64()?,
            },
            notes: r.notes()?,
        }),
        5 => HaMsgData::KeepaliveReq { id: r.u128()? },
        6 => HaMsgData::KeepaliveRep {
            id: r.u128()?,
            counter: r.u64()?,
        },
        7 => HaMsgData::ProcessEvent(ProcessEvent {
            event: ProcessEventKind::try_from(r.u64()?)?,
            process_type: ProcessType::try_from(r.u64()?)?,
            pid: r.u64()?,
        }),
        8 => HaMsgData::ServiceEvent(ServiceEvent {
            event: ServiceEventKind::try_from(r.u64()?)?,
            service_type: ServiceType::try_from(r.u64()?)?,
            pid: r.u64()?,
        }),
        9 => {
            let attempts = r.u64()?;
            let raw = r.u64()?;
            let state = HaState::try_from(raw).map_err(|_| WireError::BadState(raw))?;
            HaMsgData::RpcEvent(RpcEvent { attempts, state })
        }
        10 => HaMsgData::BeIoErr(BeIoErr {
            errcode: r.u32()?,
            location: BeLocation::try_from(u64::from(r.u8()?))?,
            opcode: r.u8()?,
        }),
        11 => HaMsgData::SnsErr(SnsErr {
            errcode: r.u32()?,
            opcode: CmOp::try_from(u64::from(r.u8()?))?,
        }),
        t => return Err(WireError::BadMsgType(t)),
    };
    Ok(HaMsg {
        fid,
        source_process,
        source_service,
        time_ns,
        epoch,
        data,
    })
}

mod ctl;
pub use ctl::{ctl_op, ClientOp, CtlOp, Fault, PoolDef, PverDef, FAULT_DELAY_MAX_MS, SNS_RATE_MAX};

#[cfg(test)]
mod tests;
