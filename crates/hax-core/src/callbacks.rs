//! The [`Callbacks`] trait: what Motr tells hax.

use crate::ctx::Ctx;
use crate::entrypoint::{EntrypointRequest, LinkInfo};
use crate::fid::Uint128;
use crate::msg::{HaMsg, LinkId, Tag};
use crate::reply::{Delivery, Disconnect, EntrypointResponder, FailvecRequest, NvecGet};

/// Receives the halon interface's callbacks.
///
/// Methods run on Motr's threads, possibly several at once for different
/// links, so they take `&self`. They must not block: copy what you need and
/// hand it on (a bounded channel is the usual way). Data arrive already copied
/// out of C memory. What must be answered comes as a reply object (see
/// [`crate::reply`]), which can be answered later from any thread.
///
/// A panic is caught before it reaches C; after one, no method of this value
/// is called again, the pending reply objects give their safe answers, and
/// [`crate::Halon::stop`] reports the panic.
pub trait Callbacks: Send + Sync + 'static {
    /// A Motr process (or hax's own Motr, during start) asks for the
    /// configuration. Answer with [`EntrypointResponder::accept`], or refuse
    /// so that it asks again.
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder);

    /// A message arrived on `link`. NVEC GETs and failure vector requests go
    /// to [`Callbacks::nvec_get`] and [`Callbacks::failvec_request`] instead.
    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, delivery: Delivery) {
        let _ = (link, tag, msg);
        if let Err(e) = delivery.deliver_now(cx) {
            tracing::warn!(error = %e, "delivered failed");
        }
    }

    /// A peer asks for HA states. The default answers nothing useful
    /// (TRANSIENT for every fid, with a warning); a daemon answers from its
    /// view of the cluster.
    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, delivery: Delivery) {
        let _ = (cx, get, delivery);
    }

    /// A peer asks for a pool's failure vector. The default answers an empty
    /// vector for the pool asked about.
    fn failvec_request(&self, cx: &Ctx<'_>, req: FailvecRequest, delivery: Delivery) {
        let pool = req.pool();
        if let Err(e) = req.answer_now(cx, pool, Vec::new()) {
            tracing::warn!(error = %e, "failure vector reply failed");
        }
        if let Err(e) = delivery.deliver_now(cx) {
            tracing::warn!(error = %e, "delivered failed");
        }
    }

    /// The peer's user delivered message `tag` sent on `link`.
    fn msg_delivered(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        let _ = (cx, link, tag);
    }

    /// Message `tag` sent on `link` will never be delivered: the link stopped.
    fn msg_not_delivered(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        let _ = (cx, link, tag);
    }

    /// A reply to request `req_id` made a new link. Runs on the replying thread.
    fn link_connected(&self, cx: &Ctx<'_>, req_id: Uint128, link: &LinkInfo) {
        let _ = (cx, req_id, link);
    }

    /// A reply to request `req_id` found the requester's link alive.
    fn link_reused(&self, cx: &Ctx<'_>, req_id: Uint128, link: LinkId) {
        let _ = (cx, req_id, link);
    }

    /// The requester of `req_id` had a link that hax disconnected: it is fenced.
    fn link_absent(&self, cx: &Ctx<'_>, req_id: Uint128) {
        let _ = (cx, req_id);
    }

    /// Motr is disconnecting `link`. The default agrees at once (hax-core
    /// waits for the link's pending deliveries before it tells Motr).
    fn link_is_disconnecting(&self, cx: &Ctx<'_>, link: LinkId, disconnect: Disconnect) {
        let _ = link;
        if let Err(e) = disconnect.disconnect_now(cx) {
            tracing::warn!(error = %e, "disconnect failed");
        }
    }

    /// `link` is gone; every message sent on it has had its outcome.
    fn link_disconnected(&self, cx: &Ctx<'_>, link: LinkId) {
        let _ = (cx, link);
    }
}
