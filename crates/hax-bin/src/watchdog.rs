//! The systemd watchdog (`WatchdogSec=` in dist/hax.service): once ready,
//! the daemon's health loop sends `WATCHDOG=1` every half period for as long
//! as the daemon works, so that systemd restarts a hax that hangs (its
//! runtime stalled: the loop no longer runs) or that lost one of the tasks
//! it cannot work without (ended by a panic, say: the loop runs but stops
//! sending). A hax waiting on Consul or Motr is not broken, only waiting:
//! that is for alerts (dist/prometheus-alerts.yml), and a restart would not
//! help.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::notify::Notifier;

/// The watchdog systemd asked for.
#[derive(Clone, Debug)]
pub struct Watchdog {
    period: Duration,
    notifier: Notifier,
}

impl Watchdog {
    /// The watchdog of this process, as `sd_watchdog_enabled` reads it:
    /// `$WATCHDOG_USEC` a positive number of µs, and `$WATCHDOG_PID`, when
    /// set, this process's pid (the variables a child inherits by mistake do
    /// not make it ping for its parent). `None` when systemd asked for none
    /// or gave no `$NOTIFY_SOCKET`; a value that is not a number is logged
    /// and ignored.
    pub fn from_env() -> Option<Self> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_values(
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
            Notifier::from_env(),
        )
    }

    /// [`Watchdog::from_env`] on given values.
    pub fn from_values(
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
        notifier: Notifier,
    ) -> Option<Self> {
        if !notifier.is_active() {
            return None;
        }
        let usec = usec?;
        let period = match usec.trim().parse::<u64>() {
            Ok(0) => return None,
            Ok(us) => Duration::from_micros(us),
            Err(e) => {
                tracing::warn!(WATCHDOG_USEC = usec, error = %e, "watchdog period not understood; no watchdog");
                return None;
            }
        };
        if let Some(pid) = pid {
            if pid.trim().parse::<u32>().ok() != Some(own_pid) {
                return None;
            }
        }
        Some(Watchdog { period, notifier })
    }

    /// The period systemd waits for `WATCHDOG=1`.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How often the health loop sends `WATCHDOG=1`: half the period, as
    /// systemd advises, so that one late round does not cost a restart.
    pub fn interval(&self) -> Duration {
        self.period / 2
    }
}

/// A task the daemon cannot work without, by name, and whether it has
/// ended.
pub struct Vital<'a> {
    /// Named in the log when it has ended.
    pub name: &'static str,
    /// Whether it has ended.
    pub ended: Box<dyn Fn() -> bool + Send + Sync + 'a>,
}

impl std::fmt::Debug for Vital<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vital").field("name", &self.name).finish()
    }
}

impl<'a> Vital<'a> {
    /// The task of `handle`.
    pub fn task<T: Send>(name: &'static str, handle: &'a tokio::task::JoinHandle<T>) -> Self {
        Vital {
            name,
            ended: Box::new(move || handle.is_finished()),
        }
    }
}

/// The health loop: until `stop`, every [`Watchdog::interval`], sends
/// `WATCHDOG=1` if every task of `vitals` still runs. Once one has ended
/// (they end only with `stop`), says so at error and sends nothing more,
/// so that systemd restarts hax. Without a watchdog, waits for `stop`.
pub async fn health_loop(
    watchdog: Option<&Watchdog>,
    vitals: &[Vital<'_>],
    stop: &CancellationToken,
) {
    let Some(wd) = watchdog else {
        stop.cancelled().await;
        return;
    };
    tracing::info!(
        period_ms = wd.period().as_millis() as u64,
        "systemd watchdog on: WATCHDOG=1 every half period while hax works"
    );
    let mut tick = tokio::time::interval(wd.interval());
    // A late round sends once, not a burst that hides the stall.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if failed {
            continue;
        }
        if let Some(v) = vitals.iter().find(|v| (v.ended)()) {
            tracing::error!(
                task = v.name,
                "a task hax cannot work without has ended: no more WATCHDOG=1, systemd will restart hax"
            );
            failed = true;
            continue;
        }
        if let Err(e) = wd.notifier.notify("WATCHDOG=1") {
            tracing::warn!(error = %e, "systemd watchdog notification failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn active() -> Notifier {
        Notifier::to("/run/systemd/notify-of-nobody")
    }

    #[test]
    fn reads_the_watchdog_as_sd_watchdog_enabled() {
        let wd = Watchdog::from_values(Some("60000000"), None, 7, active()).unwrap();
        assert_eq!(wd.period(), Duration::from_secs(60));
        assert_eq!(wd.interval(), Duration::from_secs(30));
        assert!(Watchdog::from_values(Some("1000"), Some("7"), 7, active()).is_some());
        // Another process's watchdog, none asked for, nowhere to send.
        assert!(Watchdog::from_values(Some("1000"), Some("8"), 7, active()).is_none());
        assert!(Watchdog::from_values(Some("1000"), Some("x"), 7, active()).is_none());
        assert!(Watchdog::from_values(None, None, 7, active()).is_none());
        assert!(Watchdog::from_values(Some("0"), None, 7, active()).is_none());
        assert!(Watchdog::from_values(Some("soon"), None, 7, active()).is_none());
        assert!(Watchdog::from_values(Some("1000"), None, 7, Notifier::default()).is_none());
    }

    /// A datagram socket standing for systemd's, and a watchdog of
    /// `period` sending to it.
    fn systemd(period: Duration) -> (UnixDatagram, Watchdog, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "hax-watchdog-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let usec = period.as_micros().to_string();
        let wd = Watchdog::from_values(Some(&usec), None, 1, Notifier::to(&path)).unwrap();
        (sock, wd, dir)
    }

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    async fn wait_pings(sock: &UnixDatagram, n: usize) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < n {
            for m in received(sock) {
                assert_eq!(m, "WATCHDOG=1");
                seen += 1;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{seen} pings of {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_while_every_vital_task_runs_and_stops_when_one_ends() {
        let (sock, wd, dir) = systemd(Duration::from_millis(40));
        let stop = CancellationToken::new();
        let alive = Arc::new(AtomicBool::new(true));
        let running = tokio::spawn(std::future::pending::<()>());
        let flag = Arc::clone(&alive);
        let loop_task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let vitals = [
                    Vital::task("forever", &running),
                    Vital {
                        name: "flag",
                        ended: Box::new(move || !flag.load(Ordering::SeqCst)),
                    },
                ];
                health_loop(Some(&wd), &vitals, &stop).await;
            }
        });
        wait_pings(&sock, 3).await;

        alive.store(false, Ordering::SeqCst);
        // A round already past its check may still send; none after it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = received(&sock);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            received(&sock),
            Vec::<String>::new(),
            "pinged for a dead task"
        );
        assert!(!loop_task.is_finished(), "the loop runs until stop");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), loop_task)
            .await
            .expect("the loop ends at stop")
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_a_watchdog_waits_for_stop() {
        let stop = CancellationToken::new();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), health_loop(None, &[], &stop))
            .await
            .expect("returns at stop");
    }
}
