//! The ModelInferResponse (`worker.convert.infer_response_to_proto`): outputs always as
//! `raw_output_contents`, in the order given. The bytes equal what Python's
//! `SerializeToString()` gives for the same values: fields in number order, empty strings and
//! empty shapes left out, shapes packed, every raw buffer written (empty ones too).

use bytes::Bytes;
use prost::Message;

use super::datatype::Datatype;
use super::messages::{InferOutputTensor, ModelInferResponse};

/// One output of a prediction: `data` holds the tensor's little-endian, row-major bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// The response's wire bytes; `version` is the version that answered.
pub fn encode_infer_response(
    model: &str,
    version: u64,
    id: &str,
    outputs: &[OutputTensor],
) -> Vec<u8> {
    ModelInferResponse {
        model_name: model.to_owned(),
        model_version: version.to_string(),
        id: id.to_owned(),
        parameters: Default::default(),
        outputs: outputs
            .iter()
            .map(|t| InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype.name().to_owned(),
                shape: t.shape.clone(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        raw_output_contents: outputs.iter().map(|t| t.data.clone()).collect(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_number_order_with_packed_shapes() {
        let out = OutputTensor {
            name: "o".into(),
            datatype: Datatype::Fp32,
            shape: vec![1, 300],
            data: Bytes::from_static(&[1, 2]),
        };
        let empty = OutputTensor {
            name: String::new(),
            datatype: Datatype::Bool,
            shape: vec![],
            data: Bytes::new(),
        };
        let wire = encode_infer_response("t/m", 3, "", &[out, empty]);
        let want: &[u8] = &[
            0x0a, 3, b't', b'/', b'm', // model_name
            0x12, 1, b'3', // model_version; no id
            0x2a, 14, 0x0a, 1, b'o', 0x12, 4, b'F', b'P', b'3', b'2', 0x1a, 3, 1, 0xac, 0x02, 0x2a,
            6, 0x12, 4, b'B', b'O', b'O', b'L', // no name, no shape
            0x32, 2, 1, 2, // raw_output_contents
            0x32, 0, // an empty buffer is written too
        ];
        assert_eq!(wire, want);
    }
}
