//! JSON text byte-compatible with Python's `json.dumps` defaults, which the
//! other readers of the KV store (hare's scripts, other nodes) produce and
//! compare: `", "` and `": "` separators and non-ASCII escaped as `\uXXXX`.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

#[derive(Debug, Default)]
struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // `ensure_ascii=True`: every non-ASCII character as \uXXXX, using
        // surrogate pairs outside the BMP.
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // Python writes control characters other than \b\f\n\r\t as \u00XX.
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(w, "\\u{byte:04x}"),
            // serde_json has no other kinds today; keep its default form.
            #[allow(unreachable_patterns)]
            _ => return serde_json::ser::CompactFormatter.write_char_escape(w, escape),
        };
        w.write_all(s)
    }
}

/// Serialises `value` the way Python's `json.dumps(value)` would.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let mut ser = Serializer::with_formatter(&mut out, PyFormatter);
    value.serialize(&mut ser)?;
    // The formatter only ever writes ASCII.
    String::from_utf8(out).map_err(|e| serde_json::Error::io(io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_defaults() {
        let v = serde_json::json!({"a": [1, 2, {"b": null}], "c": "x"});
        assert_eq!(
            to_string(&v).expect("json"),
            r#"{"a": [1, 2, {"b": null}], "c": "x"}"#
        );
        assert_eq!(
            to_string("é😀\n\u{1}").expect("json"),
            r#""\u00e9\ud83d\ude00\n\u0001""#
        );
        assert_eq!(to_string(&Vec::<u8>::new()).expect("json"), "[]");
        assert_eq!(to_string(&serde_json::json!({})).expect("json"), "{}");
    }
}
