//! `hax status` and `hax sns`, the `hax` binary run as a command against a
//! running daemon (and, for `status --consul`, against Consul alone): the
//! text and JSON name the real nodes, processes, fids, states, the RC
//! leader, the broadcast queue's offsets and the links the daemon holds;
//! the SNS commands drive the emulator's copy machine through the daemon
//! with its bearer token; and what fails says what and where, with exit
//! status 1 (daemon, Consul, unknown pool) or 2 (usage, configuration).

use std::path::{Path, PathBuf};
use std::process::Output;

use hax_consul::schema::keys;
use hax_core::{Fid, PverState};
use hax_e2e::{
    free_port, ft, hax_binary, ios_fid, json, pool_fid, pver_fid, stats_options, Env, T,
};
use hax_sim::{PoolDef, PverDef, SimControl};
use serde_json::Value;

const POOL_NAME: &str = "tier1-nvme";
const TOKEN: &str = "status-cli-token";

/// `hax <args>` with no `HAX_*` variable of the test's environment: its
/// exit status, stdout and stderr.
async fn hax(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(hax_binary());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HAX_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&args).output().expect("hax ran")
    })
    .await
    .expect("joined");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `hax <args>`, which must succeed; its stdout.
async fn hax_ok(args: &[&str]) -> String {
    let (code, out, err) = hax(args).await;
    assert_eq!(code, 0, "hax {args:?}: stdout {out}\nstderr {err}");
    assert!(err.is_empty(), "hax {args:?} wrote to stderr: {err}");
    out
}

/// A configuration file the commands read: the daemon's address, its
/// token file (when given) and the agent's address.
fn config_file(dir: &Path, name: &str, env: &Env, token_file: Option<&Path>) -> PathBuf {
    let mut text = format!(
        "[consul]\naddress = \"{}\"\n[http]\nbind = \"{}\"\n",
        env.agent.http_addr(),
        env.http
    );
    if let Some(f) = token_file {
        text.push_str(&format!("token_file = \"{}\"\n", f.display()));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config file");
    path
}

async fn define_pool(ctl: &SimControl) {
    ctl.define_pool(PoolDef {
        fid: pool_fid(),
        ioservices: (0..3).map(ios_fid).collect(),
        pvers: vec![PverDef {
            fid: pver_fid(0),
            state: PverState::Healthy,
            data_units: 4,
            parity_units: 2,
            pool_width: 8,
            unit_size: 1 << 20,
        }],
    })
    .await
    .expect("pool defined");
}

fn svc(status: &Value, fid: Fid) -> &Value {
    status["nodes"][0]["svcs"]
        .as_array()
        .expect("svcs")
        .iter()
        .find(|s| s["fid"] == fid.to_string())
        .unwrap_or_else(|| panic!("{fid} missing from {status}"))
}

/// What the status of the daemon and the one of Consul share.
fn assert_cluster(env: &Env, v: &Value, epoch: u64) {
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["name"], env.sample.node.as_str());
    let hax = svc(v, env.sample.hax);
    assert_eq!(hax["name"], "hax");
    assert_eq!(hax["ep"], env.hax_endpoint.as_str());
    for i in 0..3 {
        let s = svc(v, ios_fid(i));
        assert_eq!(s["name"], "ioservice", "{v}");
        assert_eq!(s["ep"], env.sample.ioservices[i].1.as_str());
        assert_eq!(s["status"], "started", "ioservice {i}: {v}");
        assert_eq!(s["state"], "M0_CONF_HA_PROCESS_DTM_RECOVERED", "{v}");
    }
    let confd = svc(v, env.sample.confd.0);
    assert_eq!(
        (&confd["status"], &confd["state"]),
        (&serde_json::json!("unknown"), &Value::Null)
    );
    assert_eq!(v["leader"], env.sample.node.as_str());
    assert_eq!(v["pools"][0]["name"], POOL_NAME);
    assert_eq!(v["bq"]["epoch"], epoch);
    assert_eq!(
        v["bq"]["nodes"],
        serde_json::json!([{"node": env.sample.node, "offset": epoch, "lag": 0}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_sns_against_a_running_daemon() {
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("http-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let mut opts = stats_options(0, 0);
    // The agent's watches carry no token, so their posts are refused: the
    // broadcast queue is read by the resync, every second.
    opts.hax_args.extend([
        "--http-token-file".into(),
        token_file.display().to_string(),
        "--limits-resync-secs".into(),
        "1".into(),
    ]);
    let mut env = Env::start(opts).await;
    let ctl = env.control().await;
    define_pool(&ctl).await;
    ctl.set_sns_rate(0).await.expect("rate");
    env.client
        .kv_put(&keys::conf_pool(ft(pool_fid())), POOL_NAME)
        .await
        .expect("pool name");
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;
    let epoch = env.wait_bq_consumed().await;
    assert!(epoch > 0, "the ioservices' states went through the BQ");
    let cfg = config_file(dir.path(), "hax.toml", &env, Some(&token_file));
    let cfg = cfg.to_str().expect("path");

    // The daemon's answer, as JSON.
    let v = json(&hax_ok(&["status", "--json", "--config", cfg]).await);
    assert_cluster(&env, &v, epoch);
    let links = &v["links"];
    assert_eq!(links["node"], env.sample.node.as_str());
    assert_eq!(links["hax"], env.sample.hax.to_string());
    let held = links["links"].as_array().expect("links");
    let own: Vec<&Value> = held.iter().filter(|l| l["is_self"] == true).collect();
    assert_eq!(own.len(), 1, "hax's own link: {links}");
    assert_eq!(own[0]["process"], env.sample.hax.to_string());
    for i in 0..3 {
        let l = held
            .iter()
            .find(|l| l["process"] == ios_fid(i).to_string())
            .unwrap_or_else(|| panic!("no link of ioservice {i}: {links}"));
        assert_eq!(l["endpoint"], env.sample.ioservices[i].1.as_str());
        assert_eq!(
            (&l["name"], &l["active"]),
            (&serde_json::json!("ioservice"), &Value::Bool(true))
        );
        assert_eq!(l["node"], env.sample.node.as_str());
    }
    assert_eq!(held.len(), 4, "{links}");

    // The same as text, laid out like hctl status.
    let text = hax_ok(&["status", "--config", cfg]).await;
    assert!(
        text.starts_with(&format!(
            "Data pool:\n    # fid name\n    {} '{POOL_NAME}'\nProfile:\n",
            pool_fid()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("Services:\n    {}  (RC)\n", env.sample.node)),
        "{text}"
    );
    for i in 0..3 {
        let line = format!(
            "    [started]  ioservice  {:<23}  {}  DTM_RECOVERED\n",
            ios_fid(i).to_string(),
            env.sample.ioservices[i].1
        );
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    assert!(
        text.contains(&format!("Broadcast queue: last entry {epoch}\n")),
        "{text}"
    );
    let bq_line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&env.sample.node) && l.split_whitespace().count() == 3)
        .unwrap_or_else(|| panic!("no BQ line of the node in:\n{text}"));
    assert_eq!(
        bq_line.split_whitespace().collect::<Vec<_>>(),
        [env.sample.node.as_str(), &epoch.to_string(), "0"]
    );
    assert!(
        text.contains(&format!(
            "HA links of hax {} on {}:\n",
            env.sample.hax, env.sample.node
        )),
        "{text}"
    );
    for i in 0..3 {
        let line = format!(
            "    {:<23}  ioservice  {}\n",
            ios_fid(i).to_string(),
            env.sample.ioservices[i].1
        );
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }

    // From Consul alone: the same cluster, no links.
    let c = json(&hax_ok(&["status", "--consul", "--json", "--config", cfg]).await);
    assert_cluster(&env, &c, epoch);
    assert_eq!(c["links"], Value::Null);
    let text = hax_ok(&["status", "--consul", "--config", cfg]).await;
    assert!(
        text.contains(&format!("Services:\n    {}  (RC)\n", env.sample.node)),
        "{text}"
    );
    assert!(
        text.ends_with(
            "HA links: not shown (read from Consul; only the running daemon knows them)\n"
        ),
        "{text}"
    );

    // SNS, the pool by name and by fid; the token goes with the start.
    let out = hax_ok(&["sns", "repair", "start", POOL_NAME, "--config", cfg]).await;
    assert!(
        out.starts_with("repair start: done by Motr for pool"),
        "{out}"
    );
    let st = json(
        &hax_ok(&[
            "sns", "repair", "status", POOL_NAME, "--json", "--config", cfg,
        ])
        .await,
    );
    let entries = st.as_array().expect("a list");
    assert_eq!(entries.len(), 3, "{st}");
    assert!(
        entries.iter().all(|e| e["state"] == 2),
        "started on each: {st}"
    );
    let text = hax_ok(&[
        "sns",
        "repair",
        "status",
        &pool_fid().to_string(),
        "--config",
        cfg,
    ])
    .await;
    assert!(
        text.starts_with(&format!("SNS repair of pool {}:\n", pool_fid())),
        "{text}"
    );
    for i in 0..3 {
        let line = format!("    {:<23}  started   0\n", ios_fid(i).to_string());
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }
    let text = hax_ok(&["sns", "rebalance", "status", POOL_NAME, "--config", cfg]).await;
    assert!(
        text.contains("  idle      0\n"),
        "rebalance has its own machine:\n{text}"
    );
    hax_ok(&["sns", "repair", "pause", POOL_NAME, "--config", cfg]).await;
    let st = json(
        &hax_ok(&[
            "sns", "repair", "status", POOL_NAME, "--json", "--config", cfg,
        ])
        .await,
    );
    assert!(
        st.as_array()
            .expect("a list")
            .iter()
            .all(|e| e["state"] == 4),
        "paused: {st}"
    );

    // Without the token the daemon refuses a change.
    let no_token = config_file(dir.path(), "no-token.toml", &env, None);
    let (code, out, err) = hax(&[
        "sns",
        "repair",
        "resume",
        POOL_NAME,
        "--config",
        no_token.to_str().expect("path"),
    ])
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "the hax daemon at http://{} answered 401",
            env.http
        )),
        "{err}"
    );
    // Unknown pools, by name and by fid.
    let (code, _, err) = hax(&["sns", "repair", "start", "tier9", "--config", cfg]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "no pool named \"tier9\" in m0conf/pools/ (pools: {} '{POOL_NAME}')",
            pool_fid()
        )),
        "{err}"
    );
    let stranger = Fid::typed(hax_core::FidType::Pool, 1, 77).to_string();
    let (code, _, err) = hax(&["sns", "repair", "status", &stranger, "--config", cfg]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("answered 404: Unknown pool"), "{err}");
    // Not a pool fid, an unreadable token file: usage and configuration.
    let (code, _, err) = hax(&[
        "sns",
        "repair",
        "start",
        &ios_fid(0).to_string(),
        "--config",
        cfg,
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a pool fid"), "{err}");
    std::fs::remove_file(&token_file).expect("token file removed");
    let (code, _, err) = hax(&["sns", "repair", "resume", POOL_NAME, "--config", cfg]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.token_file") && err.contains("cannot read"),
        "{err}"
    );
    let st = json(
        &hax_ok(&[
            "sns", "repair", "status", POOL_NAME, "--json", "--config", cfg,
        ])
        .await,
    );
    assert!(
        st.as_array()
            .expect("a list")
            .iter()
            .all(|e| e["state"] == 4),
        "nothing refused changed the machine: {st}"
    );

    // The daemon stopped: the command says where it looked; Consul still
    // answers --consul.
    env.sigterm();
    let status = env.wait_exit(T).await;
    assert!(status.success(), "hax stopped: {status}");
    let (code, out, err) = hax(&["status", "--config", cfg]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with(&format!(
            "hax: cannot reach the hax daemon at http://{} (http.bind): ",
            env.http
        )) && err.contains("`hax status --consul` reads Consul directly"),
        "{err}"
    );
    let (code, _, err) = hax(&["sns", "repair", "status", POOL_NAME, "--config", cfg]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot reach the hax daemon"), "{err}");
    let c = json(&hax_ok(&["status", "--consul", "--json", "--config", cfg]).await);
    assert_eq!(c["nodes"][0]["name"], env.sample.node.as_str());
    assert_eq!(
        svc(&c, env.sample.hax)["state"],
        "M0_CONF_HA_PROCESS_STOPPED",
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_talk_to() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let daemon = format!("127.0.0.1:{port}");
    let (code, out, err) = hax(&["status", "--daemon", &daemon, "--config", "/dev/null"]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the hax daemon at http://{daemon} (--daemon): "
        )),
        "{err}"
    );
    // Consul not there either.
    let cfg = dir.path().join("hax.toml");
    std::fs::write(&cfg, format!("[consul]\naddress = \"127.0.0.1:{port}\"\n")).expect("config");
    let (code, _, err) = hax(&[
        "status",
        "--consul",
        "--timeout",
        "5",
        "--config",
        cfg.to_str().expect("path"),
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "hax: cannot read Consul at 127.0.0.1:{port} (consul.address): "
        )),
        "{err}"
    );
    // Configuration and usage errors: 2.
    let (code, _, err) = hax(&["status", "--config", "/nonexistent/hax.toml"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/hax.toml"), "{err}");
    let (code, _, err) = hax(&["status", "--daemon", "ftp://x:1", "--config", "/dev/null"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = hax(&["sns", "repair", "begin", "tier1", "--config", "/dev/null"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("possible values: start, stop, pause, resume, status"),
        "{err}"
    );
}
