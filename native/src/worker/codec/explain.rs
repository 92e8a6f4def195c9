//! Why a ModelInferRequest was refused, in the words of `worker.convert._explain`: the first
//! bad string field or structural fault found by a lenient walk of the bytes (it is not upb's
//! reason, which upb does not give; it is the Python path's message, kept exactly).
//!
//! The walk reads varints of up to 10 bytes as unbounded integers (field numbers and lengths
//! print as Python prints them, up to 70 bits: `u128`), looks into the string fields and the
//! nested messages of [`REQUEST`] only, and stops at the first fault.

/// A field the walk looks at: a string, or a nested message with the fields it looks at.
enum Spec {
    Str(&'static str),
    Msg(&'static str, &'static [(u128, Spec)]),
}

const PARAMS: &[(u128, Spec)] = &[(1, Spec::Str("key"))];

/// `convert._REQUEST_STRINGS`.
const REQUEST: &[(u128, Spec)] = &[
    (1, Spec::Str("model_name")),
    (2, Spec::Str("model_version")),
    (3, Spec::Str("id")),
    (4, Spec::Msg("parameters", PARAMS)),
    (
        5,
        Spec::Msg(
            "inputs",
            &[
                (1, Spec::Str("name")),
                (2, Spec::Str("datatype")),
                (4, Spec::Msg("parameters", PARAMS)),
            ],
        ),
    ),
    (
        6,
        Spec::Msg(
            "outputs",
            &[(1, Spec::Str("name")), (2, Spec::Msg("parameters", PARAMS))],
        ),
    ),
];

/// The reason `parse_infer_request` gives for bytes protobuf refused: `_explain`'s text, or
/// `not a valid protobuf encoding` when the walk finds nothing.
pub fn explain_request(buf: &[u8]) -> String {
    explain(buf, REQUEST, "").unwrap_or_else(|| "not a valid protobuf encoding".into())
}

/// `_varint`: (value, next index), or `Err` (a truncated varint) past the end or the 10th byte.
fn varint(buf: &[u8], mut i: usize) -> Result<(u128, usize), ()> {
    let mut value = 0u128;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(i) else {
            return Err(());
        };
        if shift > 63 {
            return Err(());
        }
        i += 1;
        value |= u128::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok((value, i));
        }
        shift += 7;
    }
}

/// `_explain(buf, schema, where)`: `None` where Python returns `""`.
fn explain(buf: &[u8], schema: &[(u128, Spec)], place: &str) -> Option<String> {
    let bare = place.trim_start_matches('.');
    let mut i = 0usize;
    while i < buf.len() {
        let Ok((key, next)) = varint(buf, i) else {
            return Some(truncated(i, bare));
        };
        i = next;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => match varint(buf, i) {
                Ok((_, next)) => i = next,
                Err(()) => return Some(truncated(i, bare)),
            },
            1 => i += 8,
            5 => i += 4,
            2 => {
                let Ok((n, next)) = varint(buf, i) else {
                    return Some(truncated(i, bare));
                };
                i = next;
                let remain = buf.len() - i;
                if n > remain as u128 {
                    return Some(format!(
                        "field {field}{place} claims {n} bytes but only {remain} remain"
                    ));
                }
                let chunk = buf.get(i..i + n as usize).unwrap_or_default();
                i += n as usize;
                match schema.iter().find(|(number, _)| *number == field) {
                    Some((_, Spec::Str(name))) if std::str::from_utf8(chunk).is_err() => {
                        let dot = if place.is_empty() { "" } else { "." };
                        return Some(format!("{bare}{dot}{name} is not valid UTF-8"));
                    }
                    Some((_, Spec::Msg(name, fields))) => {
                        if let Some(inner) = explain(chunk, fields, &format!("{place}.{name}")) {
                            return Some(inner);
                        }
                    }
                    _ => {}
                }
            }
            _ => {
                return Some(format!(
                    "field {field}{place} has an unsupported wire type {wire}"
                ))
            }
        }
        if i > buf.len() {
            return Some(format!("field {field}{place} is truncated"));
        }
    }
    None
}

fn truncated(at: usize, bare: &str) -> String {
    if bare.is_empty() {
        format!("a truncated varint at byte {at}")
    } else {
        format!("a truncated varint at byte {at} in {bare}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_fault_as_python_does() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x0a\x04\xff\xfe/m", "model_name is not valid UTF-8"),
            (
                b"\x2a\x05\x0a\x03\xff\xff\xff",
                "inputs.name is not valid UTF-8",
            ),
            (
                b"\x2a\x04\x22\x02\x0a\x7f",
                "field 1.inputs.parameters claims 127 bytes but only 0 remain",
            ),
            (
                b"\x2a\x04\x22\x02\x0a\x80",
                "a truncated varint at byte 1 in inputs.parameters",
            ),
            (
                b"\x32\x04\x12\x02\x0a\x7f",
                "field 1.outputs.parameters claims 127 bytes but only 0 remain",
            ),
            (
                b"\x2a\x06\x22\x04\x0a\x02\xc3\x28",
                "inputs.parameters.key is not valid UTF-8",
            ),
            (
                b"\x22\x02\x0a\xc3",
                "a truncated varint at byte 1 in parameters",
            ),
            (b"\x0a\x05ab", "field 1 claims 5 bytes but only 2 remain"),
            (b"\x08\x80", "a truncated varint at byte 1"),
            (
                b"\x2a\x02\x08\x80",
                "a truncated varint at byte 1 in inputs",
            ),
            (b"\x0b", "field 1 has an unsupported wire type 3"),
            (b"\x0f", "field 1 has an unsupported wire type 7"),
            (b"\x09\x01\x02", "field 1 is truncated"),
            (b"\x3a\x01\xff", "not a valid protobuf encoding"),
            (b"", "not a valid protobuf encoding"),
        ];
        for (buf, want) in cases {
            assert_eq!(explain_request(buf), *want, "{buf:?}");
        }
    }

    #[test]
    fn huge_varints_print_whole() {
        // A 10-byte key: field numbers past 64 bits print as Python's ints do.
        let mut buf = vec![0xffu8; 9];
        buf.push(0x7f);
        let key = (1u128 << 70) - 1;
        assert_eq!(
            explain_request(&buf),
            format!("field {} has an unsupported wire type 7", key >> 3)
        );
        // An 11th byte is a truncated varint.
        let mut long = vec![0x80u8; 10];
        long.push(0x00);
        assert_eq!(explain_request(&long), "a truncated varint at byte 0");
    }
}
