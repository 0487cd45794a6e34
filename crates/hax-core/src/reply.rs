//! Objects for what Motr needs answered exactly once: an entrypoint request,
//! the delivery of a received message, an NVEC GET, a failure vector request,
//! a disconnect. Each is consumed when used; one dropped unanswered gives the
//! safe answer and logs a warning, so Motr is never left waiting.
//!
//! Every object answers either now, on a thread Motr knows (`*_now`, with a
//! [`Ctx`]), or from anywhere by handing the call to hax-core's adopted call
//! thread.

use std::sync::Arc;

use crate::ctx::{Ctx, Shared};
use crate::entrypoint::EntrypointReply;
use crate::error::Result;
use crate::fid::{Fid, Uint128};
use crate::msg::{
    Cookie, FailvecRep, HaMsg, HaMsgData, HaNote, InvalidMsg, LinkId, Nvec, NvecKind, Tag,
    NOTES_MAX,
};
use crate::state::HaState;
use crate::trampoline::quietly;

/// `EAGAIN`: the answer to an entrypoint request hax cannot serve yet; the
/// requester asks again.
pub const EAGAIN: i32 = 11;

fn log_failure(what: &'static str, r: Result<()>) {
    if let Err(e) = r {
        quietly(|| tracing::warn!(error = %e, "{what} failed"));
    }
}

/// The obligation to deliver a received message (`hax_glue_delivered`).
/// Delivering tells the peer it need not resend the message after a restart.
#[must_use = "a received message must be delivered; dropping it delivers it with a warning"]
#[derive(Debug)]
pub struct Delivery {
    shared: Arc<Shared>,
    link: LinkId,
    tag: Tag,
    done: bool,
}

impl Delivery {
    pub(crate) fn new(shared: Arc<Shared>, link: LinkId, tag: Tag) -> Self {
        Delivery {
            shared,
            link,
            tag,
            done: false,
        }
    }

    /// The link the message came on.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// The message's tag.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// Delivers from any thread.
    pub fn deliver(mut self) {
        self.done = true;
        self.queue();
    }

    /// Delivers now, on this Motr thread.
    pub fn deliver_now(mut self, cx: &Ctx<'_>) -> Result<()> {
        self.done = true;
        cx.complete_delivery(self.link, self.tag)
    }

    fn queue(&self) {
        let (link, tag) = (self.link, self.tag);
        let r = self.shared.submit(Box::new(move |cx| {
            log_failure("delivered", cx.complete_delivery(link, tag));
        }));
        log_failure("delivered", r);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.done {
            quietly(
                || tracing::warn!(link = %self.link, tag = %self.tag, "message dropped undelivered; delivering it"),
            );
            self.queue();
        }
    }
}

/// The obligation to answer an entrypoint request.
#[must_use = "an entrypoint request must be answered; dropping it answers EAGAIN with a warning"]
#[derive(Debug)]
pub struct EntrypointResponder {
    shared: Arc<Shared>,
    req_id: Uint128,
    done: bool,
}

impl EntrypointResponder {
    pub(crate) fn new(shared: Arc<Shared>, req_id: Uint128) -> Self {
        EntrypointResponder {
            shared,
            req_id,
            done: false,
        }
    }

    /// The request answered.
    pub fn req_id(&self) -> Uint128 {
        self.req_id
    }

    /// Answers rc 0 with `reply`, from any thread.
    pub fn accept(mut self, reply: EntrypointReply) {
        self.done = true;
        self.queue(Ok(reply));
    }

    /// Answers with a non-zero `rc` from any thread: the requester asks again.
    pub fn refuse(mut self, rc: std::num::NonZeroI32) {
        self.done = true;
        self.queue(Err(rc.get()));
    }

    /// Answers rc 0 now, on this Motr thread. Link callbacks run inside.
    pub fn accept_now(mut self, cx: &Ctx<'_>, reply: &EntrypointReply) -> Result<()> {
        self.done = true;
        cx.entrypoint_reply(self.req_id, Ok(reply))
    }

    /// Answers a non-zero `rc` now, on this Motr thread.
    pub fn refuse_now(mut self, cx: &Ctx<'_>, rc: std::num::NonZeroI32) -> Result<()> {
        self.done = true;
        cx.entrypoint_reply(self.req_id, Err(rc.get()))
    }

    fn queue(&self, reply: std::result::Result<EntrypointReply, i32>) {
        let req_id = self.req_id;
        let r = self.shared.submit(Box::new(move |cx| {
            log_failure(
                "entrypoint reply",
                cx.entrypoint_reply(req_id, reply.as_ref().map_err(|rc| *rc)),
            );
        }));
        log_failure("entrypoint reply", r);
    }
}

impl Drop for EntrypointResponder {
    fn drop(&mut self) {
        if !self.done {
            quietly(
                || tracing::warn!(req_id = %self.req_id, "entrypoint request dropped unanswered; answering EAGAIN"),
            );
            self.queue(Err(EAGAIN));
        }
    }
}

/// An NVEC GET: the peer asks for the states of `fids`; the answer is a SET
/// with the same id and the same fids in the same order, which is how this
/// object builds it.
#[must_use = "an NVEC GET must be answered; dropping it answers TRANSIENT with a warning"]
#[derive(Debug)]
pub struct NvecGet {
    shared: Arc<Shared>,
    link: LinkId,
    id_of_get: u64,
    fids: Vec<Fid>,
    done: bool,
}

impl NvecGet {
    pub(crate) fn new(shared: Arc<Shared>, link: LinkId, id_of_get: u64, fids: Vec<Fid>) -> Self {
        NvecGet {
            shared,
            link,
            id_of_get,
            fids,
            done: false,
        }
    }

    /// The link the GET came on; the answer goes there.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// The GET's id.
    pub fn id_of_get(&self) -> u64 {
        self.id_of_get
    }

    /// The objects asked about, in order.
    pub fn fids(&self) -> &[Fid] {
        &self.fids
    }

    /// Answers from any thread with the state `state_of` gives for each fid.
    pub fn answer(mut self, state_of: impl FnMut(Fid) -> HaState) {
        self.done = true;
        let msg = self.reply_msg(state_of);
        self.queue(msg);
    }

    /// Answers now, on this Motr thread; returns the reply's tag.
    pub fn answer_now(mut self, cx: &Ctx<'_>, state_of: impl FnMut(Fid) -> HaState) -> Result<Tag> {
        self.done = true;
        let msg = self.reply_msg(state_of);
        cx.send_checked(self.link, &msg)
    }

    /// A state Motr would assert on (UNKNOWN in a SET, REPAIR or REBALANCE on
    /// an object that cannot be repaired) is answered as TRANSIENT.
    fn reply_msg(&self, mut state_of: impl FnMut(Fid) -> HaState) -> HaMsg {
        let notes = self
            .fids
            .iter()
            .map(|&fid| {
                let state = state_of(fid);
                let note = HaNote::new(fid, state);
                match crate::msg::validate_set_notes(std::slice::from_ref(&note)) {
                    Err(InvalidMsg::UnknownInSet(_) | InvalidMsg::WrongTypeForState(..)) => {
                        tracing::warn!(%fid, %state, "state not allowed in an NVEC reply; answering TRANSIENT");
                        HaNote::new(fid, HaState::Transient)
                    }
                    _ => note,
                }
            })
            .collect();
        HaMsg::new(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: self.id_of_get,
            ignore_same_state: true,
            notes,
        }))
    }

    fn queue(&self, msg: HaMsg) {
        let link = self.link;
        let r = self.shared.submit(Box::new(move |cx| {
            log_failure("NVEC reply", cx.send_checked(link, &msg).map(drop));
        }));
        log_failure("NVEC reply", r);
    }
}

impl Drop for NvecGet {
    fn drop(&mut self) {
        if !self.done {
            quietly(
                || tracing::warn!(link = %self.link, id = self.id_of_get, "NVEC GET dropped unanswered; answering TRANSIENT"),
            );
            let msg = self.reply_msg(|_| HaState::Transient);
            self.queue(msg);
        }
    }
}

/// A failure vector request for a pool; the answer echoes its cookie.
#[must_use = "a failure vector request must be answered; dropping it answers an empty vector with a warning"]
#[derive(Debug)]
pub struct FailvecRequest {
    shared: Arc<Shared>,
    link: LinkId,
    pool: Fid,
    cookie: Cookie,
    done: bool,
}

impl FailvecRequest {
    pub(crate) fn new(shared: Arc<Shared>, link: LinkId, pool: Fid, cookie: Cookie) -> Self {
        FailvecRequest {
            shared,
            link,
            pool,
            cookie,
            done: false,
        }
    }

    /// The link the request came on.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// The pool asked about.
    pub fn pool(&self) -> Fid {
        self.pool
    }

    fn reply_msg(&self, pool: Fid, notes: Vec<HaNote>) -> Result<HaMsg> {
        if notes.len() > NOTES_MAX {
            return Err(InvalidMsg::TooManyNotes(notes.len()).into());
        }
        Ok(HaMsg::new(HaMsgData::FailvecRep(FailvecRep {
            pool,
            cookie: self.cookie,
            notes,
        })))
    }

    /// Answers from any thread with the failed devices of `pool`.
    pub fn answer(mut self, pool: Fid, notes: Vec<HaNote>) -> Result<()> {
        let msg = self.reply_msg(pool, notes)?;
        self.done = true;
        self.queue(msg);
        Ok(())
    }

    /// Answers now, on this Motr thread; returns the reply's tag.
    pub fn answer_now(mut self, cx: &Ctx<'_>, pool: Fid, notes: Vec<HaNote>) -> Result<Tag> {
        let msg = self.reply_msg(pool, notes)?;
        self.done = true;
        cx.send_checked(self.link, &msg)
    }

    fn queue(&self, msg: HaMsg) {
        let link = self.link;
        let r = self.shared.submit(Box::new(move |cx| {
            log_failure(
                "failure vector reply",
                cx.send_checked(link, &msg).map(drop),
            );
        }));
        log_failure("failure vector reply", r);
    }
}

impl Drop for FailvecRequest {
    fn drop(&mut self) {
        if !self.done {
            quietly(
                || tracing::warn!(link = %self.link, pool = %self.pool, "failure vector request dropped unanswered; answering an empty vector"),
            );
            if let Ok(msg) = self.reply_msg(self.pool, Vec::new()) {
                self.queue(msg);
            }
        }
    }
}

/// Motr is disconnecting a link and waits for hax to agree. hax-core issues
/// the disconnect once every message received on the link is delivered, so
/// the order Motr requires holds whatever the caller does.
#[must_use = "a disconnecting link must be disconnected; dropping this does it"]
#[derive(Debug)]
pub struct Disconnect {
    shared: Arc<Shared>,
    link: LinkId,
    done: bool,
}

impl Disconnect {
    pub(crate) fn new(shared: Arc<Shared>, link: LinkId) -> Self {
        Disconnect {
            shared,
            link,
            done: false,
        }
    }

    /// The link.
    pub fn link(&self) -> LinkId {
        self.link
    }

    /// Disconnects from any thread.
    pub fn disconnect(mut self) {
        self.done = true;
        self.queue();
    }

    /// Disconnects now, on this Motr thread (or as soon as the link's last
    /// received message is delivered).
    pub fn disconnect_now(mut self, cx: &Ctx<'_>) -> Result<()> {
        self.done = true;
        cx.request_disconnect(self.link)
    }

    fn queue(&self) {
        let link = self.link;
        let r = self.shared.submit(Box::new(move |cx| {
            log_failure("disconnect", cx.request_disconnect(link));
        }));
        log_failure("disconnect", r);
    }
}

impl Drop for Disconnect {
    fn drop(&mut self) {
        if !self.done {
            quietly(|| tracing::debug!(link = %self.link, "disconnect dropped; disconnecting"));
            self.queue();
        }
    }
}
