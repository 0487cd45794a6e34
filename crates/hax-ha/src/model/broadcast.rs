//! The contract between the parts that ask for HA state broadcasts (the
//! event pipeline, the broadcast queue, fencing) and the broadcaster that
//! carries them out: what is asked ([`BroadcastOptions`]) and what comes
//! back ([`Sent`], then a [`DeliveryReport`]).

use std::future::Future;
use std::pin::Pin;

use hax_core::{Fid, HaNote, Outcome, Tracked};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::model::HaUpdate;

/// Options of one broadcast (the original's `broadcast_ha_states` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastOptions {
    /// Also notify the drives (and controllers, nodes, enclosures) of
    /// processes.
    pub notify_devices: bool,
    /// Write the implied configuration-tree states to Consul.
    pub update_kv: bool,
    /// Send only to hax's own link (mkfs and hax events).
    pub broadcast_hax_only: bool,
    /// Processes whose links are skipped.
    pub proc_skip_list: Vec<Fid>,
    /// Leave hax's own link out: the notes it would have got are returned
    /// with the messages ([`Sent::self_link_notes`]), to be sent later with
    /// [`Broadcast::send_to_self_link`].
    pub skip_self_link: bool,
    /// The notes may share messages with those of other broadcasts asked
    /// for at the same time (see [`crate::broadcast::Broadcaster`]); without
    /// it the broadcast gets messages of its own, as in the original. Set
    /// for process events, which come by the thousand.
    pub coalesce: bool,
}

impl Default for BroadcastOptions {
    fn default() -> Self {
        BroadcastOptions {
            notify_devices: true,
            update_kv: true,
            broadcast_hax_only: false,
            proc_skip_list: Vec::new(),
            skip_self_link: false,
            coalesce: false,
        }
    }
}

/// A broadcast that could not be handed to Motr.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("broadcast failed: {reason}")]
pub struct BroadcastFailed {
    /// Why.
    pub reason: String,
    /// Trying again later may succeed (Consul unavailable, Motr busy).
    pub transient: bool,
}

type OutcomeFuture = Pin<Box<dyn Future<Output = Option<Outcome>> + Send>>;

/// The messages a broadcast handed to Motr, each resolving with its outcome
/// (`None`: the halon interface stopped first).
pub struct Sent {
    outcomes: Vec<OutcomeFuture>,
    self_link_notes: Vec<HaNote>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("messages", &self.outcomes.len())
            .field("self_link_notes", &self.self_link_notes.len())
            .finish()
    }
}

/// How the messages of a broadcast ended by a deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Delivered.
    pub delivered: usize,
    /// Not delivered (link gone, or interface stopped).
    pub not_delivered: usize,
    /// Still unknown at the deadline.
    pub pending: usize,
}

impl Sent {
    /// Nothing was sent (no link to send to).
    pub fn none() -> Self {
        Sent {
            outcomes: Vec::new(),
            self_link_notes: Vec::new(),
        }
    }

    /// Messages sent by the broadcaster.
    pub fn from_outcomes(sent: Vec<SentOutcome>) -> Self {
        Sent::from_futures(sent.into_iter().map(SentOutcome::outcome))
    }

    /// Any futures resolving with an outcome.
    pub fn from_futures<F>(futures: impl IntoIterator<Item = F>) -> Self
    where
        F: Future<Output = Option<Outcome>> + Send + 'static,
    {
        Sent {
            outcomes: futures
                .into_iter()
                .map(|f| Box::pin(f) as OutcomeFuture)
                .collect(),
            self_link_notes: Vec::new(),
        }
    }

    /// With the notes hax's own link was left out of
    /// ([`BroadcastOptions::skip_self_link`]).
    pub fn with_self_link_notes(mut self, notes: Vec<HaNote>) -> Self {
        self.self_link_notes = notes;
        self
    }

    /// The notes hax's own link was left out of (empty unless
    /// [`BroadcastOptions::skip_self_link`]).
    pub fn self_link_notes(&self) -> &[HaNote] {
        &self.self_link_notes
    }

    /// Messages sent.
    pub fn len(&self) -> usize {
        self.outcomes.len()
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    /// Waits until every message has an outcome or the deadline passes.
    pub async fn wait_all(self, deadline: Instant) -> DeliveryReport {
        self.wait(deadline, false).await
    }

    /// Waits until one message is delivered, all have an outcome, or the
    /// deadline passes.
    pub async fn wait_any(self, deadline: Instant) -> DeliveryReport {
        self.wait(deadline, true).await
    }

    async fn wait(self, deadline: Instant, any: bool) -> DeliveryReport {
        let mut report = DeliveryReport {
            pending: self.outcomes.len(),
            ..DeliveryReport::default()
        };
        let mut set = JoinSet::new();
        for f in self.outcomes {
            set.spawn(f);
        }
        while report.pending > 0 {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(r)) => {
                    report.pending -= 1;
                    if matches!(r, Ok(Some(Outcome::Delivered))) {
                        report.delivered += 1;
                        if any {
                            break;
                        }
                    } else {
                        report.not_delivered += 1;
                    }
                }
            }
        }
        report
    }
}

/// Sends HA state updates to the links (implemented by the daemon's
/// broadcaster).
pub trait Broadcast: Send + Sync + 'static {
    /// Broadcasts `updates` with `options`. Broadcasts are done in the order
    /// of the calls (not of the first polls of their futures): the caller
    /// may go on and await the future later, or elsewhere. It resolves once
    /// the messages are handed to Motr.
    fn broadcast(
        &self,
        updates: Vec<HaUpdate>,
        options: BroadcastOptions,
    ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static;

    /// Sends `notes` as they are to hax's own link only, nothing planned or
    /// written: what a [`BroadcastOptions::skip_self_link`] broadcast left
    /// out. Ordered with the broadcasts as they are.
    fn send_to_self_link(
        &self,
        notes: Vec<HaNote>,
    ) -> impl Future<Output = Result<Sent, BroadcastFailed>> + Send + 'static;

    /// How many links made by `process`'s entrypoint requests hax holds now
    /// (hax's own link not counted).
    fn links_of(&self, process: Fid) -> usize;
}

/// The outcome to come of one message a broadcast sent. Broadcasts done
/// together share their messages; each of them gets the outcome.
#[derive(Debug)]
pub struct SentOutcome(pub(crate) OutcomeOf);

/// Where a [`SentOutcome`] comes from.
#[derive(Debug)]
pub(crate) enum OutcomeOf {
    Own(Tracked),
    /// Set by the task following a shared message; its sender is dropped
    /// without a value if the halon interface stops first.
    Shared(watch::Receiver<Option<Outcome>>),
}

impl SentOutcome {
    /// Waits for the outcome; `None` if the halon interface stopped first.
    pub async fn outcome(self) -> Option<Outcome> {
        match self.0 {
            OutcomeOf::Own(t) => t.outcome().await.ok(),
            OutcomeOf::Shared(mut rx) => rx.wait_for(Option::is_some).await.ok().and_then(|o| *o),
        }
    }
}
