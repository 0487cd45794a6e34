//! The sample configuration shipped in `dist/` and the table of settings in
//! `docs/operations.md` match the code.

use std::path::Path;

use hax_bin::cli::SETTINGS;
use hax_bin::config::Config;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_shipped_configuration_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/hax.toml");
    let c = Config::from_file(&path).expect("dist/hax.toml parses");
    c.validate().expect("dist/hax.toml is valid");
    assert_eq!(c, Config::default(), "dist/hax.toml shows the defaults");
}

#[test]
fn the_shipped_configuration_shows_every_setting() {
    // Unset settings appear commented out, under their section.
    let text = read("dist/hax.toml");
    for s in SETTINGS {
        let (section, key) = s.key.split_once('.').expect("section.key");
        let body = text
            .split(&format!("[{section}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("dist/hax.toml has no [{section}]"));
        let body = body.split("\n[").next().unwrap_or_default();
        let shown = body.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
        });
        assert!(shown, "dist/hax.toml does not show {}", s.key);
    }
}

#[test]
fn the_documentation_lists_every_setting_as_the_code_has_it() {
    let doc = read("docs/operations.md");
    let section = doc
        .split("\n## Settings\n")
        .nth(1)
        .expect("docs/operations.md has a Settings section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let rows: Vec<Vec<&str>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let defaults = serde_json::to_value(Config::default()).expect("json");
    for s in SETTINGS {
        let row = rows
            .iter()
            .find(|r| r[0] == format!("`{}`", s.key))
            .unwrap_or_else(|| panic!("docs/operations.md does not list {}", s.key));
        assert_eq!(row[1], format!("`{}`", s.env), "{}", s.key);
        assert_eq!(row[2], format!("`--{}`", s.flag()), "{}", s.key);
        let (section, key) = s.key.split_once('.').expect("section.key");
        match &defaults[section][key] {
            serde_json::Value::Null => assert!(row[3].starts_with("unset"), "{}", s.key),
            v => {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                assert_eq!(row[3], format!("`{v}`"), "default of {}", s.key);
            }
        }
    }
    assert_eq!(
        rows.len(),
        SETTINGS.len(),
        "docs/operations.md lists settings that do not exist"
    );
}
