//! Gathering a model's input tensors from the command line: `.npy` and
//! ONNX `TensorProto` (`.pb`) files, and the ONNX test-data layout
//! (`input_0.pb`, `input_1.pb`, ..., `output_0.pb`, ...).
//!
//! Inputs are checked against the graph before anything runs, so a wrong
//! file gives a message naming the input, what the model wants and what the
//! file holds, rather than a kernel error deep inside the graph.

use anyhow::{bail, Context};
use kiln::ir::{DType, Dim, Graph, Tensor, TensorType, ValueId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The graph inputs a caller must feed, in order: graph inputs that are not
/// also initializers (older ONNX files list weights as inputs too).
pub fn required_inputs(graph: &Graph) -> Vec<ValueId> {
    graph.inputs().iter().copied().filter(|&v| graph.value(v).initializer.is_none()).collect()
}

/// One `--input NAME=FILE`.
#[derive(Clone, Debug)]
pub struct InputArg {
    /// Graph input name.
    pub name: String,
    /// `.npy` or `.pb` file.
    pub file: PathBuf,
}

/// clap value parser for `NAME=FILE` (split at the first `=`, since input
/// names rarely contain one and paths might).
pub fn parse_input_arg(s: &str) -> Result<InputArg, String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok(InputArg { name: name.to_string(), file: PathBuf::from(file) })
        }
        _ => Err(format!("expected NAME=FILE (e.g. input_ids=ids.npy), got `{s}`")),
    }
}

/// A tensor read from a file, remembered with where it came from.
pub struct TensorFile {
    /// The file.
    pub path: PathBuf,
    /// The name stored in the file (`.pb` files have one, `.npy` files not).
    pub stored_name: Option<String>,
    /// The data.
    pub tensor: Tensor,
}

/// Reads a `.npy` or `.pb` (ONNX TensorProto) file.
pub fn read_tensor_file(path: &Path) -> anyhow::Result<TensorFile> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let (stored_name, tensor) = match ext.as_deref() {
        Some("npy") => (None, kiln::ir::npy::read_npy(path)?),
        Some("pb") => {
            let (name, tensor) = kiln::ir::onnx::import::read_tensor_pb(path)?;
            (Some(name).filter(|n| !n.is_empty()), tensor)
        }
        _ => bail!(
            "{}: unknown tensor file extension; supported: .npy (NumPy array), .pb (ONNX TensorProto)",
            path.display()
        ),
    };
    Ok(TensorFile { path: path.to_path_buf(), stored_name, tensor })
}

/// The `input_K.pb` and `output_K.pb` files of an ONNX test-data directory,
/// each list in index order.
pub struct TestData {
    /// `input_0.pb`, `input_1.pb`, ...
    pub inputs: Vec<TensorFile>,
    /// `output_0.pb`, `output_1.pb`, ...; empty when there are none.
    pub outputs: Vec<TensorFile>,
}

/// The files `<prefix>K.pb` in `dir`, by K, which must run 0, 1, 2, ...
fn numbered_files(dir: &Path, entries: &[String], prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut numbered = BTreeMap::new();
    for name in entries {
        let Some(index) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(".pb")) else {
            continue;
        };
        if let Ok(k) = index.parse::<usize>() {
            numbered.insert(k, dir.join(name));
        }
    }
    for (expected, (&k, _)) in numbered.iter().enumerate() {
        if k != expected {
            bail!("{}: has {prefix}{k}.pb but no {prefix}{expected}.pb", dir.display());
        }
    }
    Ok(numbered.into_values().collect())
}

/// Reads an ONNX test-data directory.
pub fn read_test_data(dir: &Path) -> anyhow::Result<TestData> {
    let listing = std::fs::read_dir(dir).with_context(|| format!("cannot read the directory `{}`", dir.display()))?;
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry.with_context(|| format!("cannot read the directory `{}`", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            entries.push(name.to_string());
        }
    }
    let read_all = |prefix: &str| -> anyhow::Result<Vec<TensorFile>> {
        numbered_files(dir, &entries, prefix)?.iter().map(|p| read_tensor_file(p)).collect()
    };
    let inputs = read_all("input_")?;
    let outputs = read_all("output_")?;
    if inputs.is_empty() && outputs.is_empty() {
        bail!("{}: no input_K.pb or output_K.pb files (expected the ONNX test-data layout)", dir.display());
    }
    Ok(TestData { inputs, outputs })
}

/// `  input_ids: i64[batch, seq]` lines for every required input.
fn describe_required(graph: &Graph) -> String {
    let required = required_inputs(graph);
    if required.is_empty() {
        return "the model takes no inputs".into();
    }
    let lines: Vec<String> = required
        .iter()
        .map(|&v| format!("  {}: {}", graph.value(v).name, super::summary::type_text(graph.value(v).ty.as_ref())))
        .collect();
    format!("the model's inputs are:\n{}", lines.join("\n"))
}

/// A graph input's tensor and the file it came from.
pub struct AssignedInput {
    /// Graph input name.
    pub name: String,
    /// The data, converted to the input's dtype where `.npy` needs it.
    pub tensor: Tensor,
    /// The file it was read from.
    pub origin: PathBuf,
}

/// Matches test-data inputs and `--input` files to graph inputs and checks
/// them. A test-data file goes to the graph input its stored name names, or
/// else to the graph input at its position; `--input` wins over the
/// directory. Returns the inputs in graph-input order.
pub fn assign_inputs(
    graph: &Graph,
    from_dir: Vec<TensorFile>,
    explicit: &[InputArg],
) -> anyhow::Result<Vec<AssignedInput>> {
    let required = required_inputs(graph);
    let names: Vec<&str> = required.iter().map(|&v| graph.value(v).name.as_str()).collect();
    let mut assigned: BTreeMap<usize, TensorFile> = BTreeMap::new();

    for (position, file) in from_dir.into_iter().enumerate() {
        let slot = match file.stored_name.as_deref().and_then(|n| names.iter().position(|&m| m == n)) {
            Some(slot) => slot,
            None if position < names.len() => position,
            None => bail!(
                "{}: the model has only {} input{}, so this file has nowhere to go\n{}",
                file.path.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                describe_required(graph)
            ),
        };
        if let Some(previous) = assigned.get(&slot) {
            bail!("both {} and {} would feed input `{}`", previous.path.display(), file.path.display(), names[slot]);
        }
        assigned.insert(slot, file);
    }

    for arg in explicit {
        let Some(slot) = names.iter().position(|&n| n == arg.name) else {
            let initializer = graph.value_by_name(&arg.name).is_some_and(|v| graph.value(v).initializer.is_some());
            if initializer {
                bail!(
                    "`{}` is a weight (initializer) of the model, not an input\n{}",
                    arg.name,
                    describe_required(graph)
                );
            }
            bail!("the model has no input named `{}`\n{}", arg.name, describe_required(graph));
        };
        let file = read_tensor_file(&arg.file).with_context(|| format!("cannot read input `{}`", arg.name))?;
        assigned.insert(slot, file);
    }

    let missing: Vec<String> = (0..required.len())
        .filter(|slot| !assigned.contains_key(slot))
        .map(|slot| {
            let v = graph.value(required[slot]);
            format!("`{}` ({})", v.name, super::summary::type_text(v.ty.as_ref()))
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing input{} {}\n{}\npass each with --input NAME=FILE (.npy or .pb), or a directory of input_K.pb files with --inputs DIR",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            describe_required(graph)
        );
    }

    let mut bindings = BTreeMap::new();
    let mut out = Vec::with_capacity(required.len());
    for (slot, file) in assigned {
        let value = graph.value(required[slot]);
        let origin = file.path.clone();
        let tensor = match &value.ty {
            Some(ty) => conform(&value.name, ty, file, &mut bindings)?,
            None => file.tensor,
        };
        out.push(AssignedInput { name: value.name.clone(), tensor, origin });
    }
    Ok(out)
}

/// Checks a tensor against the declared type of the input it feeds,
/// converting the dtypes NumPy cannot represent (see [`convert_dtype`]), and
/// binds the input's symbolic dims (`batch`, `seq`) so that every input
/// agrees on them.
fn conform(
    name: &str,
    ty: &TensorType,
    file: TensorFile,
    bindings: &mut BTreeMap<String, (u64, String)>,
) -> anyhow::Result<Tensor> {
    let origin = file.path.display().to_string();
    let tensor = convert_dtype(name, ty.dtype, file.tensor, &origin)?;
    let shape = tensor.shape().to_vec();
    let got = || format!("{} tensor of shape {} from {origin}", tensor.dtype(), super::summary::shape_text(&shape));
    if shape.len() != ty.rank() {
        bail!("input `{name}` must be {ty} (rank {}), got a rank-{} {}", ty.rank(), shape.len(), got());
    }
    // Plain symbols first, so that dims like `seq+1` can be checked against
    // what the other dims bound.
    for (axis, (dim, &size)) in ty.shape.iter().zip(&shape).enumerate() {
        if let Dim::Sym(poly) = dim {
            let symbols = poly.symbols();
            if symbols.len() == 1 && *dim == Dim::sym(&symbols[0]) {
                let symbol = symbols[0].to_string();
                match bindings.get(&symbol) {
                    Some((bound, by)) if *bound != size as u64 => bail!(
                        "input `{name}` must be {ty}: axis {axis} is `{symbol}`, which {by} set to {bound}, but it is {size} in the {}",
                        got()
                    ),
                    Some(_) => {}
                    None => {
                        bindings.insert(symbol, (size as u64, format!("input `{name}`")));
                    }
                }
            }
        }
    }
    for (axis, (dim, &size)) in ty.shape.iter().zip(&shape).enumerate() {
        let lookup = |s: &str| bindings.get(s).map(|(n, _)| *n as i64);
        if let Some(expected) = dim.eval(&lookup) {
            if expected != size as i64 {
                bail!("input `{name}` must be {ty}: axis {axis} should be {expected}, got a {}", got());
            }
        }
    }
    Ok(tensor)
}

/// Takes a tensor as the input's dtype. Exact matches pass; the only
/// conversions are the ones the `.npy` format forces: `i8`/`u8` data for
/// 4-bit inputs (range-checked) and `f32` data for `bf16` inputs (rounded).
fn convert_dtype(name: &str, want: DType, t: Tensor, origin: &str) -> anyhow::Result<Tensor> {
    let have = t.dtype();
    if have == want {
        return Ok(t);
    }
    let range = match (have, want) {
        (DType::I8, DType::I4) => Some((-8, 7)),
        (DType::U8, DType::U4) => Some((0, 15)),
        (DType::F32, DType::BF16) => None,
        _ => bail!(
            "input `{name}` must be {want}, got a {have} tensor of shape {} from {origin}",
            super::summary::shape_text(t.shape())
        ),
    };
    if let Some((lo, hi)) = range {
        if let Some(v) = t.to_i64s().into_iter().find(|v| !(lo..=hi).contains(v)) {
            bail!("input `{name}` is {want}, but {origin} holds {v}, outside [{lo}, {hi}]");
        }
    }
    Ok(t.cast(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_arg_syntax() {
        let a = parse_input_arg("ids=dir/x=1.npy").unwrap();
        assert_eq!(a.name, "ids");
        assert_eq!(a.file, PathBuf::from("dir/x=1.npy"));
        assert!(parse_input_arg("ids").is_err());
        assert!(parse_input_arg("=x.npy").is_err());
        assert!(parse_input_arg("ids=").is_err());
    }

    fn file(t: Tensor) -> TensorFile {
        TensorFile { path: PathBuf::from("t.npy"), stored_name: None, tensor: t }
    }

    #[test]
    fn symbolic_dims_must_agree() {
        let ty = TensorType::new(DType::I64, vec![Dim::sym("batch"), Dim::sym("seq")]);
        let mut b = BTreeMap::new();
        conform("a", &ty, file(Tensor::zeros(DType::I64, &[2, 8])), &mut b).unwrap();
        conform("b", &ty, file(Tensor::zeros(DType::I64, &[2, 8])), &mut b).unwrap();
        let msg = conform("c", &ty, file(Tensor::zeros(DType::I64, &[2, 9])), &mut b).unwrap_err().to_string();
        assert!(msg.contains("`seq`") && msg.contains("input `a` set to 8"), "{msg}");
        let derived = TensorType::new(DType::I64, vec![Dim::sym("seq").add(&Dim::Fixed(1))]);
        conform("d", &derived, file(Tensor::zeros(DType::I64, &[9])), &mut b).unwrap();
        let msg = conform("e", &derived, file(Tensor::zeros(DType::I64, &[8])), &mut b).unwrap_err().to_string();
        assert!(msg.contains("should be 9"), "{msg}");
    }

    #[test]
    fn rank_fixed_dims_and_dtype() {
        let ty = TensorType::fixed(DType::F32, &[2, 3]);
        let mut b = BTreeMap::new();
        let msg = conform("x", &ty, file(Tensor::zeros(DType::F32, &[6])), &mut b).unwrap_err().to_string();
        assert!(msg.contains("rank 2") && msg.contains("rank-1"), "{msg}");
        let msg = conform("x", &ty, file(Tensor::zeros(DType::F32, &[2, 4])), &mut b).unwrap_err().to_string();
        assert!(msg.contains("axis 1 should be 3"), "{msg}");
        let msg = conform("x", &ty, file(Tensor::zeros(DType::F64, &[2, 3])), &mut b).unwrap_err().to_string();
        assert!(msg.contains("must be f32, got a f64"), "{msg}");
    }

    #[test]
    fn numpy_stand_ins_for_4bit_and_bf16() {
        let t = convert_dtype("w", DType::I4, Tensor::from_i64s(DType::I8, &[2], &[-8, 7]), "w.npy").unwrap();
        assert_eq!(t.dtype(), DType::I4);
        let msg = convert_dtype("w", DType::I4, Tensor::from_i64s(DType::I8, &[1], &[9]), "w.npy").unwrap_err();
        assert!(msg.to_string().contains("outside [-8, 7]"));
        let t = convert_dtype("h", DType::BF16, Tensor::scalar_f32(1.5), "h.npy").unwrap();
        assert_eq!(t.dtype(), DType::BF16);
    }
}
