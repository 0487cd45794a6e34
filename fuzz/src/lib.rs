//! The properties every fuzz target checks, one function per target, shared
//! by the libFuzzer targets (`fuzz_targets/`, run with `cargo fuzz`), the
//! stable driver (`src/bin/drive.rs`) and the corpus replay test
//! (`tests/corpus.rs`).
//!
//! Each function takes arbitrary bytes and panics only when a property is
//! broken: a decoder panicked, accepted something its own encoder does not
//! give back byte for byte, or two implementations of the same format
//! disagree.

pub mod mutate;

use std::str::FromStr;

use hax_bin::cli::{Args, SETTINGS};
use hax_bin::config::Config;
use hax_consul::schema::{ConfKey, FidText, QueueKind, QueueMessage};
use hax_consul::server;
use hax_core::Fid;
use hax_sim::wire::{self, HaxFrame, PeerFrame};

/// A target: a name and the check it runs on one input.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by name.
pub const TARGETS: [Target; 5] = [
    ("consul_watch", consul_watch),
    ("sim_wire", sim_wire),
    ("emu_wire", emu_wire),
    ("fid", fid),
    ("config", config),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every decoder of Consul watch payloads on the same body, then what the
/// daemon does next with what they accept (BQ messages, configuration keys,
/// process states).
pub fn consul_watch(data: &[u8]) {
    let key = server::decode_key_payload(data);
    if let Ok(Some(pair)) = &key {
        let _ = ConfKey::parse(&pair.key);
    }
    let prefix = server::decode_keyprefix_payload(data);
    if let Ok(pairs) = &prefix {
        for p in pairs {
            let _ = ConfKey::parse(&p.key);
        }
    }
    // The BQ route reads the same shape as a key prefix and only skips keys.
    let bq = server::decode_bq_payload(data);
    assert_eq!(
        bq.is_ok(),
        prefix.is_ok(),
        "the BQ route and the keyprefix route disagree: {bq:?} / {prefix:?}"
    );
    if let (Ok(entries), Ok(pairs)) = (&bq, &prefix) {
        let entry_keys = pairs
            .iter()
            .filter(|p| QueueKind::Broadcast.parse_entry_key(&p.key).is_some())
            .count();
        assert!(entries.len() <= entry_keys, "{entries:?} from {pairs:?}");
        for w in entries.windows(2) {
            assert!(
                w[0].epoch <= w[1].epoch,
                "entries out of order: {entries:?}"
            );
        }
        for p in pairs {
            if let Ok(m) = QueueMessage::decode(&p.key, &p.value) {
                let _ = m.broadcast(&p.key);
                // What decodes encodes again, and means the same.
                let text = m.encode(&p.key).expect("a decoded message encodes");
                let again = QueueMessage::decode(&p.key, text.as_bytes())
                    .expect("an encoded message decodes");
                assert_eq!(again, m, "BQ message round trip of {:?}", p.value);
            }
        }
    }
    let _ = server::decode_service_payload(data);
    let hax = server::decode_hax_service_payload(data);
    if hax.is_ok() {
        assert!(server::decode_service_payload(data).is_ok());
    }
    let _ = server::decode_checks_payload(data);
    let processes = server::decode_processes_payload(data);
    if processes.is_ok() {
        assert!(
            matches!(key, Ok(Some(_))),
            "processes accepted what the key decoder refuses"
        );
    }
}

/// Frames as the simulated peers and hax read them: split off a stream,
/// decoded in both directions, and what decodes encodes to the same bytes.
pub fn sim_wire(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = wire::split_frame(rest) {
        assert!(used > frame.len() && used <= rest.len());
        if let Ok(f) = PeerFrame::decode(frame) {
            let mut out = Vec::new();
            f.encode(&mut out).expect("a decoded peer frame encodes");
            assert_eq!(
                &out[wire::HEADER_LEN..],
                frame,
                "peer {} frame is not canonical",
                f.name()
            );
        }
        if let Ok(f) = HaxFrame::decode(frame) {
            let mut out = Vec::new();
            f.encode(&mut out).expect("a decoded hax frame encodes");
            assert_eq!(
                &out[wire::HEADER_LEN..],
                frame,
                "hax {} frame is not canonical",
                f.name()
            );
        }
        rest = &rest[used..];
    }
    // The whole input as one frame body, whatever its length header says.
    let _ = PeerFrame::decode(data);
    let _ = HaxFrame::decode(data);
}

/// The C emulator's message codec (`csrc/emu_wire.c`) against the Rust one
/// of `hax-sim`: a message the Rust decoder accepts the C check accepts, and
/// what the C check accepts decodes and encodes back to the same bytes.
pub fn emu_wire(data: &[u8]) {
    let c_ok = emu::check(data).is_none();
    let mut frame = vec![wire::frame_type::PEER_MSG];
    frame.extend_from_slice(&[0u8; 16]);
    frame.extend_from_slice(data);
    if let Ok(PeerFrame::Msg { msg, .. }) = PeerFrame::decode(&frame) {
        assert!(
            c_ok,
            "the emulator refuses a message hax-sim accepts ({:?}): {:?}",
            emu::check(data),
            msg
        );
    }
    if c_ok {
        let back = emu::decode_encode(data);
        assert_eq!(
            back, data,
            "the emulator's decode/encode is not the identity"
        );
    }
}

/// The C emulator's codec, called directly.
mod emu {
    use std::ffi::{c_char, CStr};

    use hax_sys::hax_msg;

    extern "C" {
        fn emu_msg_check(p: *const u8, n: usize) -> *const c_char;
        fn emu_msg_decode(p: *const u8, n: usize, m: *mut hax_msg, dirty: *mut u32);
        fn emu_msg_size(m: *const hax_msg) -> usize;
        fn emu_msg_encode(m: *const hax_msg, out: *mut u8);
    }

    /// Why the emulator refuses `data` as a message, if it does.
    pub fn check(data: &[u8]) -> Option<String> {
        // SAFETY: emu_msg_check reads at most `n` bytes from `p`, and
        // returns NULL or a static string.
        let why = unsafe { emu_msg_check(data.as_ptr(), data.len()) };
        if why.is_null() {
            None
        } else {
            // SAFETY: a non-NULL answer is a static NUL-terminated string.
            Some(
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }

    /// Decodes `data` (which the check accepted) and encodes it again.
    pub fn decode_encode(data: &[u8]) -> Vec<u8> {
        // SAFETY: hax_msg is plain old data: all zero bytes is a valid value.
        let mut m: Box<hax_msg> = Box::new(unsafe { std::mem::zeroed() });
        let mut dirty = 0u32;
        // SAFETY: the check accepted `data`, which is what decode requires;
        // `m` and `dirty` are valid for writes.
        unsafe { emu_msg_decode(data.as_ptr(), data.len(), &mut *m, &mut dirty) };
        // SAFETY: `m` is a decoded message.
        let n = unsafe { emu_msg_size(&*m) };
        assert!(n > 0, "a decoded message has no size");
        let mut out = vec![0u8; n];
        // SAFETY: `out` holds exactly emu_msg_size(m) bytes.
        unsafe { emu_msg_encode(&*m, out.as_mut_ptr()) };
        out
    }
}

/// Fid texts: both parsers never panic, and what parses prints as text that
/// parses to the same fid.
pub fn fid(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Fid::from_str(text) {
        let shown = f.to_string();
        assert_eq!(Fid::from_str(&shown), Ok(f), "{text:?} shown as {shown:?}");
        assert_eq!(
            FidText::parse(&shown).ok(),
            Some(FidText::new(f.container, f.key))
        );
    }
    if let Ok(f) = FidText::parse(text) {
        let shown = f.to_string();
        assert_eq!(
            FidText::parse(&shown).ok(),
            Some(f),
            "{text:?} shown as {shown:?}"
        );
        assert_eq!(Fid::from_str(&shown), Ok(Fid::new(f.container(), f.key())));
    }
    let _ = ConfKey::parse(text);
    let _ = QueueKind::Broadcast.parse_entry_key(text);
}

/// The configuration file: parsing and validation answer an error, never
/// panic, and a valid configuration written as TOML (`--check-config`) reads
/// back the same; option and environment values go through the same checks.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::from_toml(text) {
        let _ = format!("{c:?}");
        if c.validate().is_ok() {
            let shown = c.to_toml().expect("a valid configuration is written");
            assert_eq!(Config::from_toml(&shown).as_ref(), Ok(&c), "{shown}");
        }
    }
    // The same text as every option's value.
    let argv = std::iter::once("hax".to_owned())
        .chain(SETTINGS.iter().map(|s| format!("--{}={text}", s.flag())));
    if let Ok(args) = Args::try_from_args(argv) {
        let _ = args.config();
    }
}
