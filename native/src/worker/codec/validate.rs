//! Requests checked before any model runs: the row limit (`worker.limits.check_rows`), the
//! inputs against a model version's signature (`worker.validate.check_inputs`) and the
//! requested outputs (`select_outputs`). Same rules, same messages.

use std::collections::BTreeSet;

use super::decode::Tensor;
use super::error::CodecError;

/// One tensor of a signature: `shape` uses -1 for a variable dimension, and an empty shape
/// means the model does not declare one (any shape matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// A V2 datatype name, compared as text with the tensor's.
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// A model version's signature (`shoal.artifacts.Signature`), pushed by Python when the model
/// becomes resident.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// RESOURCE_EXHAUSTED when an input has more than `max_rows` rows (its first dimension).
pub fn check_rows(inputs: &[Tensor], max_rows: i64) -> Result<(), CodecError> {
    for t in inputs {
        if let Some(&rows) = t.shape.first() {
            if rows > max_rows {
                return Err(CodecError::TooManyRows {
                    name: t.name.clone(),
                    rows,
                    max_rows,
                });
            }
        }
    }
    Ok(())
}

fn matches(spec: &TensorSpec, t: &Tensor) -> bool {
    if t.datatype.name() != spec.datatype {
        return false;
    }
    if spec.shape.is_empty() {
        return true;
    }
    spec.shape.len() == t.shape.len()
        && spec
            .shape
            .iter()
            .zip(&t.shape)
            .all(|(&e, &r)| e < 0 || e == r)
}

/// The indices in `inputs` of the tensors for the signature's inputs, in the signature's
/// order. Names must match, a single input's too (a name given twice: the last one counts). `model` labels the messages
/// (`tenant/name:version`).
pub fn check_inputs(
    model: &str,
    sig: &Signature,
    inputs: &[Tensor],
) -> Result<Vec<usize>, CodecError> {
    let specs = &sig.inputs;
    if inputs.len() != specs.len() {
        return Err(CodecError::InputCount {
            model: model.to_owned(),
            specs: specs.clone(),
            got: inputs.len(),
        });
    }
    let mut order = Vec::with_capacity(specs.len());
    for spec in specs {
        match inputs.iter().rposition(|t| t.name == spec.name) {
            Some(i) => order.push(i),
            None => {
                let received: BTreeSet<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(CodecError::MissingInput {
                    model: model.to_owned(),
                    spec: Box::new(spec.clone()),
                    received: received.into_iter().map(str::to_owned).collect(),
                });
            }
        }
    }
    for (spec, &i) in specs.iter().zip(&order) {
        let t = &inputs[i];
        if !matches(spec, t) {
            return Err(CodecError::Mismatch {
                model: model.to_owned(),
                spec: Box::new(spec.clone()),
                datatype: t.datatype,
                shape: t.shape.clone(),
            });
        }
        if t.shape.first() == Some(&0) {
            return Err(CodecError::EmptyBatch {
                model: model.to_owned(),
                name: spec.name.clone(),
            });
        }
    }
    Ok(order)
}

/// Indices of the requested outputs in the signature's order (every output when none is
/// named; a name the signature holds twice means its first).
pub fn select_outputs<'a>(
    sig: &Signature,
    requested: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<usize>, CodecError> {
    let mut requested = requested.into_iter().peekable();
    if requested.peek().is_none() {
        return Ok((0..sig.outputs.len()).collect());
    }
    requested
        .map(|r| {
            sig.outputs
                .iter()
                .position(|s| s.name == r)
                .ok_or_else(|| CodecError::UnknownOutput {
                    requested: r.to_owned(),
                    names: sig.outputs.iter().map(|s| s.name.clone()).collect(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::datatype::Datatype;
    use super::*;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    fn tensor(name: &str, datatype: Datatype, shape: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            data: Bytes::new(),
        }
    }

    fn sig(inputs: Vec<TensorSpec>) -> Signature {
        Signature {
            inputs,
            outputs: vec![spec("out", "FP32", &[-1]), spec("prob", "FP32", &[-1, 2])],
        }
    }

    #[test]
    fn rows_over_the_limit_are_refused() {
        let t = [
            tensor("x", Datatype::Fp32, &[5, 3]),
            tensor("s", Datatype::Fp32, &[]),
        ];
        assert!(check_rows(&t, 5).is_ok());
        let e = check_rows(&t, 4).unwrap_err();
        assert!(matches!(
            e,
            CodecError::TooManyRows {
                rows: 5,
                max_rows: 4,
                ..
            }
        ));
    }

    #[test]
    fn one_input_is_matched_by_name_too() {
        let s = sig(vec![spec("input__0", "FP32", &[-1, 3])]);
        let ok = [tensor("input__0", Datatype::Fp32, &[2, 3])];
        assert_eq!(check_inputs("t/m:2", &s, &ok), Ok(vec![0]));
        let e = check_inputs("t/m:2", &s, &[tensor("input", Datatype::Fp32, &[2, 3])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t/m:2: missing input 'input__0' FP32 [-1, 3]; received ['input']"
        );
        let wrong = [tensor("input__0", Datatype::Fp64, &[2, 3])];
        let e = check_inputs("t/m:2", &s, &wrong).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'input__0' of t/m:2: expected FP32 [-1, 3], received FP64 [2, 3]"
        );
        let empty = [tensor("input__0", Datatype::Fp32, &[0, 3])];
        let e = check_inputs("t/m:2", &s, &empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'input__0' of t/m:2: empty batch (0 rows)"
        );
        let e = check_inputs("t/m:2", &s, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t/m:2 expects 1 input(s) ('input__0' FP32 [-1, 3]), got 0"
        );
        // A model that declares no shape takes any shape, scalars included.
        let any = sig(vec![spec("x", "INT64", &[])]);
        assert_eq!(
            check_inputs("m", &any, &[tensor("x", Datatype::Int64, &[])]),
            Ok(vec![0])
        );
    }

    #[test]
    fn several_inputs_are_matched_by_name() {
        let s = sig(vec![spec("a", "FP32", &[-1]), spec("b", "INT64", &[-1, 2])]);
        let given = [
            tensor("b", Datatype::Int64, &[1, 2]),
            tensor("a", Datatype::Fp32, &[1]),
        ];
        assert_eq!(check_inputs("m", &s, &given), Ok(vec![1, 0]));
        let dup = [
            tensor("b", Datatype::Int64, &[1, 2]),
            tensor("b", Datatype::Fp32, &[1]),
        ];
        let e = check_inputs("m", &s, &dup).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: missing input 'a' FP32 [-1]; received ['b']"
        );
        let wrong = [
            tensor("z", Datatype::Int64, &[1, 2]),
            tensor("a", Datatype::Fp32, &[1]),
        ];
        let e = check_inputs("m", &s, &wrong).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: missing input 'b' INT64 [-1, 2]; received ['a', 'z']"
        );
        // Given twice, the last one counts (as a dict built from the inputs).
        let twice = [
            tensor("a", Datatype::Fp32, &[1]),
            tensor("a", Datatype::Fp32, &[2]),
            tensor("b", Datatype::Int64, &[1, 2]),
        ];
        let s3 = Signature {
            inputs: vec![
                spec("a", "FP32", &[-1]),
                spec("b", "INT64", &[-1, 2]),
                spec("c", "BOOL", &[]),
            ],
            outputs: vec![],
        };
        let e = check_inputs("m", &s3, &twice).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m: missing input 'c' BOOL []; received ['a', 'b']"
        );
        // The last 'a' is the one checked: its batch is empty.
        let last = [
            tensor("a", Datatype::Fp32, &[1]),
            tensor("b", Datatype::Int64, &[1, 2]),
            tensor("a", Datatype::Fp32, &[0]),
        ];
        let s3 = sig(vec![
            spec("a", "FP32", &[-1]),
            spec("b", "INT64", &[-1, 2]),
            spec("b", "INT64", &[]),
        ]);
        let e = check_inputs("m", &s3, &last).unwrap_err();
        assert_eq!(e.to_string(), "input 'a' of m: empty batch (0 rows)");
    }

    #[test]
    fn outputs_are_selected_by_name() {
        let s = sig(vec![]);
        assert_eq!(select_outputs(&s, []), Ok(vec![0, 1]));
        assert_eq!(
            select_outputs(&s, ["prob", "out", "prob"]),
            Ok(vec![1, 0, 1])
        );
        let e = select_outputs(&s, ["out", "nope"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown output 'nope'; the model has ['out', 'prob']"
        );
    }
}
