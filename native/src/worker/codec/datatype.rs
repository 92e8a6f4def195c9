//! The V2 datatypes the worker accepts (`shoal.artifacts.DTYPES`), with numpy's item sizes and
//! the typed-contents field that carries each.

use std::fmt;

/// A V2 tensor datatype the worker accepts. `BYTES` is not one: tree and ONNX models take
/// numbers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
}

/// A repeated field of `InferTensorContents` (its field number is the discriminant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentsField {
    Bool = 1,
    Int = 2,
    Int64 = 3,
    Uint = 4,
    Uint64 = 5,
    Fp32 = 6,
    Fp64 = 7,
}

impl ContentsField {
    /// The field's name in the proto (what messages call it).
    pub fn name(self) -> &'static str {
        match self {
            ContentsField::Bool => "bool_contents",
            ContentsField::Int => "int_contents",
            ContentsField::Int64 => "int64_contents",
            ContentsField::Uint => "uint_contents",
            ContentsField::Uint64 => "uint64_contents",
            ContentsField::Fp32 => "fp32_contents",
            ContentsField::Fp64 => "fp64_contents",
        }
    }
}

impl Datatype {
    /// Every datatype, in the order of `DTYPES` (the order the unsupported-datatype message
    /// lists them in).
    pub const ALL: [Datatype; 12] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
    ];

    /// The datatype a V2 name stands for (exact, case-sensitive, as `DTYPES.get`).
    pub fn from_name(name: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
        }
    }

    /// numpy's `itemsize` of the datatype.
    pub fn itemsize(self) -> usize {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        }
    }

    /// The typed-contents field carrying this datatype (`convert._CONTENTS_FIELD`); FP16 has
    /// none, so its contents are always empty.
    pub fn contents_field(self) -> Option<ContentsField> {
        Some(match self {
            Datatype::Bool => ContentsField::Bool,
            Datatype::Int8 | Datatype::Int16 | Datatype::Int32 => ContentsField::Int,
            Datatype::Int64 => ContentsField::Int64,
            Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 => ContentsField::Uint,
            Datatype::Uint64 => ContentsField::Uint64,
            Datatype::Fp32 => ContentsField::Fp32,
            Datatype::Fp64 => ContentsField::Fp64,
            Datatype::Fp16 => return None,
        })
    }

    /// The closed range of values an integer datatype holds, for the fields whose values may
    /// not fit (INT8 and INT16 from `int_contents`, UINT8 and UINT16 from `uint_contents`).
    pub fn narrow_range(self) -> Option<(i64, i64)> {
        match self {
            Datatype::Int8 => Some((i8::MIN.into(), i8::MAX.into())),
            Datatype::Int16 => Some((i16::MIN.into(), i16::MAX.into())),
            Datatype::Uint8 => Some((0, u8::MAX.into())),
            Datatype::Uint16 => Some((0, u16::MAX.into())),
            _ => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::from_name(d.name()), Some(d));
        }
        assert_eq!(Datatype::from_name("fp32"), None);
        assert_eq!(Datatype::from_name("BYTES"), None);
        let sizes: Vec<usize> = Datatype::ALL.iter().map(|d| d.itemsize()).collect();
        assert_eq!(sizes, [1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8]);
        assert_eq!(Datatype::Fp16.contents_field(), None);
        assert_eq!(Datatype::Int16.narrow_range(), Some((-32768, 32767)));
    }
}
