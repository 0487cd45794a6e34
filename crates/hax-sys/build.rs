//! Compiles the backend behind `csrc/hax_glue.h`: the emulator by default, the
//! real-libmotr glue with feature `motr`. Bindings are checked in
//! (`src/bindings.rs`), so no build needs libclang.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rustc-check-cfg=cfg(hax_backend, values(\"emulator\", \"motr\"))");
    let motr = env::var_os("CARGO_FEATURE_MOTR").is_some();
    let mut build = cc::Build::new();
    build
        .std("c11")
        .include("csrc")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-pedantic")
        .define("_GNU_SOURCE", None);
    if motr {
        println!("cargo:rustc-cfg=hax_backend=\"motr\"");
        motr_backend(&mut build);
    } else {
        println!("cargo:rustc-cfg=hax_backend=\"emulator\"");
        build
            .file("csrc/hax_glue_emu.c")
            .file("csrc/emu_wire.c")
            .file("csrc/emu_net.c");
        build.compile("hax_glue_emu");
        println!("cargo:rustc-link-lib=pthread");
    }
    println!(
        "cargo:include={}/csrc",
        env::var("CARGO_MANIFEST_DIR").unwrap_or_default()
    );
}

fn motr_backend(_build: &mut cc::Build) {
    println!("cargo:rerun-if-env-changed=MOTR_PREFIX");
    panic!(
        "feature `motr`: the real-libmotr backend (csrc/hax_glue_motr.c) is not part of this \
         build yet; build without `--features motr` to use the emulator"
    );
}
