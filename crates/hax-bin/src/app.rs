//! The daemon: start order, the tasks, and shutdown.
//!
//! Start: Consul reachable with a leader, entrypoint configuration and the
//! cluster view loading, identity known, the HTTP address bound (before Motr
//! is started or any of hax's state is written, so that a hax whose ports
//! are taken leaves no trace), halon started (it blocks until hax's own entrypoint
//! request is answered from the configuration), HTTP server serving, then
//! readiness is reported to systemd.
//!
//! With `[leader] elect`, the RC leader election starts once Consul is
//! reachable, before anything waits for the leader.
//!
//! Stop (on `shutdown`): the HTTP server stops taking requests, the leader's
//! work stops and the election gives the leadership back, the Motr events
//! queued so far are handled and their Consul writes finished, every link
//! goes through the disconnect handshake, halon stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hax_consul::backoff::Backoff;
use hax_consul::schema::HaxKv;
use hax_consul::server::{self, AppState, ResyncTarget, ServerConfig, WatchUpdate};
use hax_consul::{AclToken, ConsulClient};
use hax_core::{Halon, HalonConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::config::Config;
use hax_consul::writer::{KvWriter, WriterConfig};
use hax_ha::broadcast::Broadcaster;
use hax_ha::http::metrics as http_metrics;
use hax_ha::inbound::bq::{self, BqConfig, BqProcessor};
use hax_ha::inbound::watches::WatchHandlers;
use hax_ha::leader::elect::Elector;
use hax_ha::metrics::{Metrics, Registry};
use hax_ha::motr::bridge::Bridge;
use hax_ha::motr::fencing::Incarnations;
use hax_ha::motr::keepalive::{self, KeepaliveConfig, KeepaliveInbox, KeepaliveParts};
use hax_ha::pipeline::{EventPipeline, EventsConfig};
use hax_ha::view::identity;
use hax_ha::view::{ClusterView, ViewConfig};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A setting is refused, with its name.
    #[error("configuration: {0}")]
    Setting(#[from] crate::config::ConfigError),
    /// Consul could not be used.
    #[error("consul: {0}")]
    Consul(#[from] hax_consul::ConsulError),
    /// The identity could not be resolved.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Motr's halon interface failed.
    #[error("motr: {0}")]
    Motr(#[from] hax_core::Error),
    /// Motr's halon interface could not start on hax's endpoint (taken by
    /// another process, most often).
    #[error("motr: cannot start the halon interface on endpoint {endpoint} (identity.endpoint, or the hax service in Consul): {source}")]
    MotrStart {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: hax_core::Error,
    },
    /// The HTTP server could not listen.
    #[error("cannot listen for HTTP on {addr} ({from}): {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// What said to listen there.
        from: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// No address or certificate to listen with.
    #[error(transparent)]
    Listen(#[from] crate::listen::ListenError),
}

impl AppError {
    /// The daemon's exit status for this error: 2 for a refused setting,
    /// as for those refused before the start; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Setting(_) => 2,
            _ => 1,
        }
    }
}

/// How long start waits for the cluster view before it goes on.
const VIEW_WAIT: Duration = Duration::from_secs(30);

/// How long shutdown waits for queued Consul writes.
const FLUSH_GRACE: Duration = Duration::from_secs(10);

/// How long the stop waits for Motr to take the fence of the processes
/// silent at the stop (a message on hax's own link: milliseconds).
const SILENT_FENCE_WAIT: Duration = Duration::from_secs(2);

fn consul_client(cfg: &Config, token: Option<AclToken>) -> Result<ConsulClient, AppError> {
    Ok(ConsulClient::new(cfg.consul_config(Duration::MAX, token))?)
}

/// Waits until Consul answers and has a leader, retrying until `cancel`.
async fn wait_for_consul(client: &ConsulClient, cancel: &CancellationToken) -> Option<String> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client.status_leader().await {
            Ok(Some(leader)) => return Some(leader),
            Ok(None) => tracing::warn!("consul has no leader yet"),
            Err(e) => tracing::warn!(error = %e, "consul not reachable yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// The local node's name, retried until Consul tells or `cancel`.
async fn node_name(
    cfg: &Config,
    client: &ConsulClient,
    cancel: &CancellationToken,
) -> Option<String> {
    let overrides = cfg.identity.overrides();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match identity::node_name(client, &overrides).await {
            Ok(n) => return Some(n),
            Err(e) => tracing::warn!(error = %e, "node name not known yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// Starts the RC leader election when `[leader] elect` is on, `None`
/// otherwise. It runs before the identity is resolved, which waits for the
/// principal RM, the leader's: without hare, only the election makes one.
fn start_election(
    cfg: &Config,
    client: &ConsulClient,
    node: &str,
    tracker: &TaskTracker,
) -> Option<Elector> {
    if !cfg.leader.elect {
        return None;
    }
    let config = cfg.leader.elect_config(node)?;
    Some(Elector::spawn(client.clone(), config, tracker))
}

/// Runs the daemon until `shutdown` is cancelled. Every task it starts
/// runs on one tracker, waited for (bounded) before it returns: once it
/// has, none of them runs any more.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let tracker = TaskTracker::new();
    let mut elector = None;
    let r = run_with(cfg, shutdown, &mut elector, &tracker).await;
    // However the run ended, the leadership of a hax that no longer runs is
    // given back; a stop in order has already done so.
    if let Some(e) = elector.take() {
        e.stop().await;
    }
    // What `run_with` held is dropped by now, so tasks that end with their
    // component (the broadcaster's, the holds of stopped processes) have
    // ended or are ending.
    tracker.close();
    if tokio::time::timeout(FLUSH_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = tracker.len(), "daemon tasks still running at exit");
    } else {
        tracing::info!("daemon tasks ended");
    }
    r
}

async fn run_with(
    cfg: Config,
    shutdown: CancellationToken,
    elector: &mut Option<Elector>,
    tracker: &TaskTracker,
) -> Result<(), AppError> {
    let started = Instant::now();
    if hax_core::BACKEND != "motr" {
        // Said at every start: a package built without Motr serves only the
        // emulator's simulated peers, never a real m0d.
        tracing::warn!(
            backend = hax_core::BACKEND,
            "built without Motr: this hax is not connected to Motr (simulated m0d peers only)"
        );
    }
    let secrets = cfg.secrets()?;
    let client = consul_client(&cfg, secrets.consul_token)?;
    let http_token = secrets.http_token;
    let Some(leader) = wait_for_consul(&client, &shutdown).await else {
        return Ok(());
    };
    tracing::info!(%leader, address = %cfg.consul.address, "consul reachable");
    // Before anything waits for the RC leader: a session `hctl shutdown` left
    // holding `leader` would keep one from being elected.
    if let Err(e) = hax_ha::leader::stale::remove_stale_session(&client).await {
        tracing::warn!(error = %e, "stale RC leader session not checked");
    }
    let Some(node) = node_name(&cfg, &client, &shutdown).await else {
        return Ok(());
    };
    // The HTTP port is ours before hax's state is written or the election
    // runs: a second hax of the same identity must fail here, not after
    // Motr's start (whose stop would record hax STOPPED over the running
    // one) nor after taking over the running one's leader session.
    // The identity comes from the hax catalog service unless the settings
    // give all of it; then so does the address, and it is waited for alike.
    let ids = &cfg.identity;
    let catalog_needed =
        ids.endpoint.is_none() || ids.process_fid.is_none() || ids.ha_service_fid.is_none();
    let Some((http_addr, http_from)) = crate::listen::address(
        cfg.http.bind.as_ref(),
        &client,
        &node,
        catalog_needed,
        Duration::from_secs(2),
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let tls = crate::listen::tls(&HaxKv::new(client.clone())).await?;
    if http_token.is_none() && !http_addr.ip().is_loopback() {
        tracing::warn!(%http_addr, "the HTTP API is reachable from the network and no http.token_file is set: anyone who reaches it can change state");
    }
    let server_cfg = ServerConfig {
        bind: http_addr,
        bearer_token: http_token.clone(),
        tls,
        ..ServerConfig::default()
    };
    let serve_cfg = server_cfg.clone();
    let listener = server::bind(&server_cfg)
        .await
        .map_err(|source| AppError::Http {
            addr: http_addr,
            from: http_from,
            source,
        })?;
    tracing::info!(addr = %http_addr, from = http_from, https = server_cfg.tls.is_some(), "http listening");
    *elector = start_election(&cfg, &client, &node, tracker);
    // The daemon's tasks outlive the signal: they keep recording what Motr
    // sends while the links are disconnected. They end when `run` returns.
    let tasks = CancellationToken::new();
    let _tasks_guard = tasks.clone().drop_guard();
    let metrics = Arc::new(Metrics::default());

    // The view follows Consul for the entrypoint configuration too: it is
    // started with hax's process, before the principal RM it provides.
    let overrides = cfg.identity.overrides();
    let process =
        match identity::resolve_process(&client, &overrides, Duration::from_secs(2), &shutdown)
            .await
        {
            Ok(p) => p,
            Err(identity::IdentityError::Cancelled) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    let view = ClusterView::spawn(
        client.clone(),
        ViewConfig::new(process.node.clone(), process.process_fid),
        &tasks,
        tracker,
    );
    let mut entrypoint = view.entrypoint();
    let id =
        match identity::with_principal_rm(process, &overrides, &mut entrypoint, &shutdown).await {
            Ok(id) => id,
            Err(identity::IdentityError::Cancelled) => return Ok(()),
            Err(e) => return Err(e.into()),
        };

    // NVEC GETs are answered from the view: load it before Motr can ask.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = view.wait_loaded(VIEW_WAIT) => if let Err(e) = r {
            tracing::warn!(error = %e, "cluster view not fully loaded; starting anyway");
        },
    }

    // Motr events go through a bounded queue to the pipeline.
    let (events_tx, events_rx) = mpsc::channel(cfg.limits.event_queue);
    let queue_probe = events_tx.downgrade();
    let links = hax_ha::motr::fencing::LinkWatch::new();
    let confds_down = hax_ha::motr::rconfc::ConfdsDown::default();
    let (confds_tx, confds_rx) = hax_ha::motr::rconfc::ConfdEvents::new(confds_down.clone());
    let bridge = Bridge::new(
        events_tx,
        entrypoint.clone(),
        Arc::new(view.clone()),
        id.process_fid,
        Arc::clone(&metrics),
        tokio::runtime::Handle::current(),
        tracker,
    )
    .with_link_watch(links.clone())
    .with_confds_down(confds_down);
    let keepalives = cfg
        .motr
        .keepalive_interval()
        .map(|interval| (interval, KeepaliveInbox::new(Arc::clone(&metrics))));
    let keepalive_fence_after = cfg.motr.keepalive_fence_after();
    let silent_at_stop = keepalives.as_ref().map(|(_, inbox)| inbox.clone());
    let bridge = match &keepalives {
        Some((_, inbox)) => bridge.with_keepalives(inbox.clone()),
        None => bridge,
    };
    let halon_cfg = HalonConfig {
        endpoint: id.endpoint.clone(),
        process_fid: id.process_fid,
        ha_service_fid: id.ha_service_fid,
        rm_service_fid: id.rm_service_fid,
        debug_options: cfg.motr.debug_options.clone(),
        receive_buffers: cfg.motr.receive_buffers,
        node_uuid: None,
    };
    let mut halon = tokio::task::spawn_blocking(move || Halon::start(halon_cfg, bridge))
        .await
        .map_err(|e| AppError::Config(format!("halon start task: {e}")))?
        .map_err(|source| AppError::MotrStart {
            endpoint: id.endpoint.clone(),
            source,
        })?;
    let ha = halon.handle();

    let writer = KvWriter::spawn(
        client.clone(),
        WriterConfig {
            max_pending: cfg.limits.pending_writes,
            ..WriterConfig::default()
        },
    );
    let kv = HaxKv::new(client.clone());
    // As the original hax does at its start.
    match hax_ha::http::events::subscribe_at_start(&kv).await {
        Ok(list) => tracing::debug!(?list, "subscribed to node health messages"),
        Err(e) => tracing::warn!(error = %e, "events/subscription/node not written"),
    }
    let broadcaster = Arc::new(
        Broadcaster::new(view.clone(), ha.clone(), kv.clone(), tracker)
            .with_metrics(Arc::clone(&metrics)),
    );
    let cluster = Arc::new(view.clone());
    let incarnations = Incarnations::new();
    let pipeline = EventPipeline::new(
        writer.clone(),
        kv.clone(),
        Arc::clone(&broadcaster),
        Arc::clone(&cluster),
        EventsConfig::default(),
        tracker,
    )
    .with_link_watch(links)
    .with_incarnations(incarnations.clone())
    .with_confd_events(confds_tx);
    let pipeline_task = pipeline.spawn(events_rx, tasks.clone());

    // Keepalive probes of the linked processes, recorded in Consul.
    let keepalive_stop = tasks.child_token();
    let keepalive_task = keepalives.map(|(interval, inbox)| {
        let cfg = KeepaliveConfig {
            interval,
            node: id.node.clone(),
            fence_after: keepalive_fence_after,
        };
        let parts = KeepaliveParts {
            ha: ha.clone(),
            inbox,
            writer: writer.clone(),
            fencer: Arc::clone(&broadcaster),
            incarnations: incarnations.clone(),
        };
        keepalive::spawn(cfg, parts, keepalive_stop.clone(), tracker)
    });

    // Free heap pages go back to the system after bursts.
    let heap_metrics = Arc::new(hax_ha::metrics::HeapMetrics::default());
    let heap_stop = tasks.child_token();
    let heap_task = crate::heap::spawn(Arc::clone(&heap_metrics), heap_stop.clone(), tracker);

    // The broadcast queue consumer of this node.
    let (sns_tx, sns_rx) = mpsc::channel(64);
    let bq_inbox = bq::BqInbox::new();
    let bq_floor = bq_inbox.committed();
    let consumer = bq::consumer(client.clone(), &id.node)
        .map_err(|e| AppError::Config(format!("broadcast queue: {e}")))?;
    let processor = Arc::new(BqProcessor::new(
        Arc::clone(&broadcaster),
        Arc::clone(&cluster),
        sns_tx,
        BqConfig::default(),
    ));
    let processor_metrics = processor.metrics();
    let bq_stop = tasks.child_token();
    let bq_task = bq::spawn(
        consumer,
        processor,
        Arc::clone(&bq_inbox),
        bq_stop.clone(),
        tracker,
    );
    let bq_trim_task = cfg.bq_trim_interval().map(|interval| {
        hax_ha::inbound::bq_trim::spawn(
            client.clone(),
            view.clone(),
            hax_ha::inbound::bq_trim::TrimConfig {
                interval,
                retain: cfg.limits.bq_retain,
                stalled_after: Duration::from_millis(cfg.limits.bq_stalled_after_ms),
            },
            Arc::clone(&metrics),
            bq_stop.clone(),
            tracker,
        )
    });
    tracker.spawn(hax_ha::http::sns::serve_queue(ha.client(), sns_rx));

    // Watch updates: service health becomes broadcasts, BQ posts wake the
    // consumer.
    let (updates_tx, updates_rx) = mpsc::channel::<WatchUpdate>(1024);
    let handlers = WatchHandlers {
        bq: Arc::clone(&bq_inbox),
        view: view.clone(),
        writer: writer.clone(),
        broadcaster: Arc::clone(&broadcaster),
        metrics: Arc::clone(&metrics),
    };
    tracker.spawn(handlers.run(updates_rx));

    // Motr's client: rconfc starts in the background, then the RC leader's
    // statistics run.
    let motr = ha.client();
    let stats_metrics = Arc::new(hax_ha::leader::stats::StatsMetrics::default());
    let ops_stop = tasks.child_token();
    let rconfc = hax_ha::motr::rconfc::RconfcStarter::spawn(
        motr.clone(),
        kv.clone(),
        view.clone(),
        Arc::clone(&stats_metrics),
        confds_rx,
        ops_stop.clone(),
        tracker,
    );
    let stats = hax_ha::leader::stats::StatsUpdaters::spawn(
        hax_ha::leader::stats::StatsConfig {
            filesystem: cfg.stats.filesystem_interval(),
            bytecount: cfg.stats.bytecount_interval(),
        },
        motr.clone(),
        kv.clone(),
        view.clone(),
        rconfc.ready(),
        Arc::clone(&stats_metrics),
        ops_stop,
        tracker,
    );
    let api = hax_ha::http::ApiState::new(kv.clone(), view.clone(), motr, http_token.clone())
        .with_links(ha.clone());

    let app_state = AppState::new(updates_tx.clone(), server_cfg).with_bq_floor(bq_floor);
    // The one registry `/metrics` encodes: each part registers the
    // collector of its own counters.
    let mut registry = Registry::default();
    hax_ha::metrics::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
    metrics.register(
        &mut registry,
        &pipeline.metrics(),
        Arc::new(move || {
            queue_probe
                .upgrade()
                .map_or(0, |tx| tx.max_capacity() - tx.capacity())
        }),
    );
    hax_ha::metrics::register_writer(&mut registry, writer.metrics());
    processor_metrics.register(&mut registry, bq_inbox.newest());
    http_metrics::register_api(&mut registry, api.metrics());
    http_metrics::register_stats(&mut registry, Arc::clone(&stats_metrics));
    http_metrics::register_rc_leader(&mut registry, view.clone());
    http_metrics::register_held(&mut registry, pipeline.held_metrics());
    hax_ha::metrics::register_heap(&mut registry, heap_metrics);
    let router = hax_ha::http::daemon_router(app_state, api, Arc::new(registry));
    let http_cancel = tasks.child_token();
    let http_task = tracker.spawn({
        let cancel = http_cancel.clone();
        async move { server::serve_with(listener, router, cancel, &serve_cfg).await }
    });
    let resync = server::spawn_resync(
        client.clone(),
        // Every service hare's watches follow: a delivery lost (or a watch
        // that cannot reach hax) must not hide a failed process for good.
        std::iter::once(ResyncTarget::BroadcastQueue)
            .chain(
                ["hax", "confd", "ios", "s3service"].map(|name| ResyncTarget::Service {
                    label: "service".into(),
                    name: name.into(),
                }),
            )
            .collect(),
        updates_tx,
        Duration::from_secs(cfg.limits.resync_secs.max(1)),
        bq_stop.clone(),
    );

    if let Err(e) = crate::notify::notify("READY=1") {
        tracing::warn!(error = %e, "systemd notification failed");
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        endpoint = %id.endpoint,
        http = %http_addr,
        backend = hax_core::BACKEND,
        "hax ready"
    );

    // Until the signal: the health loop, which keeps systemd's watchdog fed
    // while the tasks hax cannot work without run.
    let watchdog = crate::watchdog::Watchdog::from_env();
    {
        use crate::watchdog::Vital;
        let mut vitals = vec![
            Vital::task("http server", &http_task),
            Vital::task("event pipeline", &pipeline_task),
            Vital::task("broadcast-queue consumer", &bq_task),
            Vital::task("watch resync", &resync),
        ];
        if let Some(t) = &keepalive_task {
            vitals.push(Vital::task("keepalive probes", t));
        }
        crate::watchdog::health_loop(watchdog.as_ref(), &vitals, &shutdown).await;
    }
    tracing::info!("stopping");
    // Broadcasts wait out Consul outages; at shutdown only as long as the
    // writes do, so that the messages waiting on them are answered and
    // Motr can stop.
    // Aborted on any return: it holds the broadcaster, whose task ends
    // only once the last holder has gone.
    let give_up = {
        let broadcaster = Arc::clone(&broadcaster);
        AbortOnDropHandle::new(tracker.spawn(async move {
            tokio::time::sleep(FLUSH_GRACE).await;
            broadcaster.stop_retrying();
        }))
    };
    let _ = crate::notify::notify("STOPPING=1");
    http_cancel.cancel();
    let _ = http_task.await;
    keepalive_stop.cancel();
    if let Some(t) = keepalive_task {
        let _ = t.await;
    }
    heap_stop.cancel();
    let _ = heap_task.await;
    stats.stop().await;
    rconfc.stop().await;
    halon.callbacks().set_stopping();
    bq_stop.cancel();
    let _ = bq_task.await;
    if let Some(t) = bq_trim_task {
        let _ = t.await;
    }
    let _ = resync.await;
    // The leader's work has stopped: another node may take over now, while
    // Motr's links disconnect.
    if let Some(e) = elector.take() {
        e.stop().await;
    }
    // Motr's stop would end the links of gone processes one after another,
    // each taking seconds: told first, they end together.
    if let Some(inbox) = &silent_at_stop {
        keepalive::fence_silent_at_stop(
            inbox,
            broadcaster.as_ref(),
            &incarnations,
            SILENT_FENCE_WAIT,
        )
        .await;
    }
    // Motr stops while the pipeline and the writer still run: what the
    // processes send until their links are gone is recorded before it is
    // delivered. If Consul cannot take it in time, the writes are abandoned,
    // which delivers the messages and lets Motr finish.
    let mut stop = tokio::task::spawn_blocking(move || halon.stop());
    let stop = tokio::select! {
        r = &mut stop => r,
        _ = tokio::time::sleep(FLUSH_GRACE) => {
            // It may be waiting for messages whose writes have not landed
            // (Consul gone), or for links to gone peers.
            let report = writer.shutdown(tokio::time::Instant::now()).await;
            if report.abandoned > 0 {
                tracing::warn!(?report, "consul writes did not finish in time; abandoned to let Motr stop");
            } else {
                tracing::info!("Motr's stop is taking long; no Consul write is pending");
            }
            stop.await
        }
    }
    .map_err(|e| AppError::Config(format!("halon stop task: {e}")))?;
    match stop {
        // Entrypoint requests withheld (answered, they would have fenced
        // live processes): Motr's stop ends with the process.
        Ok(r) if r.cut_short => {
            tracing::warn!(violations = r.violations, cut_short = true, "halon stopped")
        }
        Ok(r) => tracing::info!(violations = r.violations, "halon stopped"),
        Err(e) => tracing::error!(error = %e, "halon stopped with an error"),
    }
    // Nothing reaches the pipeline any more: let it finish, then flush.
    tasks.cancel();
    let _ = pipeline_task.await;
    let report = writer
        .shutdown(tokio::time::Instant::now() + FLUSH_GRACE)
        .await;
    tracing::info!(?report, "consul writes finished");
    give_up.abort();
    // Nothing is waited on any more: a broadcast still retrying through a
    // Consul outage fails instead of keeping the daemon's tasks running.
    broadcaster.stop_retrying();
    Ok(())
}
