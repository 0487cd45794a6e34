//! hax on real Motr (feature `motr`) with a real `m0d`: a minimal single-node
//! configuration (one process with confd, RM and I/O services), `m0mkfs`,
//! then `m0d` with hax as its HA. hax answers m0d's entrypoint request with
//! the confd and RM of that configuration, its failure vector request and its
//! NVEC GET; m0d gets to PROCESS STARTED, answers a keepalive request from
//! hax, and on SIGTERM stops cleanly, reporting it.
//!
//! Skips, saying why, unless hax-core is built with `--features motr` and
//! `MOTR_PREFIX` names an installed Motr with `sbin/m0d` and `sbin/m0mkfs`:
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-core --features motr --test motr_m0d -- --nocapture
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hax_core::{
    Callbacks, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder,
    FailvecRequest, Fid, FidType, HaMsg, HaMsgData, HaState, Halon, HalonConfig, LinkId, LinkInfo,
    NvecGet, Tag, Uint128,
};

/// The configuration `m0confgen` makes of a one-process cluster (root,
/// profile, node, process `r:1:0` with RM `s:1:0`, I/O `s:1:3` and confd
/// `s:1:4`; one pool whose version N=1 K=0 S=0 P=1 spans one drive `k:1:0`
/// on sdev `d:1:0`), in xcode text; `{EP}` is m0d's endpoint.
const CONF: &str = r#"[20:
 {0x74| ((^t|1:0), 1, (11, 22), ^o|1:0, ^v|1:0, 1, [5: "pool_width=1", "nr_data_units=1", "nr_parity_units=0", "nr_spare_units=0", "unit_size=4096"], [1: ^n|1:0], [1: ^S|1:2], [1: ^o|1:0], [1: ^p|1:0], [0])},
 {0x70| ((^p|1:0), [1: ^o|1:0])},
 {0x6e| ((^n|1:0), 0x3e80, 2, 3, 2, [1: ^r|1:0])},
 {0x72| ((^r|1:0), [1: 3], 0, 0, 0, 0, "{EP}", [3: ^s|1:0, ^s|1:3, ^s|1:4])},
 {0x73| ((^s|1:0), @M0_CST_RMS, [1: "{EP}"], [0], [0])},
 {0x73| ((^s|1:3), @M0_CST_IOS, [1: "{EP}"], [0], [1: ^d|1:0])},
 {0x73| ((^s|1:4), @M0_CST_CONFD, [1: "{EP}"], [0], [0])},
 {0x6f| ((^o|1:0), 0, [1: ^v|1:0])},
 {0x76| ((^v|1:0), {0| (1, 0, 0, 1, [5: 0, 0, 0, 0, 0], [1: ^j|2:0])})},
 {0x6a| ((^j|2:0), ^S|1:2, [1: ^j|1:0])},
 {0x6a| ((^j|1:0), ^a|1:0, [1: ^j|1:1])},
 {0x6a| ((^j|1:1), ^e|1:0, [1: ^j|1:2])},
 {0x6a| ((^j|1:2), ^c|1:0, [1: ^j|1:3])},
 {0x6a| ((^j|1:3), ^k|1:0, [0])},
 {0x53| ((^S|1:2), [1: ^a|1:0], [1: ^v|1:0])},
 {0x61| ((^a|1:0), [1: ^e|1:0], [1: ^v|1:0])},
 {0x65| ((^e|1:0), ^n|1:0, [1: ^c|1:0], [1: ^v|1:0])},
 {0x63| ((^c|1:0), [1: ^k|1:0], [1: ^v|1:0])},
 {0x6b| ((^k|1:0), ^d|1:0, [1: ^v|1:0])},
 {0x64| ((^d|1:0), 0, 4, 1, 0x1000, 0x8ac45e4800, 3, 4, "/dev/sdev0")}]
"#;

const M0D_PROCESS: Fid = Fid::typed(FidType::Process, 1, 0);
const M0D_RMS: Fid = Fid::typed(FidType::Service, 1, 0);
const M0D_CONFD: Fid = Fid::typed(FidType::Service, 1, 4);

fn tools() -> Result<(PathBuf, PathBuf), String> {
    if !cfg!(feature = "motr") {
        return Err("hax-core is built without `--features motr`".into());
    }
    let prefix = std::env::var_os("MOTR_PREFIX")
        .filter(|p| !p.is_empty())
        .ok_or("MOTR_PREFIX is not set (it names the prefix of an installed Motr)")?;
    let sbin = Path::new(&prefix).join("sbin");
    let bin = Path::new(&prefix).join("bin");
    let find = |name: &str| {
        [sbin.join(name), bin.join(name)]
            .into_iter()
            .find(|p| p.exists())
            .ok_or(format!(
                "{name} is not installed under {}",
                prefix.to_string_lossy()
            ))
    };
    Ok((find("m0mkfs")?, find("m0d")?))
}

fn free_endpoint(taken: &mut Vec<u16>) -> String {
    const PORTAL: u16 = 36;
    let seed = (std::process::id() % 1000) as u16;
    for i in 0..1024u16 {
        let tmid = (seed + i * 11) % 1024;
        let port = tmid + 1024 + (PORTAL - 30) * 2048;
        if taken.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.push(port);
        return format!("127.0.0.1@tcp:12345:{PORTAL}:{tmid}");
    }
    panic!("no free port for an LNet-style endpoint");
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    cv: Condvar,
    m0d_ep: Mutex<String>,
}

impl Recorder {
    fn note(&self, s: String) {
        eprintln!("hax: {s}");
        self.events.lock().unwrap().push(s);
        self.cv.notify_all();
    }

    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut g = self.events.lock().unwrap();
        loop {
            if g.iter().any(|e| f(e)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                eprintln!("timed out waiting for {what}");
                return false;
            }
            g = self.cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }
}

#[derive(Clone)]
struct Rec(Arc<Recorder>);

impl Callbacks for Rec {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        self.0.note(format!(
            "entrypoint_request {} from {} process {} pid {} first {}",
            req.req_id, req.remote_endpoint, req.process_fid, req.pid, req.first_request
        ));
        let ep = self.0.m0d_ep.lock().unwrap().clone();
        let rep = EntrypointReply {
            confds: vec![Confd {
                fid: M0D_CONFD,
                endpoint: ep.clone(),
            }],
            quorum: 1,
            rm_fid: M0D_RMS,
            rm_endpoint: ep,
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            self.0.note(format!("entrypoint reply failed: {e}"));
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        self.0.note(format!(
            "msg_received {link} tag {tag} {} about {} {:?}",
            msg.data.type_name(),
            msg.fid,
            msg.data
        ));
        if let HaMsgData::KeepaliveReq { id } = msg.data {
            let rep = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: 1 });
            let r = cx.send(link, &rep);
            self.0.note(format!("keepalive reply on {link}: {r:?}"));
        }
        if let Err(e) = d.deliver_now(cx) {
            self.0.note(format!("delivered failed: {e}"));
        }
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        let link = get.link();
        self.0.note(format!(
            "nvec_get {link} id {} fids {:?}",
            get.id_of_get(),
            get.fids().iter().map(|f| f.to_string()).collect::<Vec<_>>()
        ));
        let r = get.answer_now(cx, |_| HaState::Online);
        self.0.note(format!("nvec answer on {link}: {r:?}"));
        if let Err(e) = d.deliver_now(cx) {
            self.0.note(format!("delivered failed: {e}"));
        }
    }

    fn failvec_request(&self, cx: &Ctx<'_>, req: FailvecRequest, d: Delivery) {
        let link = req.link();
        let pool = req.pool();
        let r = req.answer_now(cx, pool, Vec::new());
        self.0
            .note(format!("failvec_request {link} pool {pool} answered {r:?}"));
        if let Err(e) = d.deliver_now(cx) {
            self.0.note(format!("delivered failed: {e}"));
        }
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0.note(format!("msg_delivered {link} tag {tag}"));
    }

    fn msg_not_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0.note(format!("msg_not_delivered {link} tag {tag}"));
    }

    fn link_connected(&self, _cx: &Ctx<'_>, req_id: Uint128, link: &LinkInfo) {
        self.0.note(format!(
            "link_connected {} req {req_id} ep {} process {} self {}",
            link.id, link.endpoint, link.process_fid, link.is_self
        ));
    }

    fn link_reused(&self, _cx: &Ctx<'_>, req_id: Uint128, link: LinkId) {
        self.0.note(format!("link_reused {link} req {req_id}"));
    }

    fn link_absent(&self, _cx: &Ctx<'_>, req_id: Uint128) {
        self.0.note(format!("link_absent req {req_id}"));
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.0.note(format!("link_disconnected {link}"));
    }
}

fn m0d_args(dir: &Path, ep: &str) -> Vec<String> {
    let d = dir.display();
    vec![
        "-D".into(),
        format!("{d}/db"),
        "-T".into(),
        "AD".into(),
        "-S".into(),
        format!("{d}/stobs"),
        "-A".into(),
        format!("linuxstob:{d}/addb-stobs"),
        "-e".into(),
        format!("sock:{ep}"),
        "-m".into(),
        "163840".into(),
        "-q".into(),
        "2".into(),
        "-c".into(),
        format!("{d}/conf.xc"),
        "-w".into(),
        "3".into(),
        // No network buffers for the I/O service. Motr's SOCK transport
        // reports no limit on buffer segments (INT32_MAX / 2 of unlimited
        // size), and the I/O service sizes each buffer of its pool by those
        // limits: at start it zero-fills ~16 GiB of segment tables for the
        // first buffer, then fails to allocate its first segment. With `-E 0`
        // it provisions none and starts. (An LNet build, or SOCK built with
        // `--enable-sock-mock-lnet`, reports 4 KiB x 512 segments.)
        "-E".into(),
        "0".into(),
        "-f".into(),
        format!("<{:#x}:{:#x}>", M0D_PROCESS.container, M0D_PROCESS.key),
    ]
}

fn spawn(bin: &Path, dir: &Path, args: &[String], log: &str) -> Child {
    let out = std::fs::File::create(dir.join(log)).expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("M0_TRACE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("starts")
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn tail(dir: &Path, log: &str) -> String {
    let s = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn m0d_connects_to_hax() {
    let (m0mkfs, m0d) = match tools() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("hax-motr-m0d-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::env::set_var("M0_TRACE_DIR", &dir);
    let mut ports = Vec::new();
    let m0d_ep = free_endpoint(&mut ports);
    let hax_ep = free_endpoint(&mut ports);
    std::fs::write(dir.join("conf.xc"), CONF.replace("{EP}", &m0d_ep)).expect("conf.xc");

    // m0mkfs formats the storage on its own (it is its own HA without -H).
    let mut mkfs = spawn(&m0mkfs, &dir, &m0d_args(&dir, &m0d_ep), "m0mkfs.log");
    let rc = wait_exit(&mut mkfs, Duration::from_secs(120));
    eprintln!("m0mkfs exit {rc:?}\n{}", tail(&dir, "m0mkfs.log"));
    assert_eq!(rc, Some(0), "m0mkfs");

    let rec = Arc::new(Recorder::default());
    *rec.m0d_ep.lock().unwrap() = m0d_ep.clone();
    let cfg = HalonConfig {
        endpoint: hax_ep.clone(),
        process_fid: Fid::typed(FidType::Process, 9, 1),
        ha_service_fid: Fid::typed(FidType::Service, 9, 2),
        rm_service_fid: Fid::typed(FidType::Service, 9, 3),
        debug_options: String::new(),
        node_uuid: None,
    };
    let mut halon = Halon::start(cfg, Rec(Arc::clone(&rec))).expect("halon interface starts");

    let mut args = m0d_args(&dir, &m0d_ep);
    args.extend(["-H".to_string(), hax_ep.clone()]);
    let mut child = spawn(&m0d, &dir, &args, "m0d.log");
    let m0d_fid = M0D_PROCESS.to_string();
    let connected = rec.wait_for("m0d's link", Duration::from_secs(60), |e| {
        e.starts_with("link_connected") && e.contains(&m0d_fid) && e.ends_with("self false")
    });
    let starting = rec.wait_for("m0d's PROCESS STARTING", Duration::from_secs(30), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Starting")
    });
    let started = rec.wait_for("m0d's PROCESS STARTED", Duration::from_secs(60), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Started")
    });
    let m0d_link = rec
        .events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.starts_with("link_connected") && e.contains(&m0d_fid))
        .and_then(|e| e.split_whitespace().nth(1).map(str::to_owned));
    // Motr's dispatcher answers a keepalive request with the same id.
    let mut keepalive_answered = false;
    if let (true, Some(link_name)) = (started, m0d_link.as_deref()) {
        let link = halon
            .handle()
            .links()
            .into_iter()
            .find(|l| l.id.to_string() == link_name)
            .map(|l| l.id)
            .expect("m0d's link is listed");
        let id = Uint128::new(0x4b41, 7);
        let r = halon
            .handle()
            .send(link, HaMsg::new(HaMsgData::KeepaliveReq { id }))
            .wait();
        rec.note(format!("keepalive request on {link}: {r:?}"));
        keepalive_answered = rec.wait_for("m0d's keepalive reply", Duration::from_secs(10), |e| {
            e.starts_with(&format!("msg_received {link_name} "))
                && e.contains("KeepaliveRep")
                && e.contains("lo: 7")
        });
    }
    // SIGTERM: m0d reports its stop and exits.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let rc = wait_exit(&mut child, Duration::from_secs(60));
    eprintln!("m0d exit {rc:?}\n{}", tail(&dir, "m0d.log"));
    let stopped = rec.wait_for("m0d's PROCESS STOPPED", Duration::from_secs(10), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Stopped")
    });
    let report = halon.stop().expect("stop");
    eprintln!("hax stopped: {report:?}");
    assert!(
        connected,
        "m0d's entrypoint request answered, link connected"
    );
    assert!(starting, "m0d reported PROCESS STARTING to hax");
    let ev = rec.events.lock().unwrap().clone();
    let m0d_link = m0d_link.expect("m0d's link");
    let on_link = |what: &str| {
        ev.iter()
            .any(|e| e.starts_with(&format!("msg_received {m0d_link} ")) && e.contains(what))
    };
    assert!(on_link("event_service"), "m0d reported service events");
    assert!(
        ev.iter()
            .any(|e| e.starts_with(&format!("failvec_request {m0d_link} ")) && e.contains("Ok(")),
        "m0d's failure vector request answered"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with(&format!("nvec answer on {m0d_link}")) && e.contains("Ok(")),
        "m0d's NVEC GET answered"
    );
    assert!(started, "m0d reached PROCESS STARTED");
    assert!(keepalive_answered, "m0d answered hax's keepalive request");
    assert!(stopped, "m0d reported PROCESS STOPPED");
    assert_eq!(rc, Some(0), "m0d exits 0 on SIGTERM");
    assert_eq!(report.violations, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
