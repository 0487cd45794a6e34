//! What the tests against a real `m0d` share (hax-bin's too, by path): finding Motr's tools (or
//! failing, saying why: a real-Motr test never passes without running), the
//! transport hax's endpoint goes through, free endpoints (libfabric's
//! `inet:tcp:` form, as hare writes them, and the LNet form), a one-process
//! configuration and the entrypoint reply naming its services,
//! `m0mkfs`/`m0d` arguments, child processes that are killed when dropped
//! and inherit no descriptor of the test process, and a log of what hax's
//! callbacks saw.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hax_core::{Confd, EntrypointReply, Fid, FidType};

/// `HAX_REQUIRE_MOTR=1` (CI with Motr installed) makes a real-Motr test that
/// cannot run fail rather than be ignored: built without `--features motr`,
/// the tests would be ignored, so the build stops instead.
#[cfg(not(feature = "motr"))]
const _: () = assert!(
    !matches!(option_env!("HAX_REQUIRE_MOTR"), Some(v) if matches!(v.as_bytes(), [b'1'])),
    "HAX_REQUIRE_MOTR=1: the real-Motr tests need `--features motr` (docs/motr.md)"
);

/// `m0mkfs` and `m0d` of the installed Motr.
pub struct Tools {
    pub m0mkfs: PathBuf,
    pub m0d: PathBuf,
}

/// The tools; a test built with `--features motr` that cannot find them
/// fails, saying why (`MOTR_PREFIX` unset, or a tool missing).
pub fn tools() -> Tools {
    Tools {
        m0mkfs: installed("m0mkfs"),
        m0d: installed("m0d"),
    }
}

/// The Motr program `name` (in `sbin` or `bin` of the Motr prefix), or a
/// failure saying why it cannot be found.
pub fn installed(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|why| panic!("this real-Motr test cannot run: {why}"))
}

/// The Motr prefix: `MOTR_PREFIX` of the run, else the one the test was
/// built with (the build found libmotr there).
fn prefix() -> Result<PathBuf, String> {
    std::env::var_os("MOTR_PREFIX")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or(option_env!("MOTR_PREFIX")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from))
        .ok_or_else(|| "MOTR_PREFIX is not set (it names the prefix of an installed Motr)".into())
}

fn find(name: &str) -> Result<PathBuf, String> {
    if !cfg!(feature = "motr") {
        return Err(concat!(
            env!("CARGO_PKG_NAME"),
            " is built without `--features motr`"
        )
        .into());
    }
    let prefix = prefix()?;
    ["sbin", "bin"]
        .iter()
        .map(|d| prefix.join(d).join(name))
        .find(|p| p.exists())
        .ok_or(format!(
            "{name} is not installed under {}",
            prefix.display()
        ))
}

/// The name of Motr's default network transport (`libfab`, `sock` or
/// `lnet`): the one an endpoint without a transport prefix goes through, so
/// the one of hax's own endpoint (the halon interface listens on the default
/// transport) and of `m0ham`. An `m0d` is told its transport with its
/// endpoint (`-e <transport>:<endpoint>`); the tests start theirs on this
/// one, else hax and the m0d would speak different transports on the same
/// TCP port (docs/motr.md). Read from `M0_DEFAULT_NETWORK` of the installed
/// `config.h` (`LF` on a build with libfabric, what `/opt/motr` is).
pub fn transport() -> &'static str {
    let config = prefix()
        .map(|p| p.join("include/motr/config.h"))
        .and_then(|p| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display())))
        .unwrap_or_else(|why| panic!("this real-Motr test cannot run: {why}"));
    let net = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define M0_DEFAULT_NETWORK"))
        .map(|v| v.trim().trim_matches('"').to_owned());
    match net.as_deref() {
        Some("LF") => "libfab",
        Some("SOCK") => "sock",
        Some("LNET") => "lnet",
        other => panic!(
            "this real-Motr test cannot run: Motr's config.h names no known default network \
             (M0_DEFAULT_NETWORK {other:?})"
        ),
    }
}

/// A free endpoint in libfabric's form `inet:tcp:127.0.0.1@<port>`, as hare
/// writes them (ports from 20000 up, below the ephemeral range, so that no
/// outgoing connection takes it in the meantime).
pub fn free_inet_endpoint(taken: &mut Vec<u16>) -> String {
    format!("inet:tcp:127.0.0.1@{}", free_port(taken, 1))
}

/// The first of `n` consecutive free TCP ports on 127.0.0.1 (from 20000
/// up), none of them in `taken`; all of them are added to it.
pub fn free_port(taken: &mut Vec<u16>, n: u16) -> u16 {
    let seed = (std::process::id() % 5000) as u16;
    for i in 0..5000u16 {
        let first = 20000 + (seed + i * 7) % 5000 * 2;
        let ports: Vec<u16> = (first..first + n).collect();
        if ports
            .iter()
            .any(|p| taken.contains(p) || TcpListener::bind(("127.0.0.1", *p)).is_err())
        {
            continue;
        }
        taken.extend(&ports);
        return first;
    }
    panic!("no {n} free consecutive TCP ports");
}

/// A free endpoint in the LNet form `127.0.0.1@tcp:12345:<portal>:<tmid>`
/// (every transport parses it and listens on TCP port
/// `tmid + 1024 + (portal - 30) * 2048`).
pub fn free_endpoint(portal: u16, taken: &mut Vec<u16>) -> String {
    let seed = (std::process::id() % 1000) as u16;
    for i in 0..1024u16 {
        let tmid = (seed + i * 11) % 1024;
        let port = tmid + 1024 + (portal - 30) * 2048;
        if taken.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        taken.push(port);
        return format!("127.0.0.1@tcp:12345:{portal}:{tmid}");
    }
    panic!("no free port for an LNet-style endpoint");
}

/// The m0d process of [`conf`].
pub const PROCESS: Fid = Fid::typed(FidType::Process, 1, 0);
/// Its RM service.
pub const RMS: Fid = Fid::typed(FidType::Service, 1, 0);
/// Its I/O service.
pub const IOS: Fid = Fid::typed(FidType::Service, 1, 3);
/// Its confd service.
pub const CONFD: Fid = Fid::typed(FidType::Service, 1, 4);
/// The profile.
pub const PROFILE: Fid = Fid::typed(FidType::Profile, 1, 0);
/// The pool.
pub const POOL: Fid = Fid::typed(FidType::Pool, 1, 0);
/// The pool version (N=1 K=0 S=0 P=1).
pub const PVER: Fid = Fid::typed(FidType::Pver, 1, 0);

/// The answer to m0d's entrypoint request: the confd and RM of [`conf`] at
/// m0d's endpoint `ep`.
pub fn entrypoint_reply(ep: &str) -> EntrypointReply {
    EntrypointReply {
        confds: vec![Confd {
            fid: CONFD,
            endpoint: ep.to_owned(),
        }],
        quorum: 1,
        rm_fid: RMS,
        rm_endpoint: ep.to_owned(),
    }
}

/// A one-process configuration in xcode text, as `m0confgen` makes it:
/// root, profile, node, process `r:1:0` with RM `s:1:0`, I/O `s:1:3` (sdev
/// `d:1:0`), confd `s:1:4`, and with `sns` also SNS repair `s:1:5` and
/// rebalance `s:1:6`; one pool whose version N=1 K=0 S=0 P=1 spans one
/// drive `k:1:0`. `ep` is m0d's endpoint.
pub fn conf(ep: &str, sns: bool) -> String {
    let services = if sns {
        "[5: ^s|1:0, ^s|1:3, ^s|1:4, ^s|1:5, ^s|1:6]"
    } else {
        "[3: ^s|1:0, ^s|1:3, ^s|1:4]"
    };
    let mut objs = vec![
        r#"{0x74| ((^t|1:0), 1, (11, 22), ^o|1:0, ^v|1:0, 1, [5: "pool_width=1", "nr_data_units=1", "nr_parity_units=0", "nr_spare_units=0", "unit_size=4096"], [1: ^n|1:0], [1: ^S|1:2], [1: ^o|1:0], [1: ^p|1:0], [0])}"#.to_owned(),
        "{0x70| ((^p|1:0), [1: ^o|1:0])}".to_owned(),
        "{0x6e| ((^n|1:0), 0x3e80, 2, 3, 2, [1: ^r|1:0])}".to_owned(),
        format!(r#"{{0x72| ((^r|1:0), [1: 3], 0, 0, 0, 0, "{ep}", {services})}}"#),
        format!(r#"{{0x73| ((^s|1:0), @M0_CST_RMS, [1: "{ep}"], [0], [0])}}"#),
        format!(r#"{{0x73| ((^s|1:3), @M0_CST_IOS, [1: "{ep}"], [0], [1: ^d|1:0])}}"#),
        format!(r#"{{0x73| ((^s|1:4), @M0_CST_CONFD, [1: "{ep}"], [0], [0])}}"#),
    ];
    if sns {
        objs.push(format!(
            r#"{{0x73| ((^s|1:5), @M0_CST_SNS_REP, [1: "{ep}"], [0], [0])}}"#
        ));
        objs.push(format!(
            r#"{{0x73| ((^s|1:6), @M0_CST_SNS_REB, [1: "{ep}"], [0], [0])}}"#
        ));
    }
    objs.extend(
        [
            "{0x6f| ((^o|1:0), 0, [1: ^v|1:0])}",
            "{0x76| ((^v|1:0), {0| (1, 0, 0, 1, [5: 0, 0, 0, 0, 0], [1: ^j|2:0])})}",
            "{0x6a| ((^j|2:0), ^S|1:2, [1: ^j|1:0])}",
            "{0x6a| ((^j|1:0), ^a|1:0, [1: ^j|1:1])}",
            "{0x6a| ((^j|1:1), ^e|1:0, [1: ^j|1:2])}",
            "{0x6a| ((^j|1:2), ^c|1:0, [1: ^j|1:3])}",
            "{0x6a| ((^j|1:3), ^k|1:0, [0])}",
            "{0x53| ((^S|1:2), [1: ^a|1:0], [1: ^v|1:0])}",
            "{0x61| ((^a|1:0), [1: ^e|1:0], [1: ^v|1:0])}",
            "{0x65| ((^e|1:0), ^n|1:0, [1: ^c|1:0], [1: ^v|1:0])}",
            "{0x63| ((^c|1:0), [1: ^k|1:0], [1: ^v|1:0])}",
            "{0x6b| ((^k|1:0), ^d|1:0, [1: ^v|1:0])}",
            r#"{0x64| ((^d|1:0), 0, 4, 1, 0x1000, 0x8ac45e4800, 3, 4, "/dev/sdev0")}"#,
        ]
        .map(str::to_owned),
    );
    format!("[{}:\n {}]\n", objs.len(), objs.join(",\n "))
}

/// Arguments of `m0mkfs` and of `m0d` (add `-H <ha>`) for [`PROCESS`].
pub fn m0_args(dir: &Path, ep: &str) -> Vec<String> {
    let mut v = m0_common_args(dir, ep, PROCESS);
    v.extend([
        "-c".into(),
        format!("{}/conf.xc", dir.display()),
        "-w".into(),
        "3".into(),
    ]);
    if transport() == "sock" {
        // No network buffers for SNS either on SOCK (see below): its pools
        // are sized when repair or rebalance starts.
        v.extend(["-J".into(), "0".into()]);
    }
    v
}

/// What every `m0mkfs` and `m0d` of these tests is given: process `fid`
/// with its storage in `dir`, listening on `ep` on hax's transport
/// ([`transport`]); on SOCK no I/O network buffers.
pub fn m0_common_args(dir: &Path, ep: &str, fid: Fid) -> Vec<String> {
    let d = dir.display();
    let mut v: Vec<String> = vec![
        "-D".into(),
        format!("{d}/db"),
        "-T".into(),
        "AD".into(),
        "-S".into(),
        format!("{d}/stobs"),
        "-A".into(),
        format!("linuxstob:{d}/addb-stobs"),
        "-e".into(),
        format!("{}:{ep}", transport()),
        "-m".into(),
        "163840".into(),
        "-q".into(),
        "2".into(),
        "-f".into(),
        format!("<{:#x}:{:#x}>", fid.container, fid.key),
    ];
    if transport() == "sock" {
        // No network buffers for the I/O service on SOCK: it reports no
        // limit on buffer segments (INT32_MAX / 2 of unlimited size), and
        // the pool sizes each buffer by those limits: ~16 GiB of zero-filled
        // segment tables, then a failed allocation (docs/motr.md).
        // libfabric reports real limits and needs neither option.
        v.extend(["-E".into(), "0".into()]);
    }
    v
}

/// A command that runs `bin` with no open descriptor but 0, 1 and 2.
///
/// A process started from one that runs hax's Motr would otherwise inherit
/// its descriptors: libfabric opens its listening socket (and the rest) without
/// close-on-exec, so an m0d started by a test that runs `Halon` held hax's
/// listening socket too. Setting close-on-exec ourselves would take `unsafe`
/// (`pre_exec`) or a crate the tests do not have; `bash` closes them instead,
/// then `exec`s `bin` (same pid, so signals and `wait` reach `bin`).
pub fn command(bin: &Path) -> Command {
    let mut c = Command::new("bash");
    c.args([
        "-c",
        r#"for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$0" "$@""#,
    ])
    .arg(bin);
    c
}

/// The sockets that process `pid` holds and this process holds too (their
/// `socket:[inode]` names): inherited ones, which [`command`] prevents.
pub fn shared_sockets(pid: u32) -> Vec<String> {
    let sockets = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|l| l.display().to_string())
                    .filter(|l| l.starts_with("socket:"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ours = sockets("/proc/self/fd");
    let mut shared: Vec<String> = sockets(&format!("/proc/{pid}/fd"))
        .into_iter()
        .filter(|s| ours.contains(s))
        .collect();
    shared.sort();
    shared.dedup();
    shared
}

/// A child process, killed and reaped when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin` in `dir` (its trace files there too), output to `log`.
    pub fn spawn(bin: &Path, dir: &Path, args: &[String], log: &str) -> Proc {
        let name = bin
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Proc::start(
            &name,
            command(bin)
                .args(args)
                .current_dir(dir)
                .env("M0_TRACE_DIR", dir),
            &dir.join(log),
        )
    }

    /// Starts `cmd`, called `name` in failures, output to `log`.
    pub fn start(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends signal `sig` (`TERM`, `STOP`, `CONT`...).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status();
    }

    /// The exit code if it exits within `limit`; killed (None) otherwise.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return st.code();
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("{} did not exit within {limit:?}: killed", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    return None;
                }
            }
        }
    }

    /// Whether it has exited (or was reaped).
    pub fn exited(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(Child::try_wait),
            Some(Ok(Some(_))) | None
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of `dir/log`.
pub fn tail(dir: &Path, log: &str, n: usize) -> String {
    let s = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A fresh scratch directory for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// What hax's callbacks saw, a line an event, and m0d's endpoint for their
/// entrypoint replies.
#[derive(Default)]
pub struct EventLog {
    pub events: Mutex<Vec<String>>,
    cv: Condvar,
    pub m0d_ep: Mutex<String>,
}

impl EventLog {
    pub fn note(&self, s: String) {
        self.events.lock().unwrap().push(s);
        self.cv.notify_all();
    }

    /// Whether a line satisfying `f` is seen within `limit` (saying so
    /// when not).
    pub fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> bool {
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

    /// m0d's endpoint, as set by the test.
    pub fn m0d_ep(&self) -> String {
        self.m0d_ep.lock().unwrap().clone()
    }
}

/// What one m0ham run did.
pub struct HamRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `m0ham -v -s <local> <hax>` with `input` on stdin, for at most
/// `limit`.
pub fn run_m0ham(
    m0ham: &Path,
    dir: &Path,
    local: &str,
    hax: &str,
    input: &str,
    limit: Duration,
) -> HamRun {
    // Started with no descriptor of this process (hax's listening socket
    // among them).
    let mut child = command(m0ham)
        .args(["-v", "-s", local, hax])
        .current_dir(dir)
        .env("M0_TRACE_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("m0ham starts");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("m0ham reads stdin");
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    HamRun {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}
