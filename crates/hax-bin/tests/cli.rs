//! The `hax` command line: bad settings are refused before anything starts,
//! with the setting named and exit status 2.

use std::process::Command;

fn hax(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hax"))
        .args(args)
        .env_remove("HAX_CONFIG")
        .output()
        .expect("run hax");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_setting() {
    let (code, out, _) = hax(&["--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--config",
        "--consul-address",
        "--consul-token-file",
        "--http-bind",
        "--node",
        "--endpoint",
        "--process-fid",
        "--ha-service-fid",
        "--rm-service-fid",
        "--motr-debug-options",
        "--log-format",
        "--log",
        "--check-config",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn bad_settings_are_refused_with_their_name() {
    let (code, _, err) = hax(&["--process-fid", "0x72:zz"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid fid"), "{err}");

    let dir = std::env::temp_dir().join(format!("hax-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[http]\nbind = \"nowhere\"\n").expect("write");
    let (code, _, err) = hax(&["--config", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("bind"), "{err}");

    let (code, _, err) = hax(&["--config", "/nonexistent/hax.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/hax.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_prints_the_effective_settings() {
    let (code, out, _) = hax(&[
        "--check-config",
        "--http-bind",
        "127.0.0.1:9999",
        "--ha-service-fid",
        "0x7300000000000001:0x7",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1:9999"), "{out}");
    assert!(out.contains("key: 7"), "{out}");
}
