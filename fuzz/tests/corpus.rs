//! The corpus of every target replayed through the same functions the fuzz
//! targets call, plus a short seeded mutation run: what `cargo fuzz` once
//! found stays fixed. Runs on stable (`--no-default-features`).

use std::path::Path;

/// Mutated inputs per target on top of the corpus: a few seconds in all.
const RUNS: u64 = 20_000;

#[test]
fn every_target_replays_its_corpus() {
    for (name, target) in hax_fuzz::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name);
        let corpus = hax_fuzz::mutate::read_corpus(&dir);
        assert!(
            !corpus.is_empty(),
            "no corpus for {name} in {}",
            dir.display()
        );
        let n = hax_fuzz::mutate::drive(target, &corpus, RUNS, 7, None);
        eprintln!("{name}: {n} inputs");
    }
}
