//! Watchers: in-memory snapshots of Consul data kept up to date by blocking
//! queries, published through `tokio::sync::watch`.
//!
//! Index rules (Consul's blocking-query guidance):
//! * the first read, and every read after an error, is a plain read (index 0),
//!   so that an agent that restarted with a lower index is noticed at once
//!   instead of after a whole `wait`;
//! * an index lower than the last one seen means the agent's state was reset
//!   (restart of an in-memory agent, snapshot restore): the watcher re-reads
//!   from scratch and counts a reset;
//! * an index of 0 is never sent as a blocking index (it would not block).
//!
//! Errors back off exponentially with jitter up to a cap. Answers that bring
//! nothing new (the index moved for other data, or the wait ended) make the
//! next request go through a token bucket, so a misbehaving agent cannot turn
//! the loop into a busy loop; an answer that changed the data is followed at
//! once by the next query, so bursts of changes are seen without added delay.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogService, ServiceEntry};
use crate::client::{ConsulClient, Indexed, QueryOptions, RetryPolicy};
use crate::error::Result;
use crate::kv::KvPair;

/// Something a watcher can follow with blocking queries.
pub trait WatchSource: Send + Sync + 'static {
    /// The data kept in the snapshot.
    type Value: Clone + PartialEq + Default + Send + Sync + 'static;

    /// One read with the given options (blocking when `opts.index` is set).
    fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> impl Future<Output = Result<Indexed<Self::Value>>> + Send;

    /// Short description for logs.
    fn describe(&self) -> String;
}

/// One KV key; the snapshot holds the entry or `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource(pub String);

impl WatchSource for KeySource {
    type Value = Option<KvPair>;

    async fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> Result<Indexed<Self::Value>> {
        client.kv_get_with(&self.0, opts).await
    }

    fn describe(&self) -> String {
        format!("key {}", self.0)
    }
}

/// Every key under a prefix; the snapshot maps keys to entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixSource(pub String);

impl WatchSource for PrefixSource {
    type Value = BTreeMap<String, KvPair>;

    async fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> Result<Indexed<Self::Value>> {
        let listed = client.kv_list_with(&self.0, opts).await?;
        Ok(Indexed {
            value: listed
                .value
                .into_iter()
                .map(|p| (p.key.clone(), p))
                .collect(),
            index: listed.index,
        })
    }

    fn describe(&self) -> String {
        format!("prefix {}", self.0)
    }
}

/// Health entries of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealthSource {
    /// Service name.
    pub name: String,
    /// Only instances whose checks all pass.
    pub passing_only: bool,
}

impl WatchSource for ServiceHealthSource {
    type Value = Vec<ServiceEntry>;

    async fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> Result<Indexed<Self::Value>> {
        client
            .health_service_with(&self.name, self.passing_only, opts)
            .await
    }

    fn describe(&self) -> String {
        format!("health of service {}", self.name)
    }
}

/// Catalog instances of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogServiceSource(pub String);

impl WatchSource for CatalogServiceSource {
    type Value = Vec<CatalogService>;

    async fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> Result<Indexed<Self::Value>> {
        client.catalog_service_with(&self.0, opts).await
    }

    fn describe(&self) -> String {
        format!("catalog service {}", self.0)
    }
}

/// What subscribers see.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<T> {
    /// The data as of `index`.
    pub value: Arc<T>,
    /// Index of the answer that produced `value` (0 before the first read).
    pub index: u64,
    /// Whether at least one read succeeded.
    pub loaded: bool,
    /// Whether the last read failed: `value` may be out of date.
    pub stale: bool,
    /// How many times the index went backwards and the data was re-read.
    pub resets: u64,
}

impl<T: Default> Default for Snapshot<T> {
    fn default() -> Self {
        Snapshot {
            value: Arc::new(T::default()),
            index: 0,
            loaded: false,
            stale: false,
            resets: 0,
        }
    }
}

/// Tuning of a watcher.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// `wait` of each blocking query.
    pub wait: Duration,
    /// Backoff after consecutive errors (attempts are unlimited; only the
    /// delays are used).
    pub error_backoff: RetryPolicy,
    /// Token bucket over requests that follow an answer without news: burst...
    pub burst: u32,
    /// ...and sustained requests per second.
    pub rate_per_sec: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            wait: Duration::from_secs(60),
            error_backoff: RetryPolicy {
                max_attempts: u32::MAX,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(15),
            },
            burst: 5,
            rate_per_sec: 20.0,
        }
    }
}

/// Why waiting on a watcher ended without the expected snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The condition did not hold before the deadline.
    #[error("watch condition not met within {0:?}")]
    Timeout(Duration),
    /// The watcher stopped (cancelled or dropped).
    #[error("watcher stopped")]
    Closed,
}

/// A running watcher task. Dropping it stops the task.
#[derive(Debug)]
pub struct Watcher<T> {
    rx: watch::Receiver<Snapshot<T>>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    requests: Arc<AtomicU64>,
}

impl<T: Clone + PartialEq + Default + Send + Sync + 'static> Watcher<T> {
    /// Starts following `source`. The task stops when `cancel` (or the
    /// returned watcher's own token, a child of it) is cancelled.
    pub fn spawn<S>(
        client: ConsulClient,
        source: S,
        config: WatchConfig,
        cancel: &CancellationToken,
    ) -> Self
    where
        S: WatchSource<Value = T>,
    {
        let (tx, rx) = watch::channel(Snapshot::default());
        let cancel = cancel.child_token();
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            client,
            source,
            config,
            tx,
            cancel.clone(),
            requests.clone(),
        ));
        Watcher {
            rx,
            cancel,
            task: Some(task),
            requests,
        }
    }

    /// A receiver that is notified whenever the data (or its staleness)
    /// changes; answers that change nothing do not wake it.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot<T>> {
        self.rx.clone()
    }

    /// The current snapshot, without a Consul round trip.
    pub fn current(&self) -> Snapshot<T> {
        self.rx.borrow().clone()
    }

    /// Number of requests sent so far (for observing the rate limits).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Waits until `pred` holds for the snapshot, at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Snapshot<T>) -> bool,
    ) -> std::result::Result<Snapshot<T>, WatchError> {
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match waited {
            Err(_) => Err(WatchError::Timeout(timeout)),
            Ok(Err(_)) => Err(WatchError::Closed),
            Ok(Ok(s)) => Ok(s.clone()),
        }
    }

    /// Waits for the first successful read.
    pub async fn loaded(&self, timeout: Duration) -> std::result::Result<Snapshot<T>, WatchError> {
        self.wait_until(timeout, |s| s.loaded).await
    }

    /// Stops the task and waits for it to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl<T> Drop for Watcher<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Follows one KV key.
pub fn watch_key(
    client: ConsulClient,
    key: impl Into<String>,
    config: WatchConfig,
    cancel: &CancellationToken,
) -> Watcher<Option<KvPair>> {
    Watcher::spawn(client, KeySource(key.into()), config, cancel)
}

/// Follows every key under a prefix.
pub fn watch_prefix(
    client: ConsulClient,
    prefix: impl Into<String>,
    config: WatchConfig,
    cancel: &CancellationToken,
) -> Watcher<BTreeMap<String, KvPair>> {
    Watcher::spawn(client, PrefixSource(prefix.into()), config, cancel)
}

/// A token bucket: `burst` requests at once, then `rate` per second.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, rate: f64) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            rate: if rate > 0.0 { rate } else { 1.0 },
            last: Instant::now(),
        }
    }

    /// How long to wait before the next request may go (and takes its token).
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    if delay.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

async fn run<S: WatchSource>(
    client: ConsulClient,
    source: S,
    config: WatchConfig,
    tx: watch::Sender<Snapshot<S::Value>>,
    cancel: CancellationToken,
    requests: Arc<AtomicU64>,
) {
    let what = source.describe();
    let mut bucket = TokenBucket::new(config.burst, config.rate_per_sec);
    // Index to send next (0 = plain read) and the last index seen.
    let mut next_index = 0u64;
    let mut seen_index = 0u64;
    let mut errors = 0u32;
    // Whether the last answer changed the snapshot (then the next query is
    // not rate limited).
    let mut news = true;
    loop {
        let delay = if news { Duration::ZERO } else { bucket.take() };
        if !sleep_or_cancel(delay, &cancel).await {
            break;
        }
        news = false;
        let opts = QueryOptions {
            index: Some(next_index),
            wait: Some(config.wait),
            ..QueryOptions::default()
        };
        requests.fetch_add(1, Ordering::Relaxed);
        let answer = tokio::select! {
            _ = cancel.cancelled() => break,
            a = source.fetch(&client, &opts) => a,
        };
        match answer {
            Ok(Indexed { value, index }) => {
                if errors > 0 {
                    tracing::info!(watch = %what, errors, "watch recovered");
                }
                errors = 0;
                if index < seen_index && next_index != 0 {
                    // Reset while blocking: re-read from scratch.
                    tracing::info!(watch = %what, from = seen_index, to = index, "Consul index went backwards, re-reading");
                    seen_index = index;
                    next_index = 0;
                    tx.send_modify(|s| s.resets += 1);
                    continue;
                }
                let reset = index < seen_index;
                if reset {
                    tracing::info!(watch = %what, from = seen_index, to = index, "Consul index went backwards");
                }
                seen_index = index;
                // Never block on 0: it would return at once, forever.
                next_index = index.max(1);
                news = tx.send_if_modified(|s| {
                    let changed = !s.loaded || s.stale || reset || *s.value != value;
                    s.index = index;
                    if reset {
                        s.resets += 1;
                    }
                    if changed {
                        s.value = Arc::new(value);
                        s.loaded = true;
                        s.stale = false;
                    }
                    changed
                });
            }
            Err(e) => {
                let delay = config.error_backoff.delay(errors);
                errors = errors.saturating_add(1);
                // One line per outage at warn, the rest at debug.
                if errors == 1 {
                    tracing::warn!(watch = %what, error = %e, "watch read failed, backing off");
                } else {
                    tracing::debug!(watch = %what, error = %e, errors, delay_ms = delay.as_millis() as u64, "watch read failed again");
                }
                // After an outage, start with a plain read so that an index
                // reset shows at once.
                next_index = 0;
                tx.send_if_modified(|s| {
                    let changed = !s.stale;
                    s.stale = true;
                    changed
                });
                if !sleep_or_cancel(delay, &cancel).await {
                    break;
                }
            }
        }
    }
    tracing::debug!(watch = %what, "watch stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_limits_the_rate() {
        let mut b = TokenBucket::new(2, 10.0);
        assert_eq!(b.take(), Duration::ZERO);
        assert_eq!(b.take(), Duration::ZERO);
        let d = b.take();
        assert!(
            d > Duration::from_millis(90) && d <= Duration::from_millis(100),
            "{d:?}"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.take(), Duration::ZERO, "refilled");
    }
}
