//! A ModelInferRequest's wire bytes as a plain request (`worker.convert.parse_infer_request`).
//!
//! Two steps, as the Python path has them:
//! 1. **Accept or refuse the bytes as protobuf would** (`wire`, upb's rules): every field is
//!    walked, strings checked for UTF-8, submessages entered, nothing kept but counts and the
//!    last model name, version and id. Refused bytes are INVALID_ARGUMENT with `_explain`'s
//!    reason.
//! 2. **Decode the tensors in order** (`_decode_tensor`), each found again by walking the
//!    body: the first bad one is the answer. Raw contents become slices of the body (no copy);
//!    typed contents are converted as `np.asarray(values, dtype)` converts them.
//!
//! Memory is bounded by what a valid request holds: shapes keep at most `MAX_DIMS + 1`
//! dimensions while counting the rest, no claimed length is allocated before it is checked
//! against the body, typed values are counted before any buffer is sized, and requested output
//! names are read from the body when asked for.

use bytes::Bytes;

use super::bignum::Natural;
use super::contents::{convert, count_values};
use super::datatype::Datatype;
use super::error::{CodecError, MAX_DIMS};
use super::explain::explain_request;
use super::wire::{Malformed, Reader, Result, Value};

/// A decoded input: `data` is the tensor's little-endian, row-major bytes
/// (`itemsize * prod(shape)` of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// A decoded ModelInferRequest (`worker.types.InferRequest`).
#[derive(Clone, Debug)]
pub struct InferRequest {
    pub model: String,
    /// `""` (route by policy), a version number or an alias, as sent.
    pub version: String,
    pub id: String,
    pub inputs: Vec<Tensor>,
    body: Bytes,
    n_outputs: u64,
}

impl InferRequest {
    /// The requested output names, in request order (none: every output).
    pub fn outputs(&self) -> impl Iterator<Item = &str> + '_ {
        Occurrences::new(&self.body, 6)
            .take(self.n_outputs as usize)
            .filter_map(|o| output_name(o).ok())
    }
}

/// Top-level counts and the last model name, version and id.
#[derive(Default)]
struct Layout {
    model: String,
    version: String,
    id: String,
    inputs: u64,
    outputs: u64,
    raw: u64,
}

/// Decodes and checks a ModelInferRequest (see the module docstring): INVALID_ARGUMENT with
/// the Python path's message for malformed bytes or tensors.
pub fn decode_infer_request(body: Bytes) -> std::result::Result<InferRequest, CodecError> {
    let malformed = |body: &Bytes| CodecError::Malformed {
        len: body.len(),
        why: explain_request(body),
    };
    let layout = layout(&body).map_err(|Malformed| malformed(&body))?;
    if layout.raw > 0 && layout.raw != layout.inputs {
        return Err(CodecError::RawCount {
            raw: layout.raw,
            inputs: layout.inputs,
        });
    }
    let mut inputs = Vec::new();
    let mut raws = Occurrences::new(&body, 7);
    for tensor in Occurrences::new(&body, 5).take(layout.inputs as usize) {
        let raw = if layout.raw > 0 { raws.next() } else { None };
        let fields = tensor
            .enter()
            .and_then(TensorFields::read)
            .map_err(|Malformed| malformed(&body))?;
        let raw = raw.map(|r| body.slice(r.range()));
        inputs.push(fields.decode(raw).map_err(|e| match e {
            Failure::Codec(e) => e,
            Failure::Wire(Malformed) => malformed(&body),
        })?);
    }
    Ok(InferRequest {
        model: layout.model,
        version: layout.version,
        id: layout.id,
        inputs,
        n_outputs: layout.outputs,
        body,
    })
}

/// Step 1: walks the whole request as upb would, keeping counts and the routing strings.
fn layout(body: &[u8]) -> Result<Layout> {
    let mut out = Layout::default();
    let mut r = Reader::new(body);
    while let Some((number, value)) = r.field()? {
        let Value::Delimited(sub) = value else {
            continue;
        };
        match number {
            1 => out.model = sub.utf8()?.to_owned(),
            2 => out.version = sub.utf8()?.to_owned(),
            3 => out.id = sub.utf8()?.to_owned(),
            4 => map_entry(sub.enter()?)?,
            5 => {
                TensorFields::read(sub.enter()?)?;
                out.inputs += 1;
            }
            6 => {
                output_name(sub.enter()?)?;
                out.outputs += 1;
            }
            7 => out.raw += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// A `map<string, InferParameter>` entry: key (1) must be UTF-8; the value (2) is checked.
fn map_entry(mut r: Reader<'_>) -> Result<()> {
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Value::Delimited(key)) => {
                key.utf8()?;
            }
            (2, Value::Delimited(param)) => {
                let mut p = param.enter()?;
                while let Some((n, v)) = p.field()? {
                    if let (3, Value::Delimited(s)) = (n, v) {
                        s.utf8()?; // string_param
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An InferRequestedOutputTensor: its name (the last one given), parameters checked.
fn output_name(mut r: Reader<'_>) -> Result<&str> {
    let mut name = "";
    while let Some((number, value)) = r.field()? {
        match (number, value) {
            (1, Value::Delimited(s)) => name = s.utf8()?,
            (2, Value::Delimited(entry)) => map_entry(entry.enter()?)?,
            _ => {}
        }
    }
    Ok(name)
}

/// Walks a message's fields, yielding each length-delimited occurrence of field `number` in
/// order. Used on bodies already accepted by `layout`, where no walk can fail.
struct Occurrences<'a> {
    reader: Reader<'a>,
    number: u32,
}

impl<'a> Occurrences<'a> {
    fn new(body: &'a [u8], number: u32) -> Occurrences<'a> {
        Occurrences {
            reader: Reader::new(body),
            number,
        }
    }
}

impl<'a> Iterator for Occurrences<'a> {
    type Item = Reader<'a>;

    fn next(&mut self) -> Option<Reader<'a>> {
        loop {
            match self.reader.field().ok()?? {
                (n, Value::Delimited(sub)) if n == self.number => return Some(sub),
                _ => {}
            }
        }
    }
}

/// What a tensor decode can fail with.
pub(super) enum Failure {
    Codec(CodecError),
    Wire(Malformed),
}

impl From<Malformed> for Failure {
    fn from(m: Malformed) -> Failure {
        Failure::Wire(m)
    }
}

impl From<CodecError> for Failure {
    fn from(e: CodecError) -> Failure {
        Failure::Codec(e)
    }
}

/// An InferInputTensor's fields (the last name and datatype; the shape's first
/// `MAX_DIMS + 1` dimensions and their count), checked as upb checks them.
struct TensorFields<'a> {
    message: Reader<'a>,
    name: &'a str,
    datatype: &'a str,
    shape: Vec<i64>,
    ndim: u64,
}

impl<'a> TensorFields<'a> {
    fn read(message: Reader<'a>) -> Result<TensorFields<'a>> {
        let mut t = TensorFields {
            message: message.clone(),
            name: "",
            datatype: "",
            shape: Vec::new(),
            ndim: 0,
        };
        let mut r = message;
        while let Some((number, value)) = r.field()? {
            match (number, value) {
                (1, Value::Delimited(s)) => t.name = s.utf8()?,
                (2, Value::Delimited(s)) => t.datatype = s.utf8()?,
                (3, Value::Varint(d)) => t.dim(d),
                (3, Value::Delimited(mut packed)) => {
                    while !packed.is_empty() {
                        let d = packed.varint()?;
                        t.dim(d);
                    }
                }
                (4, Value::Delimited(entry)) => map_entry(entry.enter()?)?,
                (5, Value::Delimited(contents)) => {
                    count_values(contents.enter()?, None)?;
                }
                _ => {}
            }
        }
        Ok(t)
    }

    fn dim(&mut self, d: u64) {
        if self.shape.len() <= MAX_DIMS {
            self.shape.push(d as i64); // int64 on the wire: two's complement
        }
        self.ndim += 1;
    }

    /// `_decode_tensor`: the checks in Python's order, then the data.
    fn decode(self, raw: Option<Bytes>) -> std::result::Result<Tensor, Failure> {
        let name = || self.name.to_owned();
        let Some(datatype) = Datatype::from_name(self.datatype) else {
            return Err(CodecError::UnsupportedDatatype {
                name: name(),
                datatype: self.datatype.to_owned(),
            }
            .into());
        };
        if self.ndim > MAX_DIMS as u64 {
            return Err(CodecError::TooManyDims {
                name: name(),
                ndim: self.ndim,
            }
            .into());
        }
        if self.shape.iter().any(|&d| d < 0) {
            return Err(CodecError::NegativeDimension {
                name: name(),
                shape: self.shape,
            }
            .into());
        }
        let count = Natural::product(self.shape.iter().map(|&d| d as u64));
        let data = match raw {
            Some(raw) => {
                let mut need = count;
                need.mul_u64(datatype.itemsize() as u64);
                if !need.equals(raw.len() as u64) {
                    return Err(CodecError::RawLength {
                        name: name(),
                        got: raw.len() as u64,
                        datatype,
                        shape: self.shape,
                        need,
                    }
                    .into());
                }
                self.check_fits(datatype)?;
                raw
            }
            None => {
                let field = datatype.contents_field();
                let got = match field {
                    Some(f) => self.contents().try_fold(0, |n, c| {
                        Ok::<u64, Malformed>(n + count_values(c?, Some(f))?)
                    })?,
                    None => 0,
                };
                if !count.equals(got) {
                    return Err(CodecError::ValueCount {
                        name: name(),
                        got,
                        datatype,
                        shape: self.shape,
                        need: count,
                    }
                    .into());
                }
                self.check_fits(datatype)?;
                let mut out = Vec::with_capacity(got as usize * datatype.itemsize());
                if let Some(f) = field {
                    let mut index = 0u64;
                    for c in self.contents() {
                        convert(c?, f, datatype, &mut out, &mut index, self.name)?;
                    }
                }
                Bytes::from(out)
            }
        };
        Ok(Tensor {
            name: name(),
            datatype,
            shape: self.shape,
            data,
        })
    }

    /// The tensor's `contents` submessages, in order (protobuf merges them into one).
    fn contents(&self) -> impl Iterator<Item = Result<Reader<'a>>> + '_ {
        let mut r = self.message.clone();
        std::iter::from_fn(move || loop {
            match r.field() {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some((5, Value::Delimited(c)))) => return Some(c.enter()),
                Ok(Some(_)) => {}
            }
        })
    }

    /// numpy refuses a shape whose item size times its non-zero dimensions exceeds
    /// 2^63 - 1 bytes, even when another dimension is 0 (a tensor of data can never reach
    /// it: its bytes are on the wire).
    fn check_fits(&self, datatype: Datatype) -> std::result::Result<(), CodecError> {
        let mut bytes = datatype.itemsize() as u128;
        for &d in &self.shape {
            if d != 0 {
                bytes = bytes.saturating_mul(d as u128);
            }
        }
        if bytes > i64::MAX as u128 {
            return Err(CodecError::TooLarge {
                name: self.name.to_owned(),
                datatype,
                shape: self.shape.clone(),
            });
        }
        Ok(())
    }
}
