//! Compiles the backend behind `csrc/hax_glue.h`: the emulator by default, the
//! real-libmotr glue with feature `motr`. Bindings are checked in
//! (`src/bindings.rs`), so no build needs libclang.

use std::env;
use std::path::{Path, PathBuf};

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
            .file("csrc/emu_net.c")
            .file("csrc/emu_client.c")
            .file("csrc/glue_check.c");
        build.compile("hax_glue_emu");
        println!("cargo:rustc-link-lib=pthread");
    }
    println!(
        "cargo:include={}/csrc",
        env::var("CARGO_MANIFEST_DIR").unwrap_or_default()
    );
}

/// Where an installed Motr is: its include directory (the one holding
/// `ha/halon/interface.h` and `config.h`) and its library directory.
struct Motr {
    include: PathBuf,
    libdir: PathBuf,
    how: String,
}

/// `MOTR_PREFIX` first (`$MOTR_PREFIX/include/motr`, `$MOTR_PREFIX/lib`), then
/// `pkg-config motr`.
fn find_motr() -> Result<Motr, String> {
    if let Some(prefix) = env::var_os("MOTR_PREFIX").filter(|p| !p.is_empty()) {
        let prefix = PathBuf::from(prefix);
        let include = prefix.join("include").join("motr");
        let libdir = ["lib", "lib64"]
            .iter()
            .map(|d| prefix.join(d))
            .find(|d| d.join("libmotr.so").exists())
            .unwrap_or_else(|| prefix.join("lib"));
        return check_motr(Motr {
            include,
            libdir,
            how: format!("MOTR_PREFIX={}", prefix.display()),
        });
    }
    let lib = pkg_config::Config::new()
        .cargo_metadata(false)
        .env_metadata(false)
        .probe("motr")
        .map_err(|e| format!("MOTR_PREFIX is not set, and `pkg-config motr` failed: {e}"))?;
    let include = lib
        .include_paths
        .iter()
        .find(|p| p.join("ha/halon/interface.h").exists())
        .or_else(|| lib.include_paths.first())
        .cloned()
        .ok_or("`pkg-config --cflags motr` names no include directory")?;
    let libdir = lib
        .link_paths
        .iter()
        .find(|p| p.join("libmotr.so").exists())
        .or_else(|| lib.link_paths.first())
        .cloned()
        .ok_or("`pkg-config --libs motr` names no library directory")?;
    check_motr(Motr {
        include,
        libdir,
        how: format!("pkg-config motr {}", lib.version),
    })
}

fn check_motr(m: Motr) -> Result<Motr, String> {
    let mut missing = Vec::new();
    for f in [
        "ha/halon/interface.h",
        "config.h",
        "ha/msg.h",
        "lib/thread.h",
    ] {
        let p = m.include.join(f);
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    let lib = m.libdir.join("libmotr.so");
    if !lib.exists() {
        missing.push(lib.display().to_string());
    }
    if missing.is_empty() {
        Ok(m)
    } else {
        Err(format!(
            "found through {}, but missing: {}",
            m.how,
            missing.join(", ")
        ))
    }
}

fn motr_backend(build: &mut cc::Build) {
    println!("cargo:rerun-if-env-changed=MOTR_PREFIX");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    let motr = find_motr().unwrap_or_else(|e| {
        panic!(
            "feature `motr` needs an installed Motr (headers and libmotr.so): {e}. Set \
             MOTR_PREFIX to its install prefix (with include/motr/ha/halon/interface.h and \
             lib/libmotr.so), or let `pkg-config motr` find its motr.pc (PKG_CONFIG_PATH); \
             or build without `--features motr` to use the emulator"
        )
    });
    println!(
        "cargo:rerun-if-changed={}",
        motr.include.join("config.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        motr.libdir.join("libmotr.so").display()
    );
    // Motr's headers are GNU C and expect its config.h first, and the
    // defines Motr itself is built with (configure.ac: M0_CPPFLAGS).
    build
        .file("csrc/hax_glue_motr.c")
        .file("csrc/glue_check.c")
        .flag("-std=gnu11")
        .flag("-isystem")
        // As an OsStr: an install prefix need not be UTF-8.
        .flag(&motr.include)
        .flag("-include")
        .flag("config.h")
        .define("_REENTRANT", None)
        .define("M0_INTERNAL", Some(""))
        .define("M0_EXTERN", Some("extern"))
        .flag_if_supported("-Wno-attributes");
    build.compile("hax_glue_motr");
    println!("cargo:rustc-link-search=native={}", motr.libdir.display());
    println!("cargo:rustc-link-lib=dylib=motr");
    println!("cargo:rustc-link-lib=pthread");
    println!("cargo:libdir={}", motr.libdir.display());
    // `cargo run` and `cargo test` put link-search directories that lie in
    // the target directory on the loader path: libmotr's links there let
    // them run without LD_LIBRARY_PATH.
    if let Some(out) = env::var_os("OUT_DIR") {
        let dir = PathBuf::from(out).join("motr-lib");
        if link_libmotr(&motr.libdir, &dir).is_ok() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
}

fn link_libmotr(libdir: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(libdir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("libmotr.so") {
            continue;
        }
        let link = dir.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(entry.path(), &link)?;
    }
    Ok(())
}
