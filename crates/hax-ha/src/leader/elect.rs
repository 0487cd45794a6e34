//! Election of the RC leader by hax itself, for a cluster without hare's
//! scripts (opt-in: the daemon's `[leader] elect`).
//!
//! hare elects the RC leader with a Consul watch on `leader` running
//! `elect-rc-leader`: when no session holds the key, a node creates a
//! session tied to its health checks (`serfHealth`, and the checks of its
//! confd and hax services) with a lock-delay of 2 s, and acquires `leader`
//! with its node name as the value. The [`Elector`] does the same from
//! inside hax: it follows `leader` with a blocking query, and whenever no
//! session holds it, tries to acquire it with a session of its own.
//!
//! Who leads is still what `leader` says: the leader's periodic work
//! (broadcast-queue trimming, statistics, failures of other nodes) follows
//! the cluster view of the key, not this module, so it moves with the key
//! whoever wrote it.
//!
//! The session has no TTL: it lives as long as its checks pass (no
//! renewals), so a node whose Consul agent fails loses it, and the lock
//! after the lock-delay. At stop the elector releases `leader` (a release,
//! unlike an invalidation, has no lock-delay, so another node takes over at
//! once) and destroys its session: a stopped hax does no leader work, and
//! with a session tied to `serfHealth` alone nothing else would ever free
//! the lock. A hax killed without a stop leaves its session; started again,
//! it adopts it (same name, same Consul node, its node name as the value)
//! rather than wait for a lock that is its own.

use std::time::Duration;

use hax_consul::backoff::Backoff;
use hax_consul::kv::KvPair;
use hax_consul::schema::keys;
use hax_consul::session::{SessionBehavior, SessionRequest};
use hax_consul::watch::{self as consul_watch, WatchConfig};
use hax_consul::{ConsulClient, ConsulError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::view::entrypoint::strip_node_suffix;

/// Name of the sessions the elector creates; a session of another name
/// (hare's are `leader`) is never adopted.
pub const SESSION_NAME: &str = "hax-leader";

/// The lock-delay hare's `elect-rc-leader` gives its sessions.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(2);

/// The catalog services of this node whose health checks the session is
/// tied to besides `serfHealth`, as hare ties it: the confd (the principal
/// RM is the leader node's confd) and hax itself.
pub const DEFAULT_SERVICES: [&str; 2] = ["confd", "hax"];

/// How long the stop may take to release `leader` and destroy the session.
const RESIGN_GRACE: Duration = Duration::from_secs(5);

/// Settings of an [`Elector`].
#[derive(Clone, Debug, PartialEq)]
pub struct ElectConfig {
    /// The node name written to `leader`: hax's node (the identity's), the
    /// name the cluster view compares the key with.
    pub node: String,
    /// The session's lock-delay: after the session is invalidated, no one
    /// can acquire `leader` for this long.
    pub lock_delay: Duration,
    /// Catalog services registered on this Consul node whose checks the
    /// session is tied to, with `serfHealth`; a service not registered here
    /// is left out.
    pub services: Vec<String>,
    /// The pause before trying again while `leader` is free but could not
    /// be acquired (its lock-delay runs, or another node won the race and
    /// its write has not been seen yet).
    pub retry: Duration,
    /// The longest pause between attempts after Consul errors.
    pub max_backoff: Duration,
    /// How `leader` is followed.
    pub watch: WatchConfig,
}

impl ElectConfig {
    /// hare's settings for node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        ElectConfig {
            node: node.into(),
            lock_delay: DEFAULT_LOCK_DELAY,
            services: DEFAULT_SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            retry: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            watch: WatchConfig::default(),
        }
    }
}

/// The election task of one hax. Dropping it stops the task, which then
/// resigns in the background; [`Elector::stop`] waits for that.
#[derive(Debug)]
pub struct Elector {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    leading: watch::Receiver<bool>,
}

impl Elector {
    /// Starts electing this node, as a task of `tasks` on the runtime of
    /// the caller.
    pub fn spawn(client: ConsulClient, config: ElectConfig, tasks: &TaskTracker) -> Elector {
        let cancel = CancellationToken::new();
        let (tx, leading) = watch::channel(false);
        let backoff = Backoff::new(config.retry, config.max_backoff.max(config.retry)).jittered();
        let run = Run {
            client,
            config,
            agent_node: None,
            session: None,
            elsewhere: None,
            leading: tx,
            backoff,
        };
        let task = tasks.spawn(run.run(cancel.clone()));
        Elector {
            cancel,
            task: Some(task),
            leading,
        }
    }

    /// Whether this node holds `leader` with its session, as last seen.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows [`Elector::is_leading`].
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops electing: releases `leader` if this node holds it, destroys
    /// the session, and returns once done (at most a few seconds when
    /// Consul does not answer).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the elector does after one look at `leader`.
enum Next {
    /// Nothing until `leader` changes.
    Wait,
    /// Look again after this pause, even if `leader` does not change (the
    /// end of a lock-delay changes nothing Consul reports).
    Retry(Duration),
}

struct Run {
    client: ConsulClient,
    config: ElectConfig,
    /// This Consul agent's node name, once asked.
    agent_node: Option<String>,
    /// The session of this elector, once created (or adopted).
    session: Option<String>,
    /// The session last seen holding `leader` for another node, so that
    /// each new holder is logged once.
    elsewhere: Option<String>,
    leading: watch::Sender<bool>,
    backoff: Backoff,
}

impl Run {
    async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(node = %self.config.node, lock_delay = ?self.config.lock_delay, "electing the RC leader");
        let watcher = consul_watch::watch_key(
            self.client.clone(),
            keys::LEADER,
            self.config.watch,
            &cancel,
        );
        let mut rx = watcher.subscribe();
        let mut again: Option<Instant> = None;
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.loaded {
                // A stop does not wait for Consul calls under way (they may
                // take a request timeout each while Consul is away);
                // `resign` finds what an acquisition cut short left.
                let next = tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = self.step(snapshot.value.as_ref().as_ref()) => next,
                };
                again = match next {
                    Next::Wait => None,
                    Next::Retry(pause) => Some(Instant::now() + pause),
                };
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = rx.changed() => if r.is_err() { break },
                _ = sleep_until(again), if again.is_some() => {}
            }
        }
        drop(watcher);
        if tokio::time::timeout(RESIGN_GRACE, self.resign())
            .await
            .is_err()
        {
            tracing::warn!("RC leadership not released in time: Consul frees it when the session's checks fail");
        }
    }

    /// One look at `leader`.
    async fn step(&mut self, pair: Option<&KvPair>) -> Next {
        let holder = pair
            .and_then(|p| p.session.as_deref())
            .filter(|s| !s.is_empty());
        match holder {
            Some(h) if self.session.as_deref() == Some(h) => {
                if pair.is_some_and(|p| p.value != self.config.node.as_bytes()) {
                    tracing::warn!(value = %String::from_utf8_lossy(pair.map_or(&[][..], |p| &p.value)), "leader holds another value under this node's session");
                }
                self.set_leading(true);
                Next::Wait
            }
            Some(h) => {
                let ours = pair.is_some_and(|p| p.value == self.config.node.as_bytes());
                if self.session.is_none() && ours {
                    match self.adoptable(h).await {
                        Ok(true) => {
                            tracing::info!(session = %h, "RC leader session of an earlier run of this hax adopted");
                            self.session = Some(h.to_owned());
                            self.set_leading(true);
                            return Next::Wait;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "leader session not checked; retrying");
                            return Next::Retry(self.backoff.next_pause());
                        }
                    }
                }
                self.set_leading(false);
                if self.elsewhere.as_deref() != Some(h) {
                    tracing::info!(session = %h, value = %String::from_utf8_lossy(pair.map_or(&[][..], |p| &p.value)), "the RC leader lock is held by another session");
                    self.elsewhere = Some(h.to_owned());
                }
                Next::Wait
            }
            None => {
                self.set_leading(false);
                match self.try_acquire().await {
                    Ok(true) => {
                        self.backoff.reset();
                        self.set_leading(true);
                        Next::Wait
                    }
                    Ok(false) => {
                        tracing::debug!(
                            "leader is free but not acquired (lock-delay, or taken meanwhile)"
                        );
                        Next::Retry(self.config.retry)
                    }
                    Err(e) => {
                        let pause = self.backoff.next_pause();
                        tracing::warn!(error = %e, retry_in = ?pause, "RC leader election failed; retrying");
                        Next::Retry(pause)
                    }
                }
            }
        }
    }

    fn set_leading(&self, now: bool) {
        let was = self.leading.send_replace(now);
        if now && !was {
            tracing::info!(node = %self.config.node, session = self.session.as_deref().unwrap_or_default(), "this node is the RC leader");
        } else if was && !now {
            tracing::warn!(node = %self.config.node, "this node is no longer the RC leader");
        }
    }

    async fn agent_node(&mut self) -> Result<String, ConsulError> {
        if let Some(n) = &self.agent_node {
            return Ok(n.clone());
        }
        let name = self.client.agent_self().await?.config.node_name;
        let name = strip_node_suffix(&name).to_owned();
        self.agent_node = Some(name.clone());
        Ok(name)
    }

    /// Whether session `id` is one this elector would have created: its
    /// name, on this Consul node.
    async fn adoptable(&mut self, id: &str) -> Result<bool, ConsulError> {
        let agent = self.agent_node().await?;
        Ok(self
            .client
            .session_info(id)
            .await?
            .value
            .is_some_and(|s| s.name == SESSION_NAME && strip_node_suffix(&s.node) == agent))
    }

    /// Tries to take `leader` with this elector's session, made first if
    /// there is none (or it was invalidated).
    async fn try_acquire(&mut self) -> Result<bool, ConsulError> {
        if let Some(s) = &self.session {
            if self.client.session_info(s).await?.value.is_none() {
                tracing::info!(session = %s, "RC leader session invalidated; making a new one");
                self.session = None;
            }
        }
        let session = match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = self.create_session().await?;
                self.session = Some(s.clone());
                s
            }
        };
        self.client
            .kv_acquire(keys::LEADER, self.config.node.as_bytes(), &session)
            .await
    }

    async fn create_session(&mut self) -> Result<String, ConsulError> {
        let mut checks = vec!["serfHealth".to_owned()];
        if !self.config.services.is_empty() {
            let agent = self.agent_node().await?;
            let node_checks = self.client.health_node(&agent).await?.value;
            checks.extend(
                node_checks
                    .into_iter()
                    .filter(|c| self.config.services.contains(&c.service_name))
                    .map(|c| c.check_id),
            );
        }
        // A check that is not passing makes Consul refuse the session: this
        // node is not elected until its confd and hax are healthy.
        let id = self
            .client
            .session_create(&SessionRequest {
                name: Some(SESSION_NAME.to_owned()),
                lock_delay: Some(self.config.lock_delay),
                behavior: SessionBehavior::Release,
                checks: Some(checks.clone()),
                ..SessionRequest::default()
            })
            .await?;
        tracing::debug!(session = %id, ?checks, "RC leader session created");
        Ok(id)
    }

    /// Releases `leader` if this elector holds it, and destroys its session.
    /// A stop may cut off an acquisition before its answer: a session it
    /// would adopt is then taken for its own.
    async fn resign(&mut self) {
        let holder = match self.client.kv_get(keys::LEADER).await {
            Ok(r) => r
                .value
                .and_then(|p| Some((p.session.filter(|s| !s.is_empty())?, p.value))),
            Err(e) => {
                tracing::warn!(error = %e, "leader not read at stop");
                None
            }
        };
        let mut ours = self.session.take();
        if let Some((held_by, value)) = holder {
            let mine = match &ours {
                Some(s) => *s == held_by,
                None => {
                    value == self.config.node.as_bytes()
                        && self.adoptable(&held_by).await.unwrap_or(false)
                }
            };
            if mine {
                // The value stays, as after an invalidation: the next
                // leader overwrites it.
                match self.client.kv_release(keys::LEADER, &value, &held_by).await {
                    Ok(true) => tracing::info!(node = %self.config.node, "RC leadership released"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "leader not released; destroying the session frees it after the lock-delay")
                    }
                }
                ours = Some(held_by);
            }
        }
        self.leading.send_replace(false);
        if let Some(session) = ours {
            if let Err(e) = self.client.session_destroy(&session).await {
                tracing::warn!(error = %e, %session, "RC leader session not destroyed");
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
