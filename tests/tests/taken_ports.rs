//! A hax that cannot have one of its ports says which: the address, what it
//! was binding it for, the setting that gives it, and the system's reason
//! (not a bare "errno 98").

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hax_consul::schema::ProcessState;
use hax_e2e::{hax_binary, wait_for, Env, Options, T};

/// Runs hax as the harness does, against `env`'s agent; its exit code and
/// what it wrote on stderr (killed after 60 s).
fn run_hax(env: &Env, extra: &[&str]) -> (Option<i32>, String) {
    let err_path = env.work_dir().join("taken.err");
    let mut cmd = Command::new(hax_binary());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HAX_") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("HAX_MOTR_KEEPALIVE_INTERVAL_MS", "0")
        .env("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", "0")
        .args(["--consul-address", &env.agent.http_addr().to_string()])
        .args(["--http-bind", &env.http.to_string()])
        .args(["--log-format", "json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("hax started");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("hax exited with {status:?} after {:?}", started.elapsed());
    (
        status,
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// The line hax printed for its user (`hax: ...`), without the logs.
fn said(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("hax: "))
        .unwrap_or(stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_named_with_what_needed_it() {
    let mut env = Env::start(Options::default()).await;
    env.sigterm();
    assert!(env.wait_exit(T).await.success());

    // The Motr endpoint (the emulator's listener) held by another process.
    let port: u16 = env
        .hax_endpoint
        .rsplit('@')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port of the endpoint");
    let held = TcpListener::bind(("127.0.0.1", port)).expect("endpoint port free");
    let (code, stderr) = run_hax(&env, &[]);
    drop(held);
    let motr_line = said(&stderr).to_owned();
    let line = &motr_line;
    assert_eq!(code, Some(1), "{stderr}");
    for needle in [
        &env.hax_endpoint[..],
        "identity.endpoint",
        "errno 98 (Address already in use)",
    ] {
        assert!(line.contains(needle), "no {needle:?} in {line:?}");
    }

    // The HTTP address held.
    let held = TcpListener::bind(env.http).expect("http port free");
    let (code, stderr) = run_hax(&env, &[]);
    drop(held);
    let line = said(&stderr);
    assert_eq!(code, Some(1), "{stderr}");
    for needle in [
        &env.http.to_string()[..],
        "http.bind",
        "Address already in use",
    ] {
        assert!(line.contains(needle), "no {needle:?} in {line:?}");
    }
    eprintln!("{motr_line}\n{line}");
}

/// A second hax of the same identity (process fid), given an endpoint of its
/// own and the HTTP address the running one holds, fails before it starts
/// anything: nothing it would record at its stop (hax STOPPED) reaches
/// Consul over the running hax's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hax_of_the_same_identity_writes_nothing() {
    let env = Env::start(Options::default()).await;
    // Its own last state recorded, then nothing queued: Consul holds all
    // the running hax writes at its start (an idle queue alone may come
    // before its own events are queued, or while their writes land).
    let hax = env.sample.hax;
    let env_ref = &env;
    wait_for("hax's own DTM_RECOVERED recorded", T, || async move {
        (env_ref.process_status(hax).await.map(|s| s.state) == Some(ProcessState::DtmRecovered))
            .then_some(())
    })
    .await;
    env.wait_idle().await;
    let client = env.agent.client().expect("consul client");
    let keys: Vec<String> = ["processes/", "bq/", "eq/"].map(String::from).into();
    let snapshot = || async {
        let mut out = Vec::new();
        for prefix in &keys {
            let pairs = client.kv_list(prefix).await.expect("kv list").value;
            out.extend(pairs.into_iter().map(|p| (p.key, p.modify_index)));
        }
        out
    };
    let before = snapshot().await;
    assert!(
        before
            .iter()
            .any(|(k, _)| k.ends_with(&env.sample.hax.to_string())),
        "hax's own process state recorded: {before:?}"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("inet:tcp:127.0.0.1@{port}");
    let (code, stderr) = run_hax(&env, &["--endpoint", &endpoint]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(said(&stderr).contains("http.bind"), "{stderr}");
    // Motr was never started: its stop, which reports hax STOPPED, cannot
    // race the exit to Consul.
    assert!(
        !stderr.contains("halon interface started"),
        "Motr started before every port was ours: {stderr}"
    );
    assert_eq!(snapshot().await, before, "Consul changed by the second hax");
    assert!(env.healthz().await, "the running hax still answers");
}
