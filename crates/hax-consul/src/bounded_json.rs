//! JSON decoding whose memory is bounded by an allowance, whatever the input.
//!
//! A body's size does not bound what it decodes into: `[[],[],...]` takes 3
//! bytes per element of the body and 32 bytes per `serde_json::Value`, and a
//! list of `{"Key":""}` becomes a 104-byte `KvPair` per 11 bytes. A 15 MiB
//! watch body took 250 MiB to decode. [`from_slice`] decodes in one pass
//! (no intermediate `Value`) and charges, as it goes, what the decoded value
//! will hold: the size of every element of a sequence and every entry of a
//! map, and the length of every string. Past the allowance it stops with
//! [`Error::TooLarge`], before the memory is taken.
//!
//! Fields of a struct are not charged (they are inside the struct, which its
//! parent charged), and ignored fields ([`serde::de::IgnoredAny`]) cost
//! nothing. Growth slack (a `Vec` doubles) is not charged: what is held is at
//! most a few times what is charged (`tests/decode_memory.rs` measures it).

use std::cell::Cell;
use std::fmt;
use std::mem::size_of;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde::Deserialize;

/// Why a body was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the body decodes into would hold more than the allowance.
    #[error("the payload decodes to more than {allowance} bytes")]
    TooLarge {
        /// The allowance, in bytes.
        allowance: usize,
    },
    /// Not JSON, or not of the expected shape (see
    /// [`serde_json::Error::classify`]).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Decodes `body` as a `T`, refusing it when the decoded value would hold
/// more than `allowance` bytes (estimated as the module says).
pub fn from_slice<'de, T: Deserialize<'de>>(body: &'de [u8], allowance: usize) -> Result<T, Error> {
    Allowance::new(allowance).from_slice(body)
}

/// An allowance that several decodes draw from, for what they build
/// together.
#[derive(Debug)]
pub struct Allowance {
    total: usize,
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Allowance {
    /// `bytes` to decode into.
    pub fn new(bytes: usize) -> Self {
        Allowance {
            total: bytes,
            left: Cell::new(bytes),
            exceeded: Cell::new(false),
        }
    }

    /// What the decodes so far were charged.
    pub fn used(&self) -> usize {
        self.total - self.left.get()
    }

    /// [`from_slice`] within what is left; what it builds is charged even
    /// when it fails.
    pub fn from_slice<'de, T: Deserialize<'de>>(&self, body: &'de [u8]) -> Result<T, Error> {
        let mut json = serde_json::Deserializer::from_slice(body);
        let decoded = T::deserialize(Metered {
            de: &mut json,
            meter: self,
        })
        .and_then(|v| json.end().map(|()| v));
        match decoded {
            Ok(v) => Ok(v),
            Err(_) if self.exceeded.get() => Err(Error::TooLarge {
                allowance: self.total,
            }),
            Err(e) => Err(Error::Json(e)),
        }
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("payload too large once decoded"))
            }
        }
    }
}

/// Elements a `Vec` allocates room for at its first push (of elements up to
/// 1 KiB): one element costs four.
const VEC_FIRST_CAPACITY: usize = 4;

/// Entries of a B-tree node (`BTreeMap`, `serde_json::Map`): a map's first
/// entry costs a whole node.
const MAP_NODE_ENTRIES: usize = 11;

/// Entries a map gains per node once it splits: a node splits in two, and
/// entries inserted in order leave the nodes behind them half full.
const MAP_NODE_GROWTH: usize = 5;

/// A node's header (parent link, position, length).
const MAP_NODE_OVERHEAD: usize = 2 * size_of::<usize>();

/// A deserializer that charges the meter for what its visitors build.
struct Metered<'m, D> {
    de: D,
    meter: &'m Allowance,
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.de.$method(MeteredVisitor { visitor, meter: self.meter, inline: false })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Metered<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_option deserialize_unit
        deserialize_seq deserialize_map
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // A field or variant name, matched and not kept.
        self.de.deserialize_identifier(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_unit_struct(
            name,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: false,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_newtype_struct(
            name,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: false,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // A tuple's elements are inside it, as a struct's fields are.
        self.de.deserialize_tuple(
            len,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_tuple_struct(
            name,
            len,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_struct(
            name,
            fields,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.de.deserialize_enum(
            name,
            variants,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // Skipped without being built: nothing to charge.
        self.de.deserialize_ignored_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A seed whose deserializer is metered.
struct MeteredSeed<'m, S> {
    seed: S,
    meter: &'m Allowance,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for MeteredSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Metered {
            de,
            meter: self.meter,
        })
    }
}

/// A visitor that charges for strings and meters the sequences and maps it
/// is given. `inline`: the elements or entries are a struct's fields.
struct MeteredVisitor<'m, V> {
    visitor: V,
    meter: &'m Allowance,
    inline: bool,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MeteredVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) visit_char(char)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64)
    }

    // Strings are charged whether or not the visitor copies them: a field
    // borrowed here may be copied later.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.meter.charge::<E>(v.len())?;
        self.visitor.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Metered {
            de,
            meter: self.meter,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Metered {
            de,
            meter: self.meter,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(MeteredSeq {
            seq,
            meter: self.meter,
            inline: self.inline,
            len: 0,
            capacity: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(MeteredMap {
            map,
            meter: self.meter,
            inline: self.inline,
            len: 0,
            capacity: 0,
            value_slots: 0,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(MeteredEnum {
            data,
            meter: self.meter,
        })
    }
}

/// A sequence decoded into a `Vec`, whose growth is charged as it
/// happens: every allocation in full, the ones it replaces never given
/// back, so that what is charged (twice the capacity at most) covers the
/// moment the `Vec` holds its old and its new room at once.
struct MeteredSeq<'m, A> {
    seq: A,
    meter: &'m Allowance,
    inline: bool,
    len: usize,
    capacity: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for MeteredSeq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let element = self.seq.next_element_seed(MeteredSeed {
            seed,
            meter: self.meter,
        })?;
        // Charged once it exists: the end of a sequence costs nothing.
        if element.is_some() && !self.inline {
            self.len += 1;
            if self.len > self.capacity {
                self.capacity = (self.capacity * 2).max(VEC_FIRST_CAPACITY);
                self.meter
                    .charge::<A::Error>(self.capacity.saturating_mul(size_of::<T::Value>()))?;
            }
        }
        Ok(element)
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct MeteredMap<'m, A> {
    map: A,
    meter: &'m Allowance,
    inline: bool,
    len: usize,
    capacity: usize,
    /// Slots of the node the last key opened, to charge for its values.
    value_slots: usize,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for MeteredMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let key = self.map.next_key_seed(MeteredSeed {
            seed,
            meter: self.meter,
        })?;
        if key.is_some() && !self.inline {
            self.len += 1;
            self.value_slots = 0;
            if self.len > self.capacity {
                self.capacity = if self.capacity == 0 {
                    MAP_NODE_ENTRIES
                } else {
                    self.capacity + MAP_NODE_GROWTH
                };
                self.value_slots = MAP_NODE_ENTRIES;
                self.meter.charge::<A::Error>(
                    MAP_NODE_ENTRIES * size_of::<K::Value>() + MAP_NODE_OVERHEAD,
                )?;
            }
        }
        Ok(key)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let value = self.map.next_value_seed(MeteredSeed {
            seed,
            meter: self.meter,
        })?;
        if !self.inline {
            self.meter
                .charge::<A::Error>(self.value_slots * size_of::<T::Value>())?;
        }
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct MeteredEnum<'m, A> {
    data: A,
    meter: &'m Allowance,
}

impl<'m, 'de, A: EnumAccess<'de>> EnumAccess<'de> for MeteredEnum<'m, A> {
    type Error = A::Error;
    type Variant = MeteredVariant<'m, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (v, variant) = self.data.variant_seed(MeteredSeed {
            seed,
            meter: self.meter,
        })?;
        Ok((
            v,
            MeteredVariant {
                variant,
                meter: self.meter,
            },
        ))
    }
}

struct MeteredVariant<'m, A> {
    variant: A,
    meter: &'m Allowance,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for MeteredVariant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.variant.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.variant.newtype_variant_seed(MeteredSeed {
            seed,
            meter: self.meter,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.variant.tuple_variant(
            len,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.variant.struct_variant(
            fields,
            MeteredVisitor {
                visitor,
                meter: self.meter,
                inline: true,
            },
        )
    }
}
