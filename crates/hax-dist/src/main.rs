//! `hax-dist OUT_DIR`: writes the files of the hax package that are made from
//! the code rather than kept in the repository, so that they always describe
//! the `hax` they ship with (its options, variables, subcommands and backend):
//!
//! * `OUT_DIR/man/hax.8`, and `hax-<subcommand>.8` for each subcommand;
//! * `OUT_DIR/completions/hax.bash`, `_hax` (zsh), `hax.fish`.
//!
//! `scripts/package.sh` runs it before `cargo deb`, whose assets take these
//! files from the target directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// Said at the end of every page: where the rest is.
const SEE_ALSO: &str = "Files: /etc/hax/hax.toml (the configuration; every setting with its \
default), the systemd unit hax.service. The operator's guide: \
/usr/share/doc/hax/operations.md. Exit status: 0 after a stop by SIGTERM or SIGINT, \
2 for a configuration refused, 1 for any other failure to run.";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: hax-dist OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hax-dist: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = hax_bin::cli::command().after_long_help(SEE_ALSO);
    // Subcommands get their display names (`hax-status`) and the help
    // subcommand is left out, as clap_mangen's own generator does.
    cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut files = Vec::new();

    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    write_pages(&cmd, &man, &mut files)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut c = cmd.clone();
        files.push(clap_complete::generate_to(
            shell,
            &mut c,
            "hax",
            &completions,
        )?);
    }
    Ok(files)
}

/// One page in section 8 (system administration: hax is a daemon) for the
/// command and for each visible subcommand, recursively.
fn write_pages(cmd: &clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, files)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("hax {}", hax_bin::cli::VERSION));
    files.push(page.generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_page_and_the_completions_of_every_option() {
        let dir = std::env::temp_dir().join(format!("hax-dist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_all(&dir).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "man/hax.8",
            "completions/hax.bash",
            "completions/_hax",
            "completions/hax.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let page = std::fs::read_to_string(dir.join("man/hax.8")).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH hax 8"),
            "{page}"
        );
        let bash = std::fs::read_to_string(dir.join("completions/hax.bash")).unwrap();
        // Every setting is on the page with its variable, and completes.
        for s in hax_bin::cli::SETTINGS {
            let flag = format!("--{}", s.flag());
            assert!(
                page.contains(&flag.replace('-', "\\-")),
                "{flag} not on the page"
            );
            assert!(page.contains(s.env), "{} not on the page", s.env);
            assert!(bash.contains(&flag), "{flag} does not complete in bash");
        }
        assert!(page.contains(hax_bin::cli::VERSION), "the backend is named");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
