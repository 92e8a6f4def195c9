//! Typed tensor contents (`InferTensorContents`): counted, then converted to the tensor's
//! bytes as `np.asarray(values, dtype)` converts the values Python's protobuf hands it.
//!
//! Each repeated field may arrive packed or one value per tag, and in several `contents`
//! submessages (protobuf merges them: values concatenate in order). A value is what upb
//! stores: `int32`/`uint32` keep the varint's low 32 bits, `bool` is "non-zero". Python sees
//! an `fp32` value as a double, so numpy's float32 gets a NaN back with its quiet bit set.
//! Values a narrow datatype cannot hold (300 for INT8) are refused by name and position.

use super::datatype::{ContentsField, Datatype};
use super::decode::Failure;
use super::error::CodecError;
use super::wire::{Malformed, Reader, Result, Value};

/// One value of a contents field, as its wire bits.
#[derive(Clone, Copy)]
enum Raw {
    Varint(u64),
    Bits32(u32),
    Bits64(u64),
}

/// Walks one `contents` submessage, checking it as upb does, and calls `each` with every value
/// of `field` in order.
fn walk(
    mut r: Reader<'_>,
    field: Option<ContentsField>,
    mut each: impl FnMut(Raw) -> std::result::Result<(), Failure>,
) -> std::result::Result<(), Failure> {
    let wanted = |n: u32| field.is_some_and(|f| f as u32 == n);
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1..=5, Value::Varint(v)) if wanted(number) => each(Raw::Varint(v))?,
            (1..=5, Value::Delimited(mut packed)) => {
                if wanted(number) {
                    while !packed.is_empty() {
                        each(Raw::Varint(packed.varint()?))?;
                    }
                } else {
                    packed.packed_varints()?;
                }
            }
            (6, Value::Fixed32(bits)) if wanted(6) => each(Raw::Bits32(bits))?,
            (6, Value::Delimited(mut packed)) => {
                if packed.len() % 4 != 0 {
                    return Err(Malformed.into());
                }
                if wanted(6) {
                    while !packed.is_empty() {
                        each(Raw::Bits32(packed.fixed32()?))?;
                    }
                }
            }
            (7, Value::Fixed64(bits)) if wanted(7) => each(Raw::Bits64(bits))?,
            (7, Value::Delimited(mut packed)) => {
                if packed.len() % 8 != 0 {
                    return Err(Malformed.into());
                }
                if wanted(7) {
                    while !packed.is_empty() {
                        each(Raw::Bits64(packed.fixed64()?))?;
                    }
                }
            }
            _ => {} // bytes_contents, unknown fields, and known ones with another wire type
        }
    }
    Ok(())
}

/// Checks one `contents` submessage and counts the values of `field` in it (0 for `None`).
pub fn count_values(r: Reader<'_>, field: Option<ContentsField>) -> Result<u64> {
    let mut n = 0u64;
    match walk(r, field, |_| {
        n += 1;
        Ok(())
    }) {
        Ok(()) => Ok(n),
        Err(_) => Err(Malformed),
    }
}

/// Appends the values of `field` in one `contents` submessage to `out` as `datatype`'s
/// little-endian bytes. `index` counts values across submessages (for the message naming one
/// that is out of range); `name` is the tensor's.
pub fn convert(
    r: Reader<'_>,
    field: ContentsField,
    datatype: Datatype,
    out: &mut Vec<u8>,
    index: &mut u64,
    name: &str,
) -> std::result::Result<(), Failure> {
    let range = datatype.narrow_range();
    walk(r, Some(field), |raw| {
        let i = *index;
        *index += 1;
        match (raw, datatype) {
            (Raw::Varint(v), Datatype::Bool) => out.push(u8::from(v != 0)),
            (Raw::Varint(v), Datatype::Int64 | Datatype::Uint64) => {
                out.extend_from_slice(&v.to_le_bytes())
            }
            (Raw::Varint(v), Datatype::Int32 | Datatype::Uint32) => {
                out.extend_from_slice(&(v as u32).to_le_bytes())
            }
            (Raw::Varint(v), _) => {
                // INT8 / INT16 from int32 values, UINT8 / UINT16 from uint32 values.
                let value = if field == ContentsField::Int {
                    i64::from(v as u32 as i32)
                } else {
                    i64::from(v as u32)
                };
                let (lo, hi) = range.unwrap_or((i64::MIN, i64::MAX));
                if value < lo || value > hi {
                    return Err(CodecError::OutOfRange {
                        name: name.to_owned(),
                        field,
                        index: i,
                        value,
                        datatype,
                    }
                    .into());
                }
                let le = value.to_le_bytes();
                out.extend_from_slice(&le[..datatype.itemsize()]);
            }
            (Raw::Bits32(bits), _) => {
                let quiet = if f32::from_bits(bits).is_nan() {
                    bits | 0x0040_0000
                } else {
                    bits
                };
                out.extend_from_slice(&quiet.to_le_bytes());
            }
            (Raw::Bits64(bits), _) => out.extend_from_slice(&bits.to_le_bytes()),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(
        buf: &[u8],
        field: ContentsField,
        datatype: Datatype,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut out = vec![];
        let mut index = 0;
        convert(Reader::new(buf), field, datatype, &mut out, &mut index, "x").map_err(
            |e| match e {
                Failure::Codec(e) => e.to_string(),
                Failure::Wire(_) => "malformed".into(),
            },
        )?;
        Ok(out)
    }

    #[test]
    fn packed_and_unpacked_values_concatenate() {
        // int_contents: 1 (unpacked), then packed [2, -1], then 3.
        let mut buf = vec![0x10, 0x01, 0x12, 0x0b, 0x02];
        buf.extend([0xff; 9]);
        buf.push(0x01);
        buf.extend([0x10, 0x03]);
        assert_eq!(
            count_values(Reader::new(&buf), Some(ContentsField::Int)),
            Ok(4)
        );
        let want: Vec<u8> = [1i32, 2, -1, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(all(&buf, ContentsField::Int, Datatype::Int32), Ok(want));
        assert_eq!(
            count_values(Reader::new(&buf), Some(ContentsField::Int64)),
            Ok(0)
        );
    }

    #[test]
    fn narrow_values_out_of_range_are_named() {
        let buf = [0x10, 0x05, 0x10, 0xac, 0x02]; // int_contents 5, 300
        assert_eq!(
            all(&buf, ContentsField::Int, Datatype::Int8),
            Err("input 'x': int_contents[1] = 300 is out of range for INT8 [-128, 127]".into())
        );
        assert_eq!(
            all(&buf, ContentsField::Int, Datatype::Int16),
            Ok(vec![5, 0, 44, 1])
        );
        // -1 as uint32 is 4294967295: out of range for UINT16.
        let neg = [0x20, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(
            all(&neg, ContentsField::Uint, Datatype::Uint16),
            Err(
                "input 'x': uint_contents[0] = 4294967295 is out of range for UINT16 [0, 65535]"
                    .into()
            )
        );
    }

    #[test]
    fn floats_keep_their_bits_and_nans_turn_quiet() {
        let mut buf = vec![0x35];
        buf.extend(0x7f80_0001u32.to_le_bytes()); // a signalling NaN
        buf.extend([0x32, 0x04]);
        buf.extend(1.5f32.to_le_bytes());
        let out = all(&buf, ContentsField::Fp32, Datatype::Fp32).expect("valid");
        assert_eq!(out[..4], 0x7fc0_0001u32.to_le_bytes());
        assert_eq!(out[4..], 1.5f32.to_le_bytes());
        // A packed float field that is not whole floats is malformed.
        assert_eq!(
            count_values(Reader::new(&[0x32, 0x03, 0, 0, 0]), None),
            Err(Malformed)
        );
        assert_eq!(
            count_values(Reader::new(&[0x3a, 0x04, 0, 0, 0, 0]), None),
            Err(Malformed)
        );
    }

    #[test]
    fn other_wire_types_are_unknown_fields() {
        // bool_contents as fixed32, fp32_contents as a varint: skipped, not counted.
        let buf = [0x0d, 1, 0, 0, 0, 0x30, 0x01];
        assert_eq!(
            count_values(Reader::new(&buf), Some(ContentsField::Bool)),
            Ok(0)
        );
        assert_eq!(
            count_values(Reader::new(&buf), Some(ContentsField::Fp32)),
            Ok(0)
        );
        let bools = [0x08, 0x02, 0x0a, 0x02, 0x00, 0x05];
        assert_eq!(
            all(&bools, ContentsField::Bool, Datatype::Bool),
            Ok(vec![1, 0, 1])
        );
    }
}
