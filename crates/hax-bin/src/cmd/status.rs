//! `hax status`: the cluster status of the daemon (`GET /v1/cluster/status`)
//! or, with `--consul`, the same built from Consul alone
//! ([`hax_ha::http::status::gather`] over a cluster view of its own), as
//! JSON or as text laid out like `hctl status`.

use std::time::Duration;

use hax_consul::schema::HaxKv;
use hax_consul::ConsulClient;
use hax_ha::http::status::{gather, ClusterStatus, HeldLinks};
use hax_ha::view::{ClusterView, ViewConfig};
use tokio_util::sync::CancellationToken;

use super::daemon_api::DaemonApi;
use super::CmdError;
use crate::cli::StatusArgs;
use crate::config::Config;

/// What an unreachable daemon's message ends with.
const HINT: &str = "; is hax running? (`hax status --consul` reads Consul directly)";

/// Runs `hax status`: the text to print.
pub async fn run(cfg: &Config, args: &StatusArgs) -> Result<String, CmdError> {
    if args.consul {
        let status = from_consul(cfg, super::timeout(args.client.timeout)).await?;
        return if args.client.json {
            serde_json::to_string_pretty(&status)
                .map(|t| t + "\n")
                .map_err(|e| CmdError::Usage(format!("cannot encode the status: {e}")))
        } else {
            Ok(render(&status))
        };
    }
    let api = DaemonApi::new(cfg, &args.client, HINT).await?;
    let body = api.get("/v1/cluster/status").await?;
    let status: ClusterStatus = serde_json::from_str(&body).map_err(|e| CmdError::Refused {
        url: api.url().to_owned(),
        status: 200,
        message: format!("not a cluster status: {e}"),
    })?;
    if args.client.json {
        // The daemon's own text: a newer daemon's keys are kept.
        let mut body = body;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Ok(body)
    } else {
        Ok(render(&status))
    }
}

/// The status built from Consul alone, as `hctl status` does: the view of
/// the daemon, loaded once, and the keys the daemon reads.
pub async fn from_consul(cfg: &Config, wait: Duration) -> Result<ClusterStatus, CmdError> {
    let address = cfg.consul.address.clone();
    let consul_failed = |reason: String| CmdError::Consul {
        address: address.clone(),
        reason,
    };
    let cc = cfg.consul_config(wait, cfg.consul_token()?);
    let client = ConsulClient::new(cc).map_err(|e| consul_failed(e.to_string()))?;
    match client.status_leader().await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(consul_failed("the agent knows no Consul leader".into())),
        Err(e) => return Err(consul_failed(e.to_string())),
    }
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // Whose view it is matters only to the daemon (what is local, whether
    // it is the RC); the status shows every node alike.
    let view = ClusterView::spawn(
        client.clone(),
        ViewConfig::new(
            cfg.identity.node.clone().unwrap_or_default(),
            cfg.identity.process_fid.unwrap_or_default(),
        ),
        &cancel,
        &tokio_util::task::TaskTracker::new(),
    );
    let state = view
        .wait_loaded(wait)
        .await
        .map_err(|e| consul_failed(e.to_string()))?;
    gather(&HaxKv::new(client), &state, None)
        .await
        .map_err(|e| consul_failed(e.to_string()))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `status` as text: `hctl status`'s sections (data pools, profiles,
/// services with the RC leader's node tagged `(RC)`), each process's
/// recorded state after its endpoint, then the byte counts, the broadcast
/// queue and the links.
pub fn render(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };

    line(format!("Data pool{}:", plural(status.pools.len())));
    line("    # fid name".into());
    for p in &status.pools {
        line(format!("    {} '{}'", p.fid, p.name));
    }
    if status.pools.is_empty() {
        line("    (none)".into());
    }
    line(format!("Profile{}:", plural(status.profiles.len())));
    line("    # fid name: pool(s)".into());
    for p in &status.profiles {
        let pools: Vec<String> = p.pools.iter().map(|x| format!("'{x}'")).collect();
        line(format!("    {} '{}': {}", p.fid, p.name, pools.join(" ")));
    }
    if status.profiles.is_empty() {
        line("    (none)".into());
    }

    line("Services:".into());
    for n in &status.nodes {
        let rc = if status.leader.as_deref() == Some(n.name.as_str()) {
            "  (RC)"
        } else {
            ""
        };
        line(format!("    {}{rc}", n.name));
        for p in &n.svcs {
            let mut text = format!(
                "    [{}]  {:<9}  {:<23}  {}",
                p.status.as_str(),
                p.name,
                p.fid.to_string(),
                p.ep
            );
            if let Some(s) = p.state {
                text.push_str("  ");
                text.push_str(s.short_name());
            }
            line(text);
        }
    }
    match status.leader.as_deref() {
        None => line("RC leader: none".into()),
        Some(l) if !status.nodes.iter().any(|n| n.name == l) => {
            line(format!("RC leader: {l} (not a node of the configuration)"))
        }
        Some(_) => {}
    }

    if !status.bytecount.is_empty() {
        line("Bytecount:".into());
        for (class, value) in &status.bytecount {
            line(format!("    {class} : {value}"));
        }
    }

    line(format!("Broadcast queue: last entry {}", status.bq.epoch));
    let width = status
        .bq
        .nodes
        .iter()
        .map(|n| n.node.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    line(format!(
        "    # {:<width$}  {:>8}  {:>8}",
        "node", "offset", "lag"
    ));
    for n in &status.bq.nodes {
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let mut text = format!(
            "    {:<w$}  {:>8}  {:>8}",
            n.node,
            num(n.offset),
            num(n.lag),
            w = width + 2
        );
        if n.offset.is_none() {
            text.push_str("  (never consumed)");
        }
        line(text);
    }

    match &status.links {
        None => line(
            "HA links: not shown (read from Consul; only the running daemon knows them)".into(),
        ),
        Some(held) => render_links(held, &mut line),
    }
    out
}

fn render_links(held: &HeldLinks, line: &mut impl FnMut(String)) {
    line(format!("HA links of hax {} on {}:", held.hax, held.node));
    line(format!(
        "    # {:<21}  {:<9}  endpoint",
        "process fid", "name"
    ));
    for l in &held.links {
        let mut text = format!(
            "    {:<23}  {:<9}  {}",
            l.process.to_string(),
            l.name,
            l.endpoint
        );
        if l.is_self {
            text.push_str("  (self)");
        }
        if !l.active {
            text.push_str("  (inactive)");
        }
        line(text);
    }
    if held.links.is_empty() {
        line("    (none)".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_consul::schema::{FidText, PoolRecord, ProcessState, ProfileRecord};
    use hax_ha::http::status::{BqNode, BqStatus, LinkLine, Liveness, NodeLine, ProcessLine};

    fn sample() -> ClusterStatus {
        let hax = FidText::new(0x7200_0000_0000_0001, 6);
        let ios = FidText::new(0x7200_0000_0000_0001, 0xc);
        ClusterStatus {
            bytecount: [("healthy".to_owned(), serde_json::json!(4096))].into(),
            pools: vec![PoolRecord {
                fid: FidText::new(0x6f00_0000_0000_0001, 9),
                name: "tier1".into(),
            }],
            profiles: vec![ProfileRecord {
                fid: FidText::new(0x7000_0000_0000_0001, 1),
                name: "default".into(),
                pools: vec!["tier1".into()],
            }],
            filesystem: serde_json::json!({"stats": {}}),
            nodes: vec![
                NodeLine {
                    name: "srvnode-1".into(),
                    svcs: vec![
                        ProcessLine {
                            name: "hax".into(),
                            fid: hax,
                            ep: "inet:tcp:10.0.0.1@22001".into(),
                            status: Liveness::Started,
                            state: Some(ProcessState::Started),
                        },
                        ProcessLine {
                            name: "ioservice".into(),
                            fid: ios,
                            ep: "inet:tcp:10.0.0.1@22003".into(),
                            status: Liveness::Unknown,
                            state: None,
                        },
                    ],
                },
                NodeLine {
                    name: "srvnode-2".into(),
                    svcs: Vec::new(),
                },
            ],
            leader: Some("srvnode-1".into()),
            bq: BqStatus {
                epoch: 42,
                nodes: vec![
                    BqNode {
                        node: "srvnode-1".into(),
                        offset: Some(40),
                        lag: Some(2),
                    },
                    BqNode {
                        node: "srvnode-2".into(),
                        offset: None,
                        lag: None,
                    },
                ],
            },
            links: Some(HeldLinks {
                node: "srvnode-1".into(),
                hax,
                links: vec![
                    LinkLine {
                        id: 1,
                        process: hax,
                        name: "hax".into(),
                        node: Some("srvnode-1".into()),
                        endpoint: "inet:tcp:10.0.0.1@22001".into(),
                        is_self: true,
                        active: true,
                    },
                    LinkLine {
                        id: 2,
                        process: ios,
                        name: "ioservice".into(),
                        node: Some("srvnode-1".into()),
                        endpoint: "inet:tcp:10.0.0.1@22003".into(),
                        is_self: false,
                        active: false,
                    },
                ],
            }),
        }
    }

    #[test]
    fn text_reads_like_hctl_status() {
        let expected = "\
Data pool:
    # fid name
    0x6f00000000000001:0x9 'tier1'
Profile:
    # fid name: pool(s)
    0x7000000000000001:0x1 'default': 'tier1'
Services:
    srvnode-1  (RC)
    [started]  hax        0x7200000000000001:0x6   inet:tcp:10.0.0.1@22001  STARTED
    [unknown]  ioservice  0x7200000000000001:0xc   inet:tcp:10.0.0.1@22003
    srvnode-2
Bytecount:
    healthy : 4096
Broadcast queue: last entry 42
    # node         offset       lag
    srvnode-1          40         2
    srvnode-2           -         -  (never consumed)
HA links of hax 0x7200000000000001:0x6 on srvnode-1:
    # process fid            name       endpoint
    0x7200000000000001:0x6   hax        inet:tcp:10.0.0.1@22001  (self)
    0x7200000000000001:0xc   ioservice  inet:tcp:10.0.0.1@22003  (inactive)
";
        assert_eq!(render(&sample()), expected);
    }

    #[test]
    fn what_is_missing_is_said() {
        let mut s = sample();
        s.pools.clear();
        s.profiles.clear();
        s.bytecount.clear();
        s.leader = None;
        s.links = None;
        let text = render(&s);
        assert!(
            text.starts_with("Data pools:\n    # fid name\n    (none)\nProfiles:\n"),
            "{text}"
        );
        assert!(
            !text.contains("(RC)") && text.contains("RC leader: none\n"),
            "{text}"
        );
        assert!(!text.contains("Bytecount"), "{text}");
        assert!(
            text.ends_with(
                "HA links: not shown (read from Consul; only the running daemon knows them)\n"
            ),
            "{text}"
        );
        s.leader = Some("elsewhere".into());
        assert!(render(&s).contains("RC leader: elsewhere (not a node of the configuration)\n"));
        s.links = Some(HeldLinks {
            node: "srvnode-1".into(),
            hax: FidText::new(0x7200_0000_0000_0001, 6),
            links: Vec::new(),
        });
        assert!(render(&s).ends_with("endpoint\n    (none)\n"));
    }
}
