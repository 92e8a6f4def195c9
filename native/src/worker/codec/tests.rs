//! Decoder tests: requests built with the prost types (or by hand, for what prost cannot
//! write), decoded, and the outcome compared with what the Python path answers.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use super::messages::{
    InferInputTensor, InferRequestedOutputTensor, InferTensorContents, ModelInferRequest,
};
use super::*;

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "acme/churn".into(),
        model_version: "3".into(),
        id: "r1".into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
        ..Default::default()
    }
}

fn decode(req: &ModelInferRequest) -> Result<InferRequest, CodecError> {
    decode_infer_request(Bytes::from(req.encode_to_vec()))
}

fn message(req: &ModelInferRequest) -> String {
    match decode(req) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn raw_contents_are_slices_of_the_body() {
    let data: Vec<u8> = (0..24).collect();
    let mut req = request(vec![input("x", "FP32", &[2, 3])], vec![data.clone()]);
    req.outputs.push(InferRequestedOutputTensor {
        name: "out".into(),
        ..Default::default()
    });
    let body = Bytes::from(req.encode_to_vec());
    let got = decode_infer_request(body.clone()).expect("valid");
    assert_eq!(
        (got.model.as_str(), got.version.as_str(), got.id.as_str()),
        ("acme/churn", "3", "r1")
    );
    assert_eq!(got.outputs().collect::<Vec<_>>(), ["out"]);
    let t = &got.inputs[0];
    assert_eq!(
        (t.name.as_str(), t.datatype, t.shape.as_slice()),
        ("x", Datatype::Fp32, &[2i64, 3][..])
    );
    assert_eq!(t.data, data);
    // Zero-copy: the tensor's bytes lie inside the body's buffer.
    let inside = body.as_ptr_range();
    assert!(inside.contains(&t.data.as_ptr()));
}

#[test]
fn typed_contents_convert_as_numpy_does() {
    let mut x = input("x", "INT16", &[3]);
    x.contents = Some(InferTensorContents {
        int_contents: vec![-2, 7, 300],
        ..Default::default()
    });
    let mut b = input("b", "BOOL", &[2]);
    b.contents = Some(InferTensorContents {
        bool_contents: vec![true, false],
        ..Default::default()
    });
    let mut f = input("f", "FP64", &[1, 1]);
    f.contents = Some(InferTensorContents {
        fp64_contents: vec![-0.5],
        ..Default::default()
    });
    let got = decode(&request(vec![x, b, f], vec![])).expect("valid");
    let bytes: Vec<Vec<u8>> = got.inputs.iter().map(|t| t.data.to_vec()).collect();
    assert_eq!(bytes[0], [254, 255, 7, 0, 44, 1]);
    assert_eq!(bytes[1], [1, 0]);
    assert_eq!(bytes[2], (-0.5f64).to_le_bytes());
}

#[test]
fn tensor_checks_answer_as_python_does() {
    let one = |t: InferInputTensor, raw: Vec<Vec<u8>>| message(&request(vec![t], raw));
    assert_eq!(
        one(input("x", "BYTES", &[1]), vec![]),
        "input 'x': unsupported datatype 'BYTES' (expected one of BOOL, UINT8, UINT16, UINT32, \
         UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64)"
    );
    assert_eq!(
        one(input("x", "FP32", &[2, -3]), vec![]),
        "input 'x': negative dimension in shape [2, -3]"
    );
    assert_eq!(
        one(input("x", "FP32", &[2, 3]), vec![vec![0; 7]]),
        "input 'x': 7 bytes of raw contents, but FP32 [2, 3] needs 24"
    );
    assert_eq!(
        one(input("x", "FP64", &[2, 3]), vec![]),
        "input 'x': 0 values in contents, but FP64 [2, 3] needs 6"
    );
    // FP16 has no typed field: only an empty tensor can be sent that way.
    assert_eq!(one(input("h", "FP16", &[0, 4]), vec![]), "ok");
    let max = i64::MAX;
    assert_eq!(
        one(input("x", "FP64", &[max, max, 3]), vec![vec![1]]),
        "input 'x': 1 bytes of raw contents, but FP64 [9223372036854775807, \
         9223372036854775807, 3] needs 2041694201525630780337525786821580029976"
    );
    let mut two = request(
        vec![input("a", "FP32", &[1]), input("b", "FP32", &[1])],
        vec![vec![0; 4]],
    );
    assert_eq!(
        message(&two),
        "1 raw_input_contents for 2 inputs (give one per input)"
    );
    two.raw_input_contents.push(Bytes::from_static(&[0; 4]));
    assert_eq!(message(&two), "ok");
}

#[test]
fn shapes_numpy_cannot_hold_are_refused_by_name() {
    let dims = vec![1i64; 65];
    assert_eq!(
        message(&request(vec![input("x", "BOOL", &dims)], vec![vec![1]])),
        "input 'x': 65 dimensions in shape; at most 64 are supported"
    );
    assert_eq!(
        message(&request(
            vec![input("x", "BOOL", &dims[..64])],
            vec![vec![1]]
        )),
        "ok"
    );
    // No element, but 4 bytes times 2^61 does not fit in an index: numpy refuses it.
    let big = request(vec![input("x", "FP32", &[0, 1 << 61])], vec![vec![]]);
    assert_eq!(
        message(&big),
        "input 'x': FP32 [0, 2305843009213693952] is too large: its item size times its \
         non-zero dimensions exceeds 2**63 - 1 bytes"
    );
    assert_eq!(
        message(&request(
            vec![input("x", "FP32", &[0, 1 << 60])],
            vec![vec![]]
        )),
        "ok"
    );
}

#[test]
fn too_many_dims_is_checked_before_negative_ones() {
    let mut dims = vec![-1i64; 65];
    assert_eq!(
        message(&request(vec![input("x", "BOOL", &dims)], vec![])),
        "input 'x': 65 dimensions in shape; at most 64 are supported"
    );
    dims.truncate(64);
    assert!(
        message(&request(vec![input("x", "BOOL", &dims)], vec![])).contains("negative dimension")
    );
}

#[test]
fn the_size_numpy_refuses_starts_just_past_the_largest_index() {
    // UINT8: 2^63 - 1 bytes fit, 2 * 2^62 do not.
    let fits = request(vec![input("x", "UINT8", &[0, i64::MAX])], vec![vec![]]);
    assert_eq!(message(&fits), "ok");
    let over = request(vec![input("x", "UINT8", &[0, 1 << 62, 2])], vec![vec![]]);
    assert!(message(&over).contains("is too large"));
    let over = request(vec![input("x", "UINT16", &[0, i64::MAX])], vec![vec![]]);
    assert!(message(&over).contains("is too large"));
}

#[test]
fn narrow_datatypes_see_the_low_32_bits_of_a_varint() {
    // int_contents 2^32 + 5 is 5 to protobuf; uint_contents 2^32 + 300 is 300 (out of range).
    let typed = |datatype: &str, field: u8, value: u64| {
        let mut contents = vec![field << 3];
        let mut v = value;
        while v >= 0x80 {
            contents.push((v as u8) | 0x80);
            v >>= 7;
        }
        contents.push(v as u8);
        let mut tensor = input("x", datatype, &[1]).encode_to_vec();
        tensor.extend([0x2a, contents.len() as u8]);
        tensor.extend(contents);
        let mut body = vec![0x2a, tensor.len() as u8];
        body.extend(tensor);
        decode_infer_request(Bytes::from(body))
    };
    let got = typed("INT8", 2, (1 << 32) + 5).expect("in range");
    assert_eq!(got.inputs[0].data, [5u8][..]);
    let e = typed("UINT8", 4, (1 << 32) + 300).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'x': uint_contents[0] = 300 is out of range for UINT8 [0, 255]"
    );
    let e = typed("INT16", 2, (1 << 32) + (1 << 31)).unwrap_err();
    assert!(e
        .to_string()
        .ends_with("int_contents[0] = -2147483648 is out of range for INT16 [-32768, 32767]"));
}

#[test]
fn malformed_bytes_get_the_explained_reason() {
    let body = Bytes::from_static(b"\x0a\x04\xff\xfe/m");
    let e = decode_infer_request(body).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed ModelInferRequest (6 bytes): model_name is not valid UTF-8"
    );
    // A string parameter that is not UTF-8 (which the explanation does not look into).
    let body = Bytes::from_static(b"\x22\x05\x12\x03\x1a\x01\xff");
    let e = decode_infer_request(body).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed ModelInferRequest (7 bytes): not a valid protobuf encoding"
    );
    // A claimed length far beyond the body: refused without allocating it.
    let body = Bytes::from_static(b"\x3a\xff\xff\xff\xff\x07");
    let e = decode_infer_request(body).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed ModelInferRequest (6 bytes): field 7 claims 2147483647 bytes but only 0 remain"
    );
}

#[test]
fn what_upb_accepts_and_prost_refuses() {
    // model_name as a varint (another wire type: an unknown field), then the real one; an
    // unknown group; a 10-byte varint with bits past the 64th.
    let mut body = vec![0x08, 0x05, 0x0a, 0x01, b'm', 0x5b, 0x08, 0x01, 0x5c, 0x58];
    body.extend([0xff; 9]);
    body.push(0x7f);
    let got = decode_infer_request(Bytes::from(body)).expect("accepted as upb accepts it");
    assert_eq!(got.model, "m");
    assert!(got.inputs.is_empty());
}

#[test]
fn repeated_fields_merge_and_scalars_take_the_last_value() {
    // Two `contents` of one tensor merge; `name` given twice keeps the last.
    let mut tensor = input("first", "INT32", &[3]).encode_to_vec();
    let part = |v: Vec<i32>| {
        InferTensorContents {
            int_contents: v,
            ..Default::default()
        }
        .encode_to_vec()
    };
    for chunk in [part(vec![1, 2]), part(vec![3])] {
        tensor.push(0x2a);
        tensor.push(chunk.len() as u8);
        tensor.extend(chunk);
    }
    tensor.extend([0x0a, 1, b'x']);
    let mut body = vec![0x2a, tensor.len() as u8];
    body.extend(tensor);
    let got = decode_infer_request(Bytes::from(body)).expect("valid");
    assert_eq!(got.inputs[0].name, "x");
    let want: Vec<u8> = [1i32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(got.inputs[0].data, want);
}

#[test]
fn the_first_bad_tensor_is_the_answer() {
    let req = request(
        vec![
            input("a", "FP32", &[1]),
            input("b", "NOPE", &[1]),
            input("c", "FP32", &[-1]),
        ],
        vec![],
    );
    assert!(message(&req).starts_with("input 'a': 0 values in contents"));
}

proptest! {
    /// Arbitrary bytes never panic, and a refusal is always the malformed message or a
    /// tensor check.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let len = body.len();
        if let Err(CodecError::Malformed { len: n, why }) = decode_infer_request(Bytes::from(body)) {
            prop_assert_eq!(n, len);
            prop_assert!(!why.is_empty());
        }
    }

    /// Valid requests decode to what was encoded.
    #[test]
    fn valid_requests_round_trip(
        rows in 0i64..5,
        cols in 0i64..5,
        values in proptest::collection::vec(any::<f32>(), 25),
    ) {
        let n = (rows * cols) as usize;
        let data: Vec<u8> = values[..n].iter().flat_map(|v| v.to_le_bytes()).collect();
        let req = request(vec![input("x", "FP32", &[rows, cols])], vec![data.clone()]);
        let got = decode(&req).expect("valid");
        prop_assert_eq!(&got.inputs[0].shape, &vec![rows, cols]);
        prop_assert_eq!(got.inputs[0].data.to_vec(), data);
    }
}
