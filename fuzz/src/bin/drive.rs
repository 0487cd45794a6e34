//! The stable fuzz driver: `drive <target> <runs> [seed]` replays
//! `corpus/<target>/` and then runs `runs` mutated inputs through the target
//! (see `hax_fuzz::mutate`). A failing input is written to
//! `crash-<target>-<seed>` in the current directory.

use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: drive <target> <runs> [seed]; targets:");
        for (n, _) in hax_fuzz::TARGETS {
            eprintln!("  {n}");
        }
        std::process::exit(2)
    };
    let (Some(name), Some(runs)) = (args.get(1), args.get(2).and_then(|r| r.parse().ok())) else {
        usage()
    };
    let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let Some(target) = hax_fuzz::target(name) else {
        usage()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let corpus = hax_fuzz::mutate::read_corpus(&dir);
    let crash = format!("crash-{name}-{seed}");
    let t = Instant::now();
    let n = hax_fuzz::mutate::drive(target, &corpus, runs, seed, Some(Path::new(&crash)));
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name}: {n} inputs ({} corpus files, seed {seed}) in {secs:.1} s, {:.0}/s, no failure",
        corpus.len(),
        n as f64 / secs
    );
}
