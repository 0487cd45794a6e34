//! What the tests of the daemon with real `m0d`s share: the sample
//! cluster's Motr configuration, the m0d / m0mkfs command lines, the check of
//! an m0d's exit and the process states hax records in Consul.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hax_consul::schema::{FidText, HaxKv, ProcessState, ProcessStatus};
use hax_core::Fid;
use hax_testkit::sample::{fids, Sample};

use crate::daemon_support::{tail, Proc};
use crate::motr_support::{self, m0_common_args, Tools};

pub fn x(kind: char, key: u64) -> String {
    format!("^{kind}|1:{key}")
}

/// The Motr configuration of the sample, in xcode text: hax's process with
/// its HA service, the confd process (RM and confd services), the ioservice
/// process (RM, I/O with the sdev, SNS repair and rebalance), one pool with
/// one pool version N=1 K=0 S=0 P=1 over the ioservice's drive.
pub fn conf_xc(s: &Sample, hax_ep: &str) -> String {
    let (confd_ep, ios_ep) = (&s.confd.1, &s.ioservices[0].1);
    let (hax, confd, ios) = (fids::HAX, fids::CONFD, fids::IOS);
    let (sdev, drive) = (s.sdevs[0].key, s.drives[0].key);
    let pver = 1;
    let objs = [
        format!(
            "{{0x74| ((^t|1:0), 1, (11, 22), {o}, {v}, 1, [5: \"pool_width=1\", \"nr_data_units=1\", \
             \"nr_parity_units=0\", \"nr_spare_units=0\", \"unit_size=4096\"], [1: {n}], [1: {site}], \
             [1: {o}], [1: {p}], [0])}}",
            o = x('o', 1),
            v = x('v', pver),
            n = x('n', 2),
            site = x('S', 3),
            p = x('p', 1)
        ),
        format!("{{0x70| (({}), [1: {}])}}", x('p', 1), x('o', 1)),
        format!(
            "{{0x6e| (({}), 0x3e80, 2, 3, 2, [3: {}, {}, {}])}}",
            x('n', 2),
            x('r', hax),
            x('r', confd),
            x('r', ios)
        ),
        format!(
            "{{0x72| (({}), [1: 3], 0, 0, 0, 0, \"{hax_ep}\", [1: {}])}}",
            x('r', hax),
            x('s', hax + 1)
        ),
        format!(
            "{{0x73| (({}), @M0_CST_HA, [1: \"{hax_ep}\"], [0], [0])}}",
            x('s', hax + 1)
        ),
        format!(
            "{{0x72| (({}), [1: 3], 0, 0, 0, 0, \"{confd_ep}\", [2: {}, {}])}}",
            x('r', confd),
            x('s', 11),
            x('s', 10)
        ),
        format!("{{0x73| (({}), @M0_CST_RMS, [1: \"{confd_ep}\"], [0], [0])}}", x('s', 11)),
        format!("{{0x73| (({}), @M0_CST_CONFD, [1: \"{confd_ep}\"], [0], [0])}}", x('s', 10)),
        format!(
            "{{0x72| (({}), [1: 3], 0, 0, 0, 0, \"{ios_ep}\", [4: {}, {}, {}, {}])}}",
            x('r', ios),
            x('s', 103),
            x('s', 100),
            x('s', 101),
            x('s', 102)
        ),
        format!("{{0x73| (({}), @M0_CST_RMS, [1: \"{ios_ep}\"], [0], [0])}}", x('s', 103)),
        format!(
            "{{0x73| (({}), @M0_CST_IOS, [1: \"{ios_ep}\"], [0], [1: {}])}}",
            x('s', 100),
            x('d', sdev)
        ),
        format!("{{0x73| (({}), @M0_CST_SNS_REP, [1: \"{ios_ep}\"], [0], [0])}}", x('s', 101)),
        format!("{{0x73| (({}), @M0_CST_SNS_REB, [1: \"{ios_ep}\"], [0], [0])}}", x('s', 102)),
        format!("{{0x6f| (({}), 0, [1: {}])}}", x('o', 1), x('v', pver)),
        format!(
            "{{0x76| (({}), {{0| (1, 0, 0, 1, [5: 0, 0, 0, 0, 0], [1: ^j|2:0])}})}}",
            x('v', pver)
        ),
        format!("{{0x6a| ((^j|2:0), {}, [1: ^j|1:0])}}", x('S', 3)),
        format!("{{0x6a| ((^j|1:0), {}, [1: ^j|1:1])}}", x('a', 4)),
        format!("{{0x6a| ((^j|1:1), {}, [1: ^j|1:2])}}", x('e', 5)),
        format!("{{0x6a| ((^j|1:2), {}, [1: ^j|1:3])}}", x('c', 6)),
        format!("{{0x6a| ((^j|1:3), {}, [0])}}", x('k', drive)),
        format!("{{0x53| (({}), [1: {}], [1: {}])}}", x('S', 3), x('a', 4), x('v', pver)),
        format!("{{0x61| (({}), [1: {}], [1: {}])}}", x('a', 4), x('e', 5), x('v', pver)),
        format!(
            "{{0x65| (({}), {}, [1: {}], [1: {}])}}",
            x('e', 5),
            x('n', 2),
            x('c', 6),
            x('v', pver)
        ),
        format!("{{0x63| (({}), [1: {}], [1: {}])}}", x('c', 6), x('k', drive), x('v', pver)),
        format!("{{0x6b| (({}), {}, [1: {}])}}", x('k', drive), x('d', sdev), x('v', pver)),
        format!(
            "{{0x64| (({}), 0, 4, 1, 0x1000, 0x8ac45e4800, 3, 4, \"/dev/sdb\")}}",
            x('d', sdev)
        ),
    ];
    format!("[{}:\n {}]\n", objs.len(), objs.join(",\n "))
}

/// m0d / m0mkfs arguments for process `fid` in `dir`.
pub fn m0_args(
    dir: &Path,
    ep: &str,
    fid: Fid,
    conf: Option<&Path>,
    ha: Option<&str>,
) -> Vec<String> {
    let mut v = m0_common_args(dir, ep, fid);
    v.extend(["-w".into(), "1".into()]);
    if let Some(c) = conf {
        v.extend(["-c".into(), c.display().to_string()]);
    }
    if let Some(h) = ha {
        v.extend(["-H".into(), h.to_owned()]);
    }
    v
}

pub fn m0_command(bin: &Path, dir: &Path, args: &[String]) -> Command {
    // With no descriptor of the test process.
    let mut c = motr_support::command(bin);
    c.args(args).current_dir(dir).env("M0_TRACE_DIR", dir);
    c
}

/// An m0d stopped with SIGTERM must exit 0. hax fences a stopped process
/// (a FAILED note on its own link) only once the process's link is gone or
/// Motr's HA disconnect timeout has passed since its STOPPED was delivered:
/// fenced while it still flushes its HA link, an m0d either waits for ever
/// in that flush or sees its link fail, asks for the entrypoint again, is
/// told it was disconnected before and aborts. Either fails here, named.
pub fn assert_clean_exit(what: &str, rc: Option<i32>, log: &Path) {
    if rc == Some(0) {
        return;
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let why = if text.contains("hae_disconnected_previously") {
        "aborted: its HA link was disconnected before it closed it"
    } else if rc.is_none() && !text.contains("Motr panic") {
        "did not exit in time (waiting in its HA flush, or for a lock its RM lent)"
    } else {
        "ended abnormally"
    };
    panic!("{what} {why} ({rc:?}):\n{}", tail(log, 30));
}

pub async fn process_state(kv: &HaxKv, fid: Fid) -> Option<ProcessState> {
    kv.process_status(FidText::new(fid.container, fid.key))
        .await
        .ok()
        .flatten()
        .map(|s: ProcessStatus| s.state)
}

/// Formats the confd and the ioservice process of `s` side by side (each
/// its own HA here) in `root/confd` and `root/ios`, which it returns.
pub fn format_both(tools: &Tools, root: &Path, s: &Sample, conf: &Path) -> (PathBuf, PathBuf) {
    let (confd_dir, ios_dir) = (root.join("confd"), root.join("ios"));
    let mut mkfs = Vec::new();
    for (d, (fid, ep)) in [(&confd_dir, &s.confd), (&ios_dir, &s.ioservices[0])] {
        std::fs::create_dir_all(d).expect("process dir");
        let args = m0_args(d, ep, *fid, Some(conf), None);
        mkfs.push(Proc::start(
            "m0mkfs",
            &mut m0_command(&tools.m0mkfs, d, &args),
            &d.join("m0mkfs.log"),
        ));
    }
    for (p, d) in mkfs.iter_mut().zip([&confd_dir, &ios_dir]) {
        let rc = p.wait(Duration::from_secs(180));
        let log = d.join("m0mkfs.log");
        assert_eq!(
            rc,
            Some(0),
            "m0mkfs in {}:\n{}",
            d.display(),
            tail(&log, 30)
        );
    }
    (confd_dir, ios_dir)
}

/// `Some` once hax has recorded process `fid` STARTED (or DTM-recovered).
pub async fn started(kv: &HaxKv, fid: Fid) -> Option<()> {
    matches!(
        process_state(kv, fid).await,
        Some(ProcessState::Started | ProcessState::DtmRecovered)
    )
    .then_some(())
}
