//! ModelInfer's wire codec for the worker front: decode and validate a ModelInferRequest,
//! encode the ModelInferResponse. The native twin of `worker/convert.py`, `worker/validate.py`
//! and `worker.limits.check_rows`: same acceptance, same status codes, same messages (the
//! differential tests in `tests/native/` hold it to that).
//!
//! * `wire`: the protobuf wire format read by upb's rules (what Python's protobuf accepts);
//! * `explain`: the reason given for refused bytes (`convert._explain`);
//! * `decode` and `contents`: the request as plain tensors (`_decode_tensor`);
//! * `validate`: the row limit, the inputs against a signature, the requested outputs;
//! * `encode`: the response; `messages`: the prost types; `error`: every refusal, one enum;
//! * `bignum`: exact element counts for messages about huge shapes.

mod bignum;
mod contents;
mod datatype;
mod decode;
mod encode;
mod error;
mod explain;
pub mod messages;
mod validate;
mod wire;

pub use bignum::Natural;
pub use datatype::{ContentsField, Datatype};
pub use decode::{decode_infer_request, InferRequest, Tensor};
pub use encode::{encode_infer_response, OutputTensor};
pub use error::{CodecError, MAX_DIMS};
pub use validate::{check_inputs, check_rows, select_outputs, Signature, TensorSpec};

#[cfg(test)]
mod tests;
