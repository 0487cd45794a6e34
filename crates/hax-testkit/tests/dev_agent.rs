//! The test agent itself: several at once, each stopped on drop.

use std::collections::HashSet;

use hax_testkit::dev_agent::DevAgent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_agents_run_at_once_and_stop_on_drop() {
    let starts = (0..3).map(|_| tokio::spawn(DevAgent::start()));
    let mut agents = Vec::new();
    for s in starts {
        agents.push(s.await.expect("join").expect("agent"));
    }
    let ports: HashSet<u16> = agents
        .iter()
        .flat_map(|a| {
            let p = a.ports();
            [p.http, p.serf_lan, p.serf_wan, p.server, p.grpc]
        })
        .collect();
    assert_eq!(ports.len(), 15, "all ports distinct");
    // Each is its own cluster: a key written to one is absent from the others.
    agents[0]
        .client()
        .expect("client")
        .kv_put("only-here", "1")
        .await
        .expect("put");
    for a in &agents[1..] {
        let got = a
            .client()
            .expect("client")
            .kv_get("only-here")
            .await
            .expect("get");
        assert!(got.value.is_none());
    }
    let pids: Vec<u32> = agents.iter().filter_map(DevAgent::pid).collect();
    let dirs: Vec<_> = agents.iter().map(|a| a.dir().to_path_buf()).collect();
    drop(agents);
    for (pid, dir) in pids.iter().zip(&dirs) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "agent {pid} still running"
        );
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}
