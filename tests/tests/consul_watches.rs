//! hax long-polls each Consul source it follows once: the entrypoint
//! configuration (confd services, the principal RM, the `rms` service) is
//! derived from the cluster view, which already follows `leader` and
//! `m0conf/`, rather than from watches of its own.
//!
//! Every watcher begins with one plain read (no `index`) and then long-polls;
//! a watcher only reads plainly again after an error, and nothing fails
//! here. So the plain reads of a source from hax's start to its readiness
//! count the watchers that follow it, plus the one-shot reads of the start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hax_e2e::{wait_for, Env, Fault, Options, T};

/// The Consul requests of one source: plain reads and long-polls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Reads {
    plain: u64,
    blocking: u64,
}

type Seen = Arc<Mutex<BTreeMap<String, Reads>>>;

fn reads_of(seen: &Seen, path: &str) -> Reads {
    seen.lock()
        .expect("seen")
        .get(path)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_of_the_view_and_the_entrypoint_is_long_polled_once() {
    let mut env = Env::start(Options {
        proxy: true,
        ..Options::default()
    })
    .await;
    // Counted from a start of hax: its first run began before the proxy
    // could be told to count.
    env.sigkill();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    env.proxy
        .as_ref()
        .expect("proxy")
        .set_schedule(Some(Box::new(move |_, method, target| {
            if method == "GET" {
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let blocking = query
                    .split('&')
                    .any(|p| p.starts_with("index=") && p != "index=0");
                let mut seen = record.lock().expect("seen");
                let r = seen.entry(path.to_owned()).or_default();
                if blocking {
                    r.blocking += 1;
                } else {
                    r.plain += 1;
                }
            }
            Fault::Pass
        })));
    env.start_hax().await;

    // (path, one-shot reads at the start besides the one watcher)
    let sources = [
        ("/v1/kv/m0conf/", 0),
        // The stale-session check reads it once before anything else.
        ("/v1/kv/leader", 1),
        ("/v1/catalog/service/confd", 0),
    ];
    // Every watcher is long-polling: all of them have read once.
    for (path, _) in sources {
        wait_for(&format!("a long-poll of {path}"), T, || async {
            (reads_of(&seen, path).blocking > 0).then_some(())
        })
        .await;
    }
    let all = seen.lock().expect("seen").clone();
    for (path, one_shot) in sources {
        let plain = all.get(path).map_or(0, |r| r.plain);
        assert_eq!(
            plain,
            1 + one_shot,
            "{path}: one watcher follows it (all reads: {all:?})"
        );
    }

    // The entrypoint reply still follows the view: a peer is answered.
    let peer = env.connect_peers(1).await;
    assert_eq!(peer.len(), 1);
}
