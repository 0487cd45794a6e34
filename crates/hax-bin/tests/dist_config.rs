//! The sample configuration shipped in `dist/` is valid.

#[test]
fn the_shipped_configuration_parses_and_validates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/hax.toml");
    let c = hax_bin::config::Config::from_file(&path).expect("dist/hax.toml parses");
    c.validate().expect("dist/hax.toml is valid");
    assert_eq!(
        c,
        hax_bin::config::Config::default(),
        "dist/hax.toml shows the defaults"
    );
}
