//! The `hax` daemon on real Motr (feature `motr`) with a real Consul and real
//! `m0d`s, one of which dies again and again: the confd m0d runs throughout,
//! the ioservice m0d is started, reaches STARTED and is killed (`SIGKILL`,
//! no STOPPED, its link left behind), then started again on the same
//! storage. Each new incarnation's first entrypoint request makes hax end
//! the links of the dead ones, so after every start hax holds its own link,
//! the confd's and the new ioservice's; its threads and memory stay flat,
//! and the first request's reply takes about the same time each round.
//! The last incarnation killed is not started again: it stops answering
//! keepalives, and that alone ends its link.
//!
//! Ignored unless built with `--features motr`; built with it, fails unless
//! `MOTR_PREFIX` names an installed Motr with `m0d` and `m0mkfs`.
//! `HAX_M0D_CYCLES` sets the number of kill/start cycles (default 3, as in
//! CI; docs/motr.md has the figures for 50, from `scripts/motr-figures.sh`):
//!
//! ```text
//! HAX_M0D_CYCLES=50 MOTR_PREFIX=/opt/motr cargo test --release -p hax-bin --features motr \
//!     --test motr_m0d_restarts -- --nocapture
//! ```

use std::time::{Duration, Instant};

use hax_consul::schema::{FidText, HaxKv};
use hax_core::Fid;
use motr_support::tools;

#[path = "../../hax-core/tests/motr_support/mod.rs"]
mod motr_support;

mod daemon_support;
use daemon_support::{
    bed, http_get, json_lines, metric, spawn_hax, tail, usage, wait_for, Bed, Proc,
};

mod motr_cluster;
use motr_cluster::{conf_xc, format_both, m0_args, m0_command, started};

/// The `elapsed_us` of every "first entrypoint request answered" of `fid`
/// in hax's log, in order.
fn first_replies(log: &std::path::Path, fid: Fid) -> Vec<u64> {
    json_lines(log)
        .iter()
        .filter(|l| {
            l["message"] == "first entrypoint request answered" && l["process"] == fid.to_string()
        })
        .filter_map(|l| l["elapsed_us"].as_u64())
        .collect()
}

/// Lines of Motr's in hax's log that report an RPC timed out (`rc=-110`).
fn timeouts(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("-110"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
async fn killed_m0ds_leave_no_links_behind() {
    let cycles: usize = std::env::var("HAX_M0D_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tools = tools();
    let t0 = Instant::now();
    let Bed {
        root,
        http,
        hax_ep,
        agent,
        client,
        sample: s,
        ..
    } = bed("hax-motr-m0d-restarts").await;
    let kv = HaxKv::new(client.clone());
    let (confd, ios) = (s.confd.clone(), s.ioservices[0].clone());
    let conf = root.join("conf.xc");
    std::fs::write(&conf, conf_xc(&s, &hax_ep)).expect("conf.xc");

    let (confd_dir, ios_dir) = format_both(&tools, &root, &s, &conf);

    let hax_log = root.join("hax.log");
    let mut hax = spawn_hax(
        &root,
        agent.http_addr(),
        http,
        &[
            "--motr-keepalive-interval-ms",
            "500",
            // 8 s of silence: past what a loaded machine holds a live m0d's
            // answer for.
            "--motr-keepalive-fence-rounds",
            "16",
        ],
    )
    .await;
    let links = || metric(&http_get(http, "/metrics").unwrap_or_default(), "hax_links");

    let confd_args = m0_args(&confd_dir, &confd.1, confd.0, Some(&conf), Some(&hax_ep));
    let _m0d_confd = Proc::start(
        "m0d (confd)",
        &mut m0_command(&tools.m0d, &confd_dir, &confd_args),
        &confd_dir.join("m0d.log"),
    );
    wait_for(
        "the confd m0d started in Consul",
        Duration::from_secs(90),
        &hax_log,
        || started(&kv, confd.0),
    )
    .await;

    let ios_args = m0_args(&ios_dir, &ios.1, ios.0, None, Some(&hax_ep));
    let mut rounds = Vec::new();
    for cycle in 0..cycles {
        let t = Instant::now();
        let mut m0d = Proc::start(
            "m0d (ios)",
            &mut m0_command(&tools.m0d, &ios_dir, &ios_args),
            &ios_dir.join(format!("m0d-{cycle}.log")),
        );
        let log = hax_log.clone();
        let reply_us = wait_for(
            &format!("cycle {cycle}: the ioservice's first entrypoint request answered"),
            Duration::from_secs(90),
            &hax_log,
            || {
                let log = log.clone();
                async move { first_replies(&log, ios.0).get(cycle).copied() }
            },
        )
        .await;
        wait_for(
            &format!("cycle {cycle}: the ioservice m0d started in Consul"),
            Duration::from_secs(90),
            &hax_log,
            || started(&kv, ios.0),
        )
        .await;
        // hax's own link, the confd's and this incarnation's: every earlier
        // incarnation's link has ended.
        let t_links = Instant::now();
        wait_for(
            &format!("cycle {cycle}: the killed incarnations' links ended"),
            Duration::from_secs(60),
            &hax_log,
            || async { (links() == 3).then_some(()) },
        )
        .await;
        let (rss_kib, threads) = usage(hax.pid());
        let round = Round {
            reply_us,
            start: t.elapsed(),
            links_settled: t_links.elapsed(),
            rss_kib,
            threads,
            timeouts: timeouts(&hax_log),
        };
        eprintln!("cycle {cycle}: {round:?}");
        rounds.push(round);
        if cycle + 1 == cycles {
            // Probed and answering before it dies.
            wait_for(
                "the last ioservice answering keepalives",
                Duration::from_secs(30),
                &hax_log,
                || keepalive(&kv, &s.node, ios.0),
            )
            .await;
        }
        m0d.signal("KILL");
        // Reaped here, or killed once more at the bound: gone either way.
        let _ = m0d.wait(Duration::from_secs(10));
    }

    // The last one stays dead: no STOPPED, no new incarnation. Sixteen
    // missed rounds of 500 ms fence it, and Motr ends its link once its RPCs
    // to the dead endpoint time out.
    let t_dead = Instant::now();
    wait_for(
        "the dead ioservice's link ended by its silence",
        Duration::from_secs(90),
        &hax_log,
        || async { (links() == 2).then_some(()) },
    )
    .await;
    let fenced_after = t_dead.elapsed();
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    assert_eq!(metric(&metrics, "hax_keepalive_fenced_total"), 1);
    wait_for(
        "the dead ioservice's keepalive key to go",
        Duration::from_secs(30),
        &hax_log,
        || async {
            let key = kv
                .keepalive_status(&s.node, FidText::new(ios.0.container, ios.0.key))
                .await;
            matches!(key, Ok(None)).then_some(())
        },
    )
    .await;
    // The confd, alive, is never fenced.
    wait_for(
        "the confd answering keepalives",
        Duration::from_secs(30),
        &hax_log,
        || keepalive(&kv, &s.node, confd.0),
    )
    .await;
    eprintln!("the dead ioservice's link ended {fenced_after:?} after its kill");

    let mut replies: Vec<u64> = rounds.iter().map(|r| r.reply_us).collect();
    replies.sort_unstable();
    let median = replies[replies.len() / 2];
    let p99 = replies[((replies.len() as f64 - 1.0) * 0.99).round() as usize];
    let (first, last) = (&rounds[0], &rounds[rounds.len() - 1]);
    eprintln!(
        "{cycles} cycles in {:?}: first-request reply median {median} us, p99 {p99} us; \
         RSS {} -> {} KiB; threads {} -> {}; rc=-110 lines {} -> {}",
        t0.elapsed(),
        first.rss_kib,
        last.rss_kib,
        first.threads,
        last.threads,
        first.timeouts,
        last.timeouts
    );
    assert!(
        last.threads <= first.threads + 1,
        "threads flat: {} -> {}",
        first.threads,
        last.threads
    );
    // Motr keeps some of every incarnation it served (the entrypoint
    // reply, libfabric's connection state: 70-250 KiB a restart with
    // heaptrack, docs/motr.md); what hax keeps of one is far less.
    let bound = first.rss_kib + 16 * 1024 + 512 * cycles as u64;
    assert!(
        last.rss_kib <= bound,
        "RSS flat: {} -> {} KiB (bound {bound})",
        first.rss_kib,
        last.rss_kib
    );

    assert_eq!(links(), 2);
    let t_stop = Instant::now();
    hax.signal("TERM");
    let rc = hax.wait(Duration::from_secs(30));
    eprintln!("hax exited {:?} after SIGTERM", t_stop.elapsed());
    assert_eq!(rc, Some(0), "hax exits 0:\n{}", tail(&hax_log, 40));
    if std::env::var_os("HAX_KEEP_TEST_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("logs kept in {}", root.display());
    }
}

/// The keepalive record of `fid` when it shows a process answering.
async fn keepalive(kv: &HaxKv, node: &str, fid: Fid) -> Option<()> {
    let key = FidText::new(fid.container, fid.key);
    let k = kv.keepalive_status(node, key).await.ok().flatten()?;
    (k.responding && k.counter > 0).then_some(())
}

/// What one kill/start cycle measured.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Round {
    /// From the first entrypoint request to its reply handed to Motr.
    reply_us: u64,
    /// From the m0d's spawn to hax holding its link alone.
    start: Duration,
    links_settled: Duration,
    rss_kib: u64,
    threads: u64,
    /// Motr's `rc=-110` lines in hax's log so far.
    timeouts: usize,
}
