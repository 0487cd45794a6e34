//! A small deterministic mutator: the stable stand-in for libFuzzer, so that
//! the targets run (and CI replays them) without nightly. Seeded, so a run is
//! repeatable: the same seed and corpus give the same inputs.

/// xorshift64*: enough randomness for mutation, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Tokens that make text formats (JSON, TOML, fids, keys) go further than
/// random bytes do.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\"Key\"",
    b"\"Value\"",
    b"\"Service\"",
    b"\"ID\"",
    b"\"Checks\"",
    b"\"bq/",
    b"processes/",
    b"0x",
    b"0x7200000000000001:0x6",
    b"r|1:2",
    b"<",
    b">",
    b"|",
    b"\n",
    b"=",
    b"[consul]",
    b"[http]",
    b"[identity]",
    b"[limits]",
    b"bind = ",
    b"process_fid = ",
    b"\"127.0.0.1:8008\"",
    b"18446744073709551616",
    b"0xffffffffffffffff",
    b"eyJ9",
    b"====",
    b"m0conf/nodes/",
    b"/processes/",
    b"/services/",
    b"/sdevs/",
];

/// Values that sit on the edges of fixed-width fields.
const EDGES: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x3ff,
    0x400,
    0x401,
    0xffff,
    0x1_0000,
    0x1_0001,
    u32::MAX as u64,
    u64::MAX,
];

/// One random change of `input`; `other` is another corpus entry to splice.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let n = 1 + rng.below(4);
    for _ in 0..n {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next_u64() as u8;
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let k = 1 + rng.below((len - at).min(16));
                input.drain(at..at + k);
            }
            3 => {
                let at = rng.below(len + 1);
                let k = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let k = 1 + rng.below((len - at).min(64));
                let chunk = input[at..at + k].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            5 | 6 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, t.iter().copied());
            }
            7 if len > 0 => {
                let v = EDGES[rng.below(EDGES.len())];
                let w = [1usize, 2, 4, 8][rng.below(4)];
                let at = rng.below(len);
                let bytes = v.to_le_bytes();
                for (k, b) in bytes.iter().take(w).enumerate() {
                    if let Some(slot) = input.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            8 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next_u64() as u8);
            }
        }
    }
    input.truncate(max_len);
}

/// Runs `target` on every corpus entry, then on `runs` mutated inputs.
/// Returns how many inputs it ran. A panic is the target's: it propagates,
/// after the input that caused it is written to `crash_file` if given.
pub fn drive(
    target: fn(&[u8]),
    corpus: &[Vec<u8>],
    runs: u64,
    seed: u64,
    crash_file: Option<&std::path::Path>,
) -> u64 {
    let run_one = |input: &[u8]| {
        if let Some(path) = crash_file {
            let r = std::panic::catch_unwind(|| target(input));
            if let Err(e) = r {
                let _ = std::fs::write(path, input);
                std::panic::resume_unwind(e);
            }
        } else {
            target(input);
        }
    };
    let mut count = 0;
    for c in corpus {
        run_one(c);
        count += 1;
    }
    let seeds: Vec<Vec<u8>> = if corpus.is_empty() {
        vec![Vec::new()]
    } else {
        corpus.to_vec()
    };
    let mut rng = Rng::new(seed);
    let mut input = Vec::new();
    for i in 0..runs {
        // Mostly keep mutating the last input (short chains go deeper), now
        // and then start again from a seed.
        if i % 8 == 0 {
            input.clone_from(&seeds[rng.below(seeds.len())]);
        }
        let other = &seeds[rng.below(seeds.len())];
        mutate(&mut rng, &mut input, other, 1 << 16);
        run_one(&input);
        count += 1;
    }
    count
}

/// The files of `dir`, sorted by name (a missing directory is empty).
pub fn read_corpus(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}
