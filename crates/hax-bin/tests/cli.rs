//! The `hax` command line: every setting comes from the file, the `HAX_*`
//! environment or an option, each overriding the one before;
//! `--check-config` prints the result as TOML the file reads back; bad
//! settings are refused before anything starts, with the setting and where
//! it came from named, and exit status 2.

use std::path::{Path, PathBuf};
use std::process::Command;

use hax_bin::cli::SETTINGS;
use hax_bin::config::Config;

/// Runs `hax` with `args` and `env` only, none of the caller's `HAX_*`
/// (nor hare's variables, which hax reads too).
fn hax_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hax"));
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if ["HAX_", "HARE_HAX_", "CONSUL_HTTP_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run hax");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hax(args: &[&str]) -> (i32, String, String) {
    hax_env(args, &[])
}

/// A directory of its own for each test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("hax-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8").to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The effective configuration `hax --check-config` prints, read back.
fn effective(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec!["--check-config"];
    all.extend_from_slice(args);
    let (code, out, err) = hax_env(&all, env);
    assert_eq!(code, 0, "{args:?} {env:?}: {err}");
    let c = Config::from_toml(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    serde_json::to_value(c).expect("json")
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    let (section, name) = key.split_once('.').expect("section.key");
    &v[section][name]
}

/// Two valid values of a setting, different from each other and the first
/// from the default.
fn samples(key: &str, default: &serde_json::Value, dir: &Dir) -> [String; 2] {
    if let Some(n) = default.as_u64() {
        return [(n + 1).to_string(), (n + 2).to_string()];
    }
    // A switch has two values: the other one, then the default.
    if let Some(on) = default.as_bool() {
        return [(!on).to_string(), on.to_string()];
    }
    // Token files are read by `--check-config`, as by a start: they exist.
    if key.ends_with(".token_file") {
        return [dir.file("token-1", "t1\n"), dir.file("token-2", "t2\n")];
    }
    let [a, b] = match key {
        "consul.address" => ["consul-1:8500", "consul-2:8500"],
        "http.bind" => ["127.0.0.1:9001", "127.0.0.1:9002"],
        "identity.node" => ["srvnode-1", "srvnode-2"],
        "identity.endpoint" => ["inet:tcp:10.0.0.1@22001", "inet:tcp:10.0.0.1@22002"],
        "identity.process_fid" => ["0x7200000000000001:0x1", "0x7200000000000001:0x2"],
        "identity.ha_service_fid" | "identity.rm_service_fid" => {
            ["0x7300000000000001:0x1", "0x7300000000000001:0x2"]
        }
        "motr.debug_options" => ["log-link", "log-msg"],
        "log.format" => ["json", "human"],
        "log.filter" => ["debug", "hax=warn"],
        _ => panic!("no sample values for {key}: add two"),
    };
    [a.to_owned(), b.to_owned()]
}

/// `value` as a TOML value of the type `default` has.
fn toml_value(default: &serde_json::Value, value: &str) -> String {
    if default.is_u64() || default.is_boolean() {
        value.to_owned()
    } else {
        serde_json::Value::from(value).to_string()
    }
}

fn shown(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

#[test]
fn every_setting_comes_from_the_file_the_environment_or_an_option() {
    let dir = Dir::new("layers");
    let defaults = serde_json::to_value(Config::default()).expect("json");
    // The fields, from the settings themselves rather than the list this
    // test checks.
    let mut keys = Vec::new();
    for (section, fields) in defaults.as_object().expect("sections") {
        for name in fields.as_object().expect("fields").keys() {
            keys.push(format!("{section}.{name}"));
        }
    }
    assert_eq!(keys.len(), SETTINGS.len());
    for key in &keys {
        let s = SETTINGS
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("{key} has no option or variable"));
        let flag = format!("--{}", s.flag());
        let default = field(&defaults, key);
        let [a, b] = samples(key, default, &dir);
        assert_ne!(shown(default), a, "{key}");
        let (section, name) = key.split_once('.').expect("section.key");
        let file = dir.file(
            "layer.toml",
            &format!("[{section}]\n{name} = {}\n", toml_value(default, &a)),
        );

        let got = |args: &[&str], env: &[(&str, &str)]| shown(field(&effective(args, env), key));
        assert_eq!(got(&["--config", &file], &[]), a, "{key} from the file");
        assert_eq!(got(&[], &[(s.env, &a)]), a, "{key} from {}", s.env);
        assert_eq!(got(&[&flag, &a], &[]), a, "{key} from {flag}");
        assert_eq!(
            got(&["--config", &file], &[(s.env, &b)]),
            b,
            "{} overrides the file's {key}",
            s.env
        );
        assert_eq!(
            got(&[&flag, &b], &[(s.env, &a)]),
            b,
            "{flag} overrides {}",
            s.env
        );
        // An empty variable is unset, as before.
        assert_eq!(
            got(&["--config", &file], &[(s.env, "")]),
            a,
            "empty {} over the file's {key}",
            s.env
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let (code, out, _) = hax(&["--help"]);
    assert_eq!(code, 0);
    for s in SETTINGS {
        assert!(
            out.contains(&format!("--{} <", s.flag())),
            "--help lacks --{}",
            s.flag()
        );
        assert!(
            out.contains(&format!("[env: {}=", s.env)),
            "--help lacks {}",
            s.env
        );
    }
    for opt in ["--config", "--check-config"] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

/// hare runs its hax with `HARE_HAX_NODE_NAME` and the Consul CLI's
/// variables: they count over the file, and hax's own names win.
#[test]
fn the_environment_hare_sets_counts_and_hax_names_win() {
    let dir = Dir::new("hare-env");
    let file = dir.file(
        "hax.toml",
        "[consul]\naddress = \"http://127.0.0.1:9999\"\n[identity]\nnode = \"from-file\"\n",
    );
    let hare = [
        ("HARE_HAX_NODE_NAME", "srvnode-1.data.private"),
        ("CONSUL_HTTP_ADDR", "10.1.2.3:8500"),
        ("CONSUL_HTTP_SSL", "false"),
    ];
    let v = effective(&["--config", &file], &hare);
    assert_eq!(field(&v, "identity.node"), "srvnode-1.data.private");
    assert_eq!(field(&v, "consul.address"), "http://10.1.2.3:8500");

    let mut both = hare.to_vec();
    both.extend([
        ("HAX_NODE", "mine"),
        ("HAX_CONSUL_ADDRESS", "127.0.0.1:8600"),
    ]);
    let v = effective(&["--config", &file], &both);
    assert_eq!(field(&v, "identity.node"), "mine");
    assert_eq!(field(&v, "consul.address"), "127.0.0.1:8600");
    let v = effective(&["--node", "opt"], &hare);
    assert_eq!(field(&v, "identity.node"), "opt");

    // A bad value names hare's variable.
    let (code, _, err) = hax_env(&["--check-config"], &[("CONSUL_HTTP_ADDR", "http://[::1")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("consul.address (from environment variable CONSUL_HTTP_ADDR)"),
        "{err}"
    );
}

#[test]
fn bad_settings_are_refused_with_their_name_and_origin() {
    let dir = Dir::new("bad");
    let (code, _, err) = hax(&["--process-fid", "0x72:zz"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("identity.process_fid (from option --process-fid)")
            && err.contains("invalid fid"),
        "{err}"
    );

    let (code, _, err) = hax_env(&[], &[("HAX_HTTP_BIND", "nowhere")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("http.bind (from environment variable HAX_HTTP_BIND)"),
        "{err}"
    );

    let (code, _, err) = hax_env(&[], &[("HAX_LIMITS_PENDING_WRITES", "0")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("limits.pending_writes (from environment variable HAX_LIMITS_PENDING_WRITES): must be positive"),
        "{err}"
    );

    let bad = dir.file("bad.toml", "[http]\nbind = \"nowhere\"\n");
    let (code, _, err) = hax(&["--config", &bad]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("bind"), "{err}");

    let zero = dir.file("zero.toml", "[consul]\nrequest_timeout_ms = 0\n");
    let (code, _, err) = hax(&["--config", &zero, "--check-config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("consul.request_timeout_ms (from {zero})")),
        "{err}"
    );
    // Fixed by the environment, the file's bad value no longer matters.
    let (code, _, err) = hax_env(
        &["--config", &zero, "--check-config"],
        &[("HAX_CONSUL_REQUEST_TIMEOUT_MS", "500")],
    );
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = hax(&["--config", "/nonexistent/hax.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/hax.toml"), "{err}");

    // Too large for the timers it sets, or for TOML: refused, not a panic.
    for (env, value) in [
        ("HAX_LIMITS_RESYNC_SECS", "18446744073709551615"),
        ("HAX_LIMITS_EVENT_QUEUE", "18446744073709551615"),
        ("HAX_LIMITS_BQ_RETAIN", "18446744073709551615"),
        ("HAX_CONSUL_REQUEST_TIMEOUT_MS", "18446744073709551615"),
        ("HAX_LIMITS_RESYNC_SECS", "18446744073709551616"),
    ] {
        let (code, _, err) = hax_env(&["--check-config"], &[(env, value)]);
        assert_eq!(code, 2, "{env}={value}: {err}");
        assert!(err.contains(env) && !err.contains("panicked"), "{err}");
    }
}

/// Runs `hax` with `args` as a start (no `--check-config`), against a
/// Consul address nothing answers at; killed after 30 s if it is still
/// waiting for Consul.
fn start(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hax"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HAX_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("HAX_CONSUL_ADDRESS", "127.0.0.1:1")
        .args(["--http-bind", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hax");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_what_a_start_refuses() {
    let dir = Dir::new("files");
    let empty = dir.file("empty", " \n");
    let absent = dir.0.join("absent").display().to_string();
    for (args, needle) in [
        (
            vec!["--http-token-file", empty.as_str()],
            "http.token_file (from option --http-token-file)",
        ),
        (
            vec!["--http-token-file", absent.as_str()],
            "http.token_file (from option --http-token-file)",
        ),
        (
            vec!["--consul-token-file", empty.as_str()],
            "consul.token_file (from option --consul-token-file)",
        ),
        (
            vec!["--consul-token-file", absent.as_str()],
            "consul.token_file (from option --consul-token-file)",
        ),
    ] {
        let mut check = vec!["--check-config"];
        check.extend_from_slice(&args);
        let (code, _, err) = hax(&check);
        assert_eq!(code, 2, "--check-config {args:?}: {err}");
        assert!(err.contains(needle), "--check-config {args:?}: {err}");
        let (code, err) = start(&args);
        assert_eq!(code, 2, "start {args:?}: {err}");
        assert!(err.contains(needle), "start {args:?}: {err}");
    }
    // A Consul address a start could not use, from each place.
    for address in [
        "http://[::1",
        "ftp://127.0.0.1:8500",
        "http://127.0.0.1:8500/v1",
    ] {
        let (code, _, err) = hax_env(&["--check-config"], &[("HAX_CONSUL_ADDRESS", address)]);
        assert_eq!(code, 2, "{address}: {err}");
        assert!(
            err.contains("consul.address (from environment variable HAX_CONSUL_ADDRESS)"),
            "{address}: {err}"
        );
        let (code, err) = start(&["--consul-address", address]);
        assert_eq!(code, 2, "start with {address}: {err}");
        assert!(
            err.contains("consul.address (from option --consul-address)"),
            "{err}"
        );
    }
    // A readable token is taken, and never printed.
    let good = dir.file("good", "s3cret-token\n");
    let (code, out, err) = hax(&["--check-config", "--http-token-file", &good]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("s3cret-token") && !err.contains("s3cret-token"));
}

#[test]
fn check_config_prints_toml_the_file_reads_back() {
    let dir = Dir::new("check");
    let (code, out, err) = hax_env(
        &[
            "--check-config",
            "--http-bind",
            "127.0.0.1:9999",
            "--ha-service-fid",
            "0x7300000000000001:0x7",
            "--log-format",
            "json",
        ],
        &[("HAX_LIMITS_RESYNC_SECS", "5"), ("HAX_NODE", "srvnode-1")],
    );
    assert_eq!(code, 0, "{err}");
    let path = dir.file("effective.toml", &out);
    let c = Config::from_file(Path::new(&path)).unwrap_or_else(|e| panic!("{out}: {e}"));
    let mut want = Config::default();
    want.http.bind = Some("127.0.0.1:9999".parse().expect("addr"));
    want.identity.ha_service_fid = Some("0x7300000000000001:0x7".parse().expect("fid"));
    want.identity.node = Some("srvnode-1".into());
    want.log.format = hax_bin::config::LogFormat::Json;
    want.limits.resync_secs = 5;
    assert_eq!(c, want, "{out}");
    // Given back as the file, it is the same configuration.
    let (code, again, err) = hax(&["--check-config", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
}

#[test]
fn version_names_the_backend() {
    let (code, out, _) = hax(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!(
            "hax {} (backend: {})",
            env!("CARGO_PKG_VERSION"),
            hax_core::BACKEND
        )
    );
}

/// hax whose stderr is a pipe nobody reads any more (its reader died: a
/// `| sed` in a script, a journal restarting) still stops on SIGTERM. The
/// subscriber reported each log line it could not write to that same
/// stderr, and printing to a closed pipe panics: the thread taking SIGTERM
/// died with it and hax ran on.
#[test]
fn sigterm_stops_hax_whose_stderr_reader_is_gone() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    // No Consul there: hax logs a warning every few hundred milliseconds.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hax"))
        .args([
            "--consul-address",
            "127.0.0.1:1",
            "--http-bind",
            "127.0.0.1:0",
        ])
        .env_remove("HAX_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hax started");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut first = [0u8; 64];
    stderr.read_exact(&mut first).expect("hax logs");
    drop(stderr);
    // It goes on writing into the closed pipe for a while.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "hax ended when its stderr reader went: {:?}",
        child.try_wait()
    );
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("hax still running 20 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
