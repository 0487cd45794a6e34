//! hax starts on clusters exactly as hare's cfgen writes them and hare's
//! bootstrap loads them (hax-testkit's cfgen fixtures: one node, three
//! nodes with an agent each), reading its identity from Consul as it does
//! under hare, and serves its m0d peers: entrypoint replies naming every
//! confd and the principal RM, NVEC answers, process events recorded and
//! broadcast. One value hax cannot use does not keep it from starting: it is
//! logged once, with its key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hax_consul::schema::{FidText, HaxKv, ProcessState, ProcessStatus, ProcessType};
use hax_consul::ConsulClient;
use hax_core::{Fid, FidType, HaState, ProcessEventKind, ServiceType};
use hax_e2e::{free_port, hax_binary, sets_with, wait_for, READY_TIMEOUT, T};
use hax_sim::{LinkOutcome, SimCluster, SimConfig, SimProcess};
use hax_testkit::cfgen::{self, CfgenKv, CfgenNode};
use hax_testkit::dev_agent::DevAgent;

const MALFORMED: &str = "configuration entry ignored: its value is not usable";

/// The agents of a cfgen cluster (one per node, the first a server), the
/// KV loaded as hare's bootstrap loads it, and hax on the first node.
struct Cluster {
    agents: Vec<DevAgent>,
    client: ConsulClient,
    kv: CfgenKv,
    hax_endpoint: String,
    http: SocketAddr,
    hax: Option<Child>,
    log: PathBuf,
    dir: Option<tempfile::TempDir>,
    _certs: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.hax.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- last lines of hax's log:\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
            if let Some(dir) = self.dir.take() {
                eprintln!("---- logs kept in {}", dir.keep().display());
            }
        }
    }
}

/// The HTTP watches of hare's Consul configuration
/// (`consul-server-conf.json.in`), pointing at hax's port.
fn hare_watches(http: SocketAddr, protocol: &str) -> serde_json::Value {
    let handler = |path: &str| {
        serde_json::json!({
            "path": format!("{protocol}://{http}{path}"),
            "method": "POST",
            "tls_skip_verify": true,
            "timeout": "10s",
        })
    };
    let service = |name: &str| {
        serde_json::json!({"type": "service", "service": name, "handler_type": "http",
                           "http_handler_config": handler("")})
    };
    serde_json::json!({
        "limits": {"http_max_conns_per_client": 800},
        "watches": [
            {"type": "keyprefix", "prefix": "bq/", "handler_type": "http",
             "http_handler_config": handler("/watcher/bq")},
            service("hax"), service("confd"), service("ios"), service("s3service"),
        ]
    })
}

impl Cluster {
    /// Boots `kv` as hare does, then hax on the first node (identity from
    /// Consul), and waits until hax is ready.
    async fn start(kv: CfgenKv) -> Cluster {
        Cluster::start_with(kv, false).await
    }

    /// [`Cluster::start`]; with `https`, `ssl/hax` names a self-signed
    /// certificate, as hare_mp writes it, and the watches call https.
    async fn start_with(mut kv: CfgenKv, https: bool) -> Cluster {
        let certs = tempfile::tempdir().expect("certificate dir");
        if https {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
            let (cert, key) = (certs.path().join("hax.crt"), certs.path().join("hax.key"));
            std::fs::write(&cert, made.cert.pem()).expect("cert file");
            std::fs::write(&key, made.signing_key.serialize_pem()).expect("key file");
            kv.set(
                "ssl/hax",
                serde_json::json!({
                    "http_protocol": "https",
                    "cert_path": cert.display().to_string(),
                    "key_path": key.display().to_string(),
                })
                .to_string(),
            );
        }
        let names: Vec<String> = kv.nodes().into_iter().map(|n| n.name).collect();
        let first = names[0].clone();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // Every process on this host: endpoints on free local ports.
        kv.rewrite_endpoints(|_| format!("inet:tcp:127.0.0.1@{}", free_port()));
        kv.set(
            &format!("ports/{first}/hax"),
            format!(r#"{{"http": {}}}"#, http.port()),
        );
        let server = DevAgent::builder()
            .node_name(&first)
            .extra_config(hare_watches(http, if https { "https" } else { "http" }))
            .start()
            .await
            .expect("consul server agent");
        let mut agents = vec![server];
        for name in &names[1..] {
            let a = DevAgent::builder()
                .node_name(name)
                .client_of(&agents[0])
                .start()
                .await
                .expect("consul client agent");
            agents.push(a);
        }
        let client = agents[0].client().expect("client");
        cfgen::import(&client, &kv).await.expect("KV imported");
        for (name, agent) in names.iter().zip(&agents) {
            let c = agent.client().expect("client");
            cfgen::register_services(&c, &kv, name)
                .await
                .expect("services registered");
            cfgen::map_consul_node(&client, name, name)
                .await
                .expect("consul/node");
        }
        cfgen::elect(&client, &first).await.expect("leader elected");
        // Every node's confd in the catalog: the first entrypoint reply then
        // names them all.
        let n = names.len();
        wait_for("every confd in the catalog", T, || async {
            let listed = client.catalog_service("confd").await.ok()?.value;
            (listed.len() == n).then_some(())
        })
        .await;

        let dir = tempfile::Builder::new()
            .prefix("hax-e2e-cfgen.")
            .tempdir()
            .expect("work dir");
        let log = dir.path().join("hax.log");
        let hax_endpoint = kv
            .node(&first)
            .and_then(|n| n.hax().map(|p| p.endpoint.clone()))
            .expect("hax endpoint");
        let mut cluster = Cluster {
            agents,
            client,
            kv,
            hax_endpoint,
            http,
            hax: None,
            log,
            dir: Some(dir),
            _certs: certs,
        };
        cluster.start_hax(http).await;
        cluster
    }

    async fn start_hax(&mut self, http: SocketAddr) {
        let file = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = Command::new(hax_binary());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if ["HAX_", "HARE_HAX_", "CONSUL_HTTP_"]
                .iter()
                .any(|p| name.starts_with(p))
                || k == "NOTIFY_SOCKET"
            {
                cmd.env_remove(k);
            }
        }
        // Only what hare gives hax: where Consul is, in the Consul CLI's
        // variable, and the port.
        cmd.env("HAX_MOTR_KEEPALIVE_INTERVAL_MS", "0")
            .env("HAX_LIMITS_BQ_TRIM_INTERVAL_MS", "0")
            .env("CONSUL_HTTP_ADDR", self.agents[0].http_addr().to_string())
            .arg("--http-bind")
            .arg(http.to_string())
            .args(["--log-format", "json", "--log", "info"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        self.hax = Some(cmd.spawn().expect("hax started"));
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.hax.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("hax exited with {status} before it was ready");
            }
            if !self.messages("hax ready").is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hax not ready after {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// hax's log lines with message `message`.
    fn messages(&self, message: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == message)
            .collect()
    }

    fn first_node(&self) -> CfgenNode {
        self.kv.nodes().remove(0)
    }

    /// Peers playing every m0d and client of the first node.
    async fn connect_peers(&self) -> Vec<SimProcess> {
        let node = self.first_node();
        let cfgs = node
            .processes
            .iter()
            .filter(|p| !p.has("ha"))
            .map(|p| {
                let mut c = SimConfig::new(self.hax_endpoint.clone(), p.fid());
                c.endpoint = p.endpoint.clone();
                c.services = p
                    .services
                    .iter()
                    .filter_map(|(t, k)| {
                        let kind = match t.as_str() {
                            "confd" => ServiceType::Confd,
                            "ios" => ServiceType::Ios,
                            "rms" => ServiceType::Rms,
                            _ => return None,
                        };
                        Some((Fid::typed(FidType::Service, 1, *k), kind))
                    })
                    .collect();
                c.timeout = T;
                c
            })
            .collect();
        SimCluster::connect(cfgs)
            .await
            .expect("peers connected")
            .into_processes()
    }
}

/// What every cfgen cluster must give: the entrypoint of every peer, NVEC
/// answers, process events recorded and broadcast to every peer.
async fn serves_its_peers(c: &Cluster) -> Vec<SimProcess> {
    let nodes = c.kv.nodes();
    let leader = &nodes[0];
    let leader_confd = leader.confd().expect("confd");
    let mut want_confds: Vec<(Fid, String)> = nodes
        .iter()
        .map(|n| {
            let p = n.confd().expect("confd");
            (p.fid(), p.endpoint.clone())
        })
        .collect();
    want_confds.sort();

    // hax read its identity from Consul: its HA service is the `ha` service
    // cfgen lists under its process, not the key after the process's.
    let hax = leader.hax().expect("hax");
    let id = c.messages("identity");
    assert_eq!(id.len(), 1, "{id:?}");
    assert_eq!(id[0]["process"], hax.fid().to_string());
    assert_eq!(
        id[0]["ha"],
        hax.service("ha").expect("ha service").to_string()
    );

    let peers = c.connect_peers().await;
    for p in &peers {
        let e = p.entrypoint().expect("entrypoint");
        assert_eq!(e.outcome, LinkOutcome::New);
        assert!(e.warnings().is_empty(), "{:?}", e.warnings());
        let mut confds: Vec<(Fid, String)> = e
            .reply
            .confds
            .iter()
            .map(|x| (x.fid, x.ep.clone()))
            .collect();
        confds.sort();
        assert_eq!(confds, want_confds, "confds in the reply to {}", p.fid());
        assert_eq!(e.reply.quorum as usize, nodes.len() / 2 + 1);
        // The principal RM: the rms service of the leader's confd process.
        assert_eq!(
            (e.reply.rm_fid, e.reply.rm_ep.as_str()),
            (
                leader_confd.service("rms").expect("rms"),
                leader_confd.endpoint.as_str()
            )
        );
    }

    // NVEC GET of an ioservice's first sdev and its drive: cfgen's initial
    // M0_NC_UNKNOWN reads as ONLINE.
    let ios = &leader.ioservices()[0];
    let kv = HaxKv::new(c.client.clone());
    let sdev = c.kv.sdevs_of(ios.service("ios").expect("ios"))[0];
    let drive = c.kv.drive_of(sdev).expect("its drive");
    let notes = peers[0].nvec_get(&[sdev, drive]).await.expect("NVEC GET");
    assert_eq!(
        notes.iter().map(|n| n.state).collect::<Vec<_>>(),
        [HaState::Online, HaState::Online],
        "{notes:?}"
    );

    // Process events: recorded, then heard by every peer. A confd skips
    // DTM recovery: recorded recovered, heard online.
    let confds: Vec<Fid> = nodes
        .iter()
        .filter_map(|n| n.confd().map(|p| p.fid()))
        .collect();
    for p in &peers {
        p.send_process_event(ProcessEventKind::Started).unwrap();
    }
    for p in &peers {
        p.wait_all_confirmed(T).await.unwrap();
        let state = if confds.contains(&p.fid()) {
            ProcessState::DtmRecovered
        } else {
            ProcessState::Started
        };
        assert_eq!(
            kv.process_status(ft(p.fid())).await.expect("processes/"),
            Some(ProcessStatus {
                state,
                kind: ProcessType::M0d
            }),
            "processes/{}",
            p.fid()
        );
    }
    wait_for("every peer to hear of every start", T, || async {
        peers
            .iter()
            .all(|p| {
                peers.iter().all(|q| {
                    let state = if confds.contains(&q.fid()) {
                        HaState::Online
                    } else {
                        HaState::DtmRecovering
                    };
                    sets_with(p, q.fid(), state) >= 1
                })
            })
            .then_some(())
    })
    .await;
    peers
}

fn ft(f: Fid) -> FidText {
    FidText::new(f.container, f.key)
}

/// The routes and keys the original hax adds to hare's: `GET
/// /v1/cluster/fetch-fids` lists every node's hax, confd, ioservice and
/// client processes with their endpoints, and `events/subscription/node`
/// holds `health_message` from the start.
async fn serves_what_the_original_added(c: &Cluster) {
    let url = format!("http://{}/v1/cluster/fetch-fids", c.http);
    let answer = reqwest::get(&url).await.expect("fetch-fids");
    assert_eq!(answer.status(), 200);
    let nodes: serde_json::Value = answer.json().await.expect("JSON");
    let nodes = nodes.as_array().expect("a list of nodes");
    assert_eq!(nodes.len(), c.kv.nodes().len());
    for (node, want) in nodes.iter().zip(c.kv.nodes()) {
        assert_eq!(node["name"], want.name.as_str());
        let hax = want.hax().expect("hax");
        assert_eq!(node["ha_ep"], hax.endpoint.as_str());
        let svcs = node["svcs"].as_array().expect("svcs");
        for (name, process) in [
            ("hax", want.hax()),
            ("confd", want.confd()),
            ("ioservice", want.ioservices().first().copied()),
        ] {
            let process = process.expect(name);
            let svc = svcs
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("{name} of {}: {node}", want.name));
            assert_eq!(svc["fid"], process.fid().to_string());
            assert_eq!(svc["ep"], process.endpoint.as_str());
        }
    }
    let subscribed = c
        .client
        .kv_get("events/subscription/node")
        .await
        .expect("kv")
        .value
        .expect("events/subscription/node written at start");
    let list: Vec<String> = serde_json::from_slice(&subscribed.value).expect("a JSON list");
    assert_eq!(list, ["health_message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_as_cfgen_writes_it() {
    let c = Cluster::start(CfgenKv::one_node()).await;
    let peers = serves_its_peers(&c).await;
    assert_eq!(peers.len(), 3, "confd, ioservice, client");
    serves_what_the_original_added(&c).await;
    assert!(c.messages(MALFORMED).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_as_cfgen_writes_them() {
    let c = Cluster::start(CfgenKv::three_nodes()).await;
    serves_its_peers(&c).await;
    serves_what_the_original_added(&c).await;
    assert!(c.messages(MALFORMED).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupt_value_is_logged_once_and_skipped() {
    let mut kv = CfgenKv::one_node();
    let drive = kv
        .imported()
        .keys()
        .find(|k| k.contains("/drives/") && k.ends_with(":0x2"))
        .map(|k| (*k).to_owned())
        .expect("a drive key");
    kv.set(&drive, r#"{"sdev": "not a fid", "state": "M0_NC_UNKNOWN"}"#);
    let c = Cluster::start(kv).await;
    serves_its_peers(&c).await;
    // Logged with its key, once, though hax rewrote m0conf/ since (the
    // process states) and read it again.
    let logged = c.messages(MALFORMED);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["key"], drive.as_str());
}

/// hare's `ssl/hax` asks for https: hax answers over TLS only, and hare's
/// https watches (`tls_skip_verify`) reach it: the broadcasts its peers
/// get come through the BQ watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_as_ssl_hax_says() {
    let c = Cluster::start_with(CfgenKv::one_node(), true).await;
    let listening = c.messages("http listening");
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert_eq!(listening[0]["https"], true, "{listening:?}");
    serves_its_peers(&c).await;
    // Plain HTTP gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", c.http))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status() != 200),
        "{plain:?}"
    );
    assert!(c.messages(MALFORMED).is_empty());
}
