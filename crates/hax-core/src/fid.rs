//! Motr fids and 128-bit ids.

use std::fmt;
use std::str::FromStr;

/// A Motr object id (`struct m0_fid`). The top 8 bits of `container` hold the
/// object type (see [`FidType`]).
///
/// Text form (as in Consul keys and logs): `0x7200000000000001:0x3`, lowercase
/// hex without padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fid {
    /// Container, type in the top byte.
    pub container: u64,
    /// Key.
    pub key: u64,
}

const TYPE_SHIFT: u32 = 56;
const CONTAINER_MASK: u64 = (1 << TYPE_SHIFT) - 1;

impl Fid {
    /// A fid from its two halves.
    pub const fn new(container: u64, key: u64) -> Self {
        Fid { container, key }
    }

    /// `M0_FID_TINIT(t, c, k)`: a fid of type `t` (e.g. [`FidType::Process`]).
    pub const fn typed(t: FidType, container: u64, key: u64) -> Self {
        Fid {
            container: ((t as u64) << TYPE_SHIFT) | (container & CONTAINER_MASK),
            key,
        }
    }

    /// The type byte (the top 8 bits of the container).
    pub const fn type_id(&self) -> u8 {
        (self.container >> TYPE_SHIFT) as u8
    }

    /// The configuration object type, if the type byte names one.
    pub fn kind(&self) -> Option<FidType> {
        FidType::from_id(self.type_id())
    }

    /// Is this fid of type `t`?
    pub fn is(&self, t: FidType) -> bool {
        self.type_id() == t as u8
    }

    /// `M0_FID0`: both halves zero.
    pub const fn is_zero(&self) -> bool {
        self.container == 0 && self.key == 0
    }
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{:#x}", self.container, self.key)
    }
}

/// Why a fid text did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fid {input:?}: {reason}")]
pub struct FidParseError {
    /// The text given (cut to 64 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Fid {
    type Err = FidParseError;

    /// Accepts what Motr and Hare print and read: `0xC:0xK`, `C:K` (hex),
    /// `<C:K>`, and `T|C:K` with a type letter and decimal or `0x` numbers
    /// (the container then has no type bits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| FidParseError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let t = s.trim();
        let t = match (t.strip_prefix('<'), t.ends_with('>')) {
            (Some(inner), true) => &inner[..inner.len() - 1],
            (None, false) => t,
            _ => return Err(err("unbalanced angle brackets")),
        };
        if let Some((letter, rest)) = t.split_once('|') {
            let mut chars = letter.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(err("type must be one letter"));
            };
            let kind = FidType::from_letter(c).ok_or_else(|| err("unknown type letter"))?;
            let (c, k) = rest.split_once(':').ok_or_else(|| err("missing ':'"))?;
            let container = parse_c_number(c).ok_or_else(|| err("bad container number"))?;
            if container > CONTAINER_MASK {
                return Err(err("container overflows the 56 bits left by the type"));
            }
            let key = parse_c_number(k).ok_or_else(|| err("bad key number"))?;
            return Ok(Fid::typed(kind, container, key));
        }
        let (c, k) = t.split_once(':').ok_or_else(|| err("missing ':'"))?;
        let container = parse_hex(c).ok_or_else(|| err("container is not a 64-bit hex number"))?;
        let key = parse_hex(k).ok_or_else(|| err("key is not a 64-bit hex number"))?;
        Ok(Fid { container, key })
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// A number as C's `%i` reads it: decimal, or hex with `0x`.
fn parse_c_number(s: &str) -> Option<u64> {
    if s.starts_with("0x") || s.starts_with("0X") {
        parse_hex(s)
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Configuration object types: the type byte of a fid (`conf/obj.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum FidType {
    Root = b't',
    Dir = b'D',
    Profile = b'p',
    Pool = b'o',
    Pver = b'v',
    Objv = b'j',
    Node = b'n',
    Process = b'r',
    Service = b's',
    Sdev = b'd',
    Site = b'S',
    Rack = b'a',
    Enclosure = b'e',
    Controller = b'c',
    Drive = b'k',
    FdmiFltGrp = b'g',
    FdmiFilter = b'l',
}

impl FidType {
    /// Every type, in Motr's order.
    pub const ALL: [FidType; 17] = [
        FidType::Root,
        FidType::Dir,
        FidType::Profile,
        FidType::Pool,
        FidType::Pver,
        FidType::Objv,
        FidType::Node,
        FidType::Process,
        FidType::Service,
        FidType::Sdev,
        FidType::Site,
        FidType::Rack,
        FidType::Enclosure,
        FidType::Controller,
        FidType::Drive,
        FidType::FdmiFltGrp,
        FidType::FdmiFilter,
    ];

    /// The type for a type byte.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == id)
    }

    /// The type for a type letter.
    pub fn from_letter(c: char) -> Option<Self> {
        u8::try_from(c).ok().and_then(Self::from_id)
    }

    /// The type letter.
    pub fn letter(self) -> char {
        self as u8 as char
    }
}

/// `struct m0_uint128`. Printed as Motr prints it: `hi:lo` in hex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uint128 {
    /// High half.
    pub hi: u64,
    /// Low half.
    pub lo: u64,
}

impl Uint128 {
    /// A value from its halves.
    pub const fn new(hi: u64, lo: u64) -> Self {
        Uint128 { hi, lo }
    }
}

impl fmt::Display for Uint128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}:{:x}", self.hi, self.lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_hare() {
        let f = Fid::typed(FidType::Process, 1, 3);
        assert_eq!(f.to_string(), "0x7200000000000001:0x3");
        assert_eq!(Fid::new(0, 0).to_string(), "0x0:0x0");
        assert_eq!(Fid::new(0xABC, 0x15).to_string(), "0xabc:0x15");
    }

    #[test]
    fn parses_every_accepted_form() {
        let want = Fid::new(0x7200000000000001, 0x15);
        for s in [
            "0x7200000000000001:0x15",
            "7200000000000001:15",
            "<7200000000000001:15>",
            "<0x7200000000000001:0x15>",
            "r|1:21",
            "r|0x1:0x15",
            " 0X7200000000000001:0X15 ",
        ] {
            assert_eq!(s.parse::<Fid>(), Ok(want), "{s}");
        }
    }

    #[test]
    fn round_trips() {
        for f in [
            Fid::new(0, 0),
            Fid::new(u64::MAX, u64::MAX),
            Fid::typed(FidType::Sdev, 1, 0x40),
        ] {
            assert_eq!(f.to_string().parse::<Fid>(), Ok(f));
        }
    }

    #[test]
    fn rejects_bad_input() {
        for (s, reason) in [
            ("", "missing ':'"),
            ("0x1", "missing ':'"),
            ("0x:0x1", "container is not a 64-bit hex number"),
            ("0x1:", "key is not a 64-bit hex number"),
            ("0x1:0xg", "key is not a 64-bit hex number"),
            (
                "1ffffffffffffffff:1",
                "container is not a 64-bit hex number",
            ),
            ("<1:2", "unbalanced angle brackets"),
            ("x|1:2", "unknown type letter"),
            ("rr|1:2", "type must be one letter"),
            ("r|-1:2", "bad container number"),
            (
                "r|0x100000000000000:2",
                "container overflows the 56 bits left by the type",
            ),
            ("+1:2", "container is not a 64-bit hex number"),
        ] {
            let e = s.parse::<Fid>().expect_err(s);
            assert_eq!(e.reason, reason, "{s}");
        }
    }

    #[test]
    fn types() {
        let f: Fid = "0x6400000000000001:0x2".parse().unwrap();
        assert_eq!(f.kind(), Some(FidType::Sdev));
        assert!(f.is(FidType::Sdev));
        assert_eq!(Fid::new(0x0100000000000000, 0).kind(), None);
        for t in FidType::ALL {
            assert_eq!(FidType::from_letter(t.letter()), Some(t));
        }
        assert_eq!(Uint128::new(0, 0x1f).to_string(), "0:1f");
    }
}
