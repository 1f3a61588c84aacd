//! Ahead-of-time compilation: a graph specialized to fixed input shapes,
//! written as a self-contained shared library with a C ABI, or as the
//! generated module alone (object file, assembly or LLVM IR).
//!
//! The code is the JIT's: the same plan, the same module, the same
//! `default<O3>` pipeline ([`crate::jit::generate`]); only the last step
//! differs. For a library the module additionally holds
//!
//! - the constants (weights) as private global constant data, 64-byte
//!   aligned, so the library needs no files at run time;
//! - `NAME_consts`, a hidden table of their addresses, which fills the
//!   constant slots of the buffer table;
//! - the entry, renamed `NAME_entry` and hidden.
//!
//! A small C wrapper, generated per model, implements the public ABI on top
//! (create / run / destroy, tensor descriptors, `last_error`) and is linked
//! with the module's object by the system C compiler (`cc -shared`). Every
//! exported symbol starts with `NAME_`, so libraries of different models
//! load into one process side by side. See [`AotModule::header`] for the
//! ABI itself.
//!
//! ```no_run
//! # fn demo(graph: &kiln_ir::Graph) -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_backend_llvm::aot;
//! let shapes = aot::input_shapes(graph, &[("seq".to_string(), 128)].into_iter().collect())?;
//! let module = aot::prepare(graph, &shapes, &Default::default(), "gpt2")?;
//! module.write_library(std::path::Path::new("libgpt2.so"))?;
//! std::fs::write("gpt2.h", module.header())?;
//! # Ok(()) }
//! ```

use crate::cache;
use crate::error::{BackendError, Result};
use crate::jit::{self, Generated, TargetInfo};
use crate::plan::{self, Plan, Shaped, Step};
use crate::CompileOptions;
use inkwell::module::Linkage;
use inkwell::targets::{FileType, RelocMode};
use inkwell::values::BasicValue;
use inkwell::AddressSpace;
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What [`AotModule::emit`] writes: the generated module alone, without
/// the C ABI wrapper (which only the shared library has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// A relocatable ELF (or the platform's) object file, position-independent.
    Object,
    /// The target's assembly text.
    Assembly,
    /// LLVM IR text after optimization.
    LlvmIr,
}

/// One input or output of a compiled model, as the C ABI describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// The graph value's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Fixed shape.
    pub shape: Vec<usize>,
}

impl TensorDesc {
    /// Bytes of the buffer holding it (row-major, densely packed).
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * plan::elem_bytes(self.dtype)
    }
}

/// A graph specialized to fixed input shapes and planned, ready to be
/// written as a library, object file, assembly or IR.
pub struct AotModule {
    name: String,
    plan: Plan,
    target: TargetInfo,
    opts: CompileOptions,
}

/// The concrete shape of every graph input (in graph order), with each
/// symbolic dim taken from `dims`. A dim without a size, or one that
/// evaluates to a negative size, is an error naming the input, the axis and
/// the dim.
pub fn input_shapes(graph: &Graph, dims: &BTreeMap<String, i64>) -> Result<Vec<Vec<usize>>> {
    let lookup = |s: &str| dims.get(s).copied();
    let mut shapes = Vec::with_capacity(graph.inputs().len());
    for &v in graph.inputs() {
        let value = graph.value(v);
        let Some(ty) = &value.ty else {
            if let Some(init) = &value.initializer {
                shapes.push(init.shape().to_vec());
                continue;
            }
            return Err(BackendError::value(&value.name, "the input has no declared type"));
        };
        let mut shape = Vec::with_capacity(ty.rank());
        for (axis, dim) in ty.shape.iter().enumerate() {
            match dim.eval(&lookup) {
                Some(n) if n >= 0 => shape.push(n as usize),
                Some(n) => {
                    return Err(BackendError::value(
                        &value.name,
                        format!("axis {axis} is `{dim}`, which the given sizes make {n}"),
                    ))
                }
                None => {
                    let missing: Vec<String> = match dim {
                        Dim::Sym(p) => {
                            p.symbols().iter().filter(|s| !dims.contains_key(&***s)).map(|s| s.to_string()).collect()
                        }
                        _ => Vec::new(),
                    };
                    let hint: Vec<String> = missing.iter().map(|s| format!("--dim {s}=VALUE")).collect();
                    return Err(BackendError::value(
                        &value.name,
                        format!(
                            "axis {axis} is the symbolic dim `{dim}`, which has no size: code is generated for fixed \
                             shapes, so give it one ({})",
                            hint.join(", ")
                        ),
                    ));
                }
            }
        }
        shapes.push(shape);
    }
    Ok(shapes)
}

/// Checks, specializes and plans `graph` (typed, e.g. optimized by kiln's
/// passes) for one concrete shape per graph input (see [`input_shapes`]).
/// `name` prefixes every symbol of the library and must be a C identifier.
/// An input read only for its values as a shape (the target of `Reshape`,
/// say) is fixed at compile time, so it needs an initializer.
pub fn prepare(graph: &Graph, shapes: &[Vec<usize>], opts: &CompileOptions, name: &str) -> Result<AotModule> {
    check_identifier(name)?;
    if shapes.len() != graph.inputs().len() {
        return Err(BackendError::Target(format!(
            "{} input shapes for a graph with {} inputs",
            shapes.len(),
            graph.inputs().len()
        )));
    }
    plan::check_lowerable(graph)?;
    let target = jit::target_info(opts)?;
    let by_value = plan::shape_inputs(graph);
    let mut types = Vec::with_capacity(shapes.len());
    let mut values = Vec::with_capacity(shapes.len());
    for ((&v, shape), &by_value) in graph.inputs().iter().zip(shapes).zip(&by_value) {
        let value = graph.value(v);
        let dtype = match (&value.ty, &value.initializer) {
            (Some(ty), _) => ty.dtype,
            (None, Some(init)) => init.dtype(),
            (None, None) => return Err(BackendError::value(&value.name, "the input has no declared type")),
        };
        if matches!(dtype, DType::I4 | DType::U4) {
            return Err(BackendError::value(&value.name, format!("{dtype} inputs are not supported")));
        }
        if by_value {
            let Some(init) = &value.initializer else {
                return Err(BackendError::value(
                    &value.name,
                    "its values decide shapes (it is read as a shape), and an ahead-of-time library has fixed \
                     shapes: give the input an initializer",
                ));
            };
            types.push(Shaped { dtype: init.dtype(), shape: init.shape().to_vec() });
            values.push(Some(init.clone()));
        } else {
            types.push(Shaped { dtype, shape: shape.clone() });
            values.push(None);
        }
    }
    let specialized = plan::specialize(graph, &types, &values)?;
    let mut plan = plan::plan(specialized, opts.matmul)?;
    for t in &mut plan.consts {
        *t = crate::standard_layout(t);
    }
    Ok(AotModule { name: name.to_string(), plan, target, opts: opts.clone() })
}

/// Symbol prefixes must be C identifiers (and not start with `__`, which C
/// reserves).
fn check_identifier(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with("__") {
        return Err(BackendError::Target(format!(
            "`{name}` cannot prefix the library's symbols: it must be a C identifier (letters, digits, `_`, \
             not starting with a digit or `__`)"
        )));
    }
    Ok(())
}

/// A file name stem made into a C identifier: `gpt2-small` → `gpt2_small`.
pub fn identifier_from(stem: &str) -> String {
    let mut id: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit()) || id.starts_with("__") {
        id.insert_str(0, "m_");
    }
    id
}

impl AotModule {
    /// The symbol prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target the code is generated for.
    pub fn target(&self) -> &TargetInfo {
        &self.target
    }

    /// The inputs the library takes, in order (inputs fixed at compile time
    /// are not among them).
    pub fn inputs(&self) -> Vec<TensorDesc> {
        self.descs(self.plan.graph.inputs())
    }

    /// The outputs the library writes, in order.
    pub fn outputs(&self) -> Vec<TensorDesc> {
        self.descs(self.plan.graph.outputs())
    }

    fn descs(&self, values: &[kiln_ir::graph::ValueId]) -> Vec<TensorDesc> {
        values
            .iter()
            .map(|&v| {
                let ty = self.plan.ty(v);
                TensorDesc { name: self.plan.graph.value(v).name.clone(), dtype: ty.dtype, shape: ty.shape.clone() }
            })
            .collect()
    }

    /// Bytes of the scratch arena `create` allocates.
    pub fn arena_bytes(&self) -> usize {
        self.plan.arena_bytes
    }

    /// Bytes of the constants embedded in the library.
    pub fn constant_bytes(&self) -> usize {
        self.plan.consts.iter().map(|t| t.shape().iter().product::<usize>() * plan::elem_bytes(t.dtype())).sum()
    }

    /// Generates and optimizes the module, with the constants, their table
    /// and the renamed entry added.
    fn generate(&self) -> Result<Generated> {
        let generated = jit::generate(&self.plan, &self.target, &self.opts, RelocMode::PIC)?;
        let ctx = generated.context();
        let module = &generated.module;
        let entry = module
            .get_function(crate::codegen::ENTRY)
            .ok_or_else(|| BackendError::Llvm("the module has no entry function".to_string()))?;
        entry.as_global_value().set_name(&format!("{}_entry", self.name));
        entry.as_global_value().set_visibility(inkwell::GlobalVisibility::Hidden);
        let ptr = ctx.ptr_type(AddressSpace::default());
        let mut addresses = Vec::with_capacity(self.plan.consts.len());
        for (i, t) in self.plan.consts.iter().enumerate() {
            let data = ctx.const_string(&t.to_raw_le(), false);
            let global = module.add_global(data.get_type(), None, &format!("{}_const{i}", self.name));
            global.set_initializer(&data);
            global.set_constant(true);
            global.set_linkage(Linkage::Private);
            global.set_alignment(plan::ALIGN as u32);
            addresses.push(global.as_pointer_value());
        }
        let table_value = ptr.const_array(&addresses);
        let table = module.add_global(table_value.get_type(), None, &format!("{}_consts", self.name));
        table.set_initializer(&table_value.as_basic_value_enum());
        table.set_constant(true);
        table.set_visibility(inkwell::GlobalVisibility::Hidden);
        module.verify().map_err(|e| BackendError::Llvm(format!("the library's module is invalid: {e}")))?;
        Ok(generated)
    }

    /// Writes the generated module alone (no C wrapper): its entry is
    /// `NAME_entry(void **buffers)` and its constants' table `NAME_consts`.
    pub fn emit(&self, kind: Emit, path: &Path) -> Result<()> {
        let generated = self.generate()?;
        let written = match kind {
            Emit::Object => generated.machine.write_to_file(&generated.module, FileType::Object, path),
            Emit::Assembly => generated.machine.write_to_file(&generated.module, FileType::Assembly, path),
            Emit::LlvmIr => generated.module.print_to_file(path),
        };
        written.map_err(|e| BackendError::Target(format!("cannot write `{}`: {e}", path.display())))
    }

    /// Writes the shared library: the generated module plus the C ABI
    /// wrapper, linked by the system C compiler (`$CC`, else `cc`).
    pub fn write_library(&self, path: &Path) -> Result<()> {
        let generated = self.generate()?;
        let work = TempDir::new(&self.name)?;
        let object = work.0.join("kernels.o");
        generated
            .machine
            .write_to_file(&generated.module, FileType::Object, &object)
            .map_err(|e| BackendError::Target(format!("cannot write `{}`: {e}", object.display())))?;
        let wrapper = work.0.join("abi.c");
        std::fs::write(&wrapper, self.wrapper_source()?)
            .map_err(|e| BackendError::Target(format!("cannot write `{}`: {e}", wrapper.display())))?;
        cache::link_shared(&[wrapper, object], path, cache::uses_openmp(&generated))
    }

    /// The C header of the library's ABI.
    pub fn header(&self) -> String {
        let n = &self.name;
        let guard = format!("KILN_{}_H", n.to_ascii_uppercase());
        let mut h = String::new();
        let _ = writeln!(
            h,
            "/* lib{n}: the model `{}`, compiled ahead of time by kiln {}",
            comment_safe(&self.plan.graph.name),
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(h, " * for {} (CPU `{}`).", self.target.triple, comment_safe(&self.target.cpu));
        h.push_str(
            &HEADER_DOC.replace("NAMEU_", &format!("{}_", n.to_ascii_uppercase())).replace("NAME_", &format!("{n}_")),
        );
        let _ = writeln!(h, " * Inputs:");
        for (i, d) in self.inputs().iter().enumerate() {
            let _ = writeln!(h, " *   {i}: `{}` {}{:?} ({} bytes)", comment_safe(&d.name), d.dtype, d.shape, d.bytes());
        }
        let _ = writeln!(h, " * Outputs:");
        for (i, d) in self.outputs().iter().enumerate() {
            let _ = writeln!(h, " *   {i}: `{}` {}{:?} ({} bytes)", comment_safe(&d.name), d.dtype, d.shape, d.bytes());
        }
        let _ = writeln!(h, " * Arena (allocated by {n}_create): {} bytes.\n */", self.plan.arena_bytes);
        let _ = writeln!(h, "#ifndef {guard}\n#define {guard}\n");
        h.push_str("#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
        h.push_str(
            "/* Shared by every kiln library header (ABI version 1). */\n#ifndef KILN_ABI_V1\n#define KILN_ABI_V1\n\n",
        );
        h.push_str("/* Element types: ONNX TensorProto.DataType codes. */\ntypedef enum kiln_dtype {\n");
        for d in DType::ALL {
            if !matches!(d, DType::I4 | DType::U4) {
                let _ = writeln!(h, "    KILN_DTYPE_{} = {},", d.name().to_ascii_uppercase(), d.onnx_code());
            }
        }
        h.push_str("} kiln_dtype;\n\n");
        h.push_str(HEADER_TYPES);
        h.push_str("#endif /* KILN_ABI_V1 */\n\n");
        let _ = writeln!(h, "/* An instance of the model: its scratch arena. Runs on one instance are\n * sequential; use one instance per thread for concurrent runs. */");
        let _ = writeln!(h, "typedef struct {n}_model {n}_model;\n");
        let _ = writeln!(h, "#define {}_NUM_INPUTS {}", n.to_ascii_uppercase(), self.plan.graph.inputs().len());
        let _ = writeln!(h, "#define {}_NUM_OUTPUTS {}\n", n.to_ascii_uppercase(), self.plan.graph.outputs().len());
        let _ = writeln!(
            h,
            "/* Allocates an instance (its arena) into *model. num_threads is the number\n * of threads its runs may use; 0 or less: libomp's default (OMP_NUM_THREADS,\n * else every core). */\nint {n}_create({n}_model **model, int num_threads);\n"
        );
        let _ = writeln!(
            h,
            "/* Runs the model. inputs[i] points at input i's data, outputs[i] at\n * output i's buffer, each row-major and descriptor.bytes long, owned by\n * the caller; no buffer may overlap an output. Kernels keep per-thread\n * scratch on the stack: the calling thread needs 1 MiB of it free (libomp's\n * workers have OMP_STACKSIZE, 4 MiB by default). Returns KILN_OK, or a\n * status with a message from {n}_last_error(). */\nint {n}_run({n}_model *model, const void *const *inputs, void *const *outputs);\n"
        );
        let _ = writeln!(
            h,
            "/* Sets the threads the instance's next runs may use (as in {n}_create). */\nint {n}_set_threads({n}_model *model, int num_threads);\n"
        );
        let _ = writeln!(h, "/* Frees an instance (NULL is allowed). */\nvoid {n}_destroy({n}_model *model);\n");
        let _ = writeln!(h, "/* Number of inputs / outputs, and descriptor i (NULL when out of range).\n * Descriptors are static: valid for as long as the library is loaded. */");
        let _ = writeln!(h, "size_t {n}_num_inputs(void);\nsize_t {n}_num_outputs(void);");
        let _ = writeln!(
            h,
            "const kiln_tensor_desc *{n}_input(size_t i);\nconst kiln_tensor_desc *{n}_output(size_t i);\n"
        );
        let _ = writeln!(
            h,
            "/* The message of this thread's last failed call (\"\" if none). */\nconst char *{n}_last_error(void);\n"
        );
        let _ =
            writeln!(h, "/* The target triple and CPU the code was generated for. */\nconst char *{n}_target(void);\n");
        h.push_str("#ifdef __cplusplus\n}\n#endif\n\n");
        let _ = writeln!(h, "#endif /* {guard} */");
        h
    }

    /// The C source of the ABI wrapper: the header, the descriptor and
    /// error tables, and the functions.
    fn wrapper_source(&self) -> Result<String> {
        let n = &self.name;
        let plan = &self.plan;
        let (n_in, n_out, n_const) = (plan.graph.inputs().len(), plan.graph.outputs().len(), plan.consts.len());
        let mut c = String::new();
        c.push_str("/* Generated by kiln: the C ABI of an ahead-of-time compiled model. */\n");
        c.push_str(&self.header());
        c.push_str("\n#include <stdarg.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n");
        c.push_str("#define API __attribute__((visibility(\"default\")))\n\n");
        let _ = writeln!(c, "extern int {n}_entry(void **buffers);");
        let _ = writeln!(c, "extern void *const {n}_consts[];\n");
        let descs = |c: &mut String, what: &str, list: &[TensorDesc]| {
            for (i, d) in list.iter().enumerate() {
                let dims: Vec<String> = d.shape.iter().map(|s| format!("{s}")).collect();
                let dims = if dims.is_empty() { "0".to_string() } else { dims.join(", ") };
                let _ = writeln!(c, "static const int64_t {what}_shape{i}[] = {{{dims}}};");
            }
            let _ = writeln!(c, "static const kiln_tensor_desc {what}_descs[] = {{");
            for (i, d) in list.iter().enumerate() {
                let _ = writeln!(
                    c,
                    "    {{{}, {}, {}, {what}_shape{i}, {}u, {}u}},",
                    c_string(&d.name),
                    d.dtype.onnx_code(),
                    d.shape.len(),
                    d.shape.iter().product::<usize>(),
                    d.bytes()
                );
            }
            if list.is_empty() {
                c.push_str("    {0, 0, 0, 0, 0u, 0u},\n");
            }
            c.push_str("};\n");
        };
        descs(&mut c, "input", &self.inputs());
        descs(&mut c, "output", &self.outputs());
        c.push_str("\n/* Per step, what a failed data check there means (status 1 + step). */\n");
        c.push_str("static const char *const step_errors[] = {\n");
        for s in 0..plan.steps.len() {
            let _ = writeln!(c, "    {},", c_string(&step_failure(plan, s).to_string()));
        }
        c.push_str("    0,\n};\n\n");
        let _ = writeln!(c, "#define ARENA_BYTES {}u", plan.arena_bytes);
        let _ = writeln!(
            c,
            "#define N_IN {n_in}\n#define N_OUT {n_out}\n#define N_CONST {n_const}\n#define N_STEPS {}",
            plan.steps.len()
        );
        let _ = writeln!(c, "#define N_BUFFERS {}", crate::codegen::buffer_count(plan));
        c.push_str("/* Inputs, outputs, constants, the arena, the run configuration. */\n");
        c.push_str("_Static_assert(N_BUFFERS == N_IN + N_OUT + N_CONST + 2, \"the entry's buffer table\");\n");
        let _ = writeln!(c, "#define TARGET {}", c_string(&format!("{} {}", self.target.triple, self.target.cpu)));
        let _ = writeln!(c, "#define ALIGN {}", plan::ALIGN);
        c.push_str(&self.cpu_check_source()?);
        c.push_str(&WRAPPER_BODY.replace("PFX_", &format!("{n}_")));
        Ok(c)
    }

    /// `missing_cpu_feature()`: the first instruction-set extension the
    /// code may use that the running CPU lacks, or NULL; `NAME_create`
    /// refuses such a CPU rather than let a run die of an illegal
    /// instruction. Checks the extensions that both the compiler's
    /// `__builtin_cpu_supports` and LLVM know (x86-64 only).
    fn cpu_check_source(&self) -> Result<String> {
        const CHECKED: [&str; 16] = [
            "sse4.1",
            "sse4.2",
            "sse4a",
            "avx",
            "avx2",
            "fma",
            "bmi",
            "bmi2",
            "avx512f",
            "avx512vl",
            "avx512bw",
            "avx512dq",
            "avx512cd",
            "avx512vbmi",
            "avx512vnni",
            "avx512bf16",
        ];
        let enabled = jit::enabled_features(&self.target)?;
        let mut c = String::from("static const char *missing_cpu_feature(void) {\n");
        c.push_str("#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))\n    __builtin_cpu_init();\n");
        for feature in CHECKED.iter().filter(|f| enabled.iter().any(|e| e == *f)) {
            let _ = writeln!(c, "    if (!__builtin_cpu_supports(\"{feature}\")) return \"{feature}\";");
        }
        c.push_str("#endif\n    return 0;\n}\n");
        Ok(c)
    }
}

/// The error a failed data check at `step` (the entry returned 1 + step)
/// stands for, naming the node and its op.
pub(crate) fn step_failure(plan: &Plan, step: usize) -> BackendError {
    let (node, op) = match plan.steps.get(step) {
        Some(Step::Node(id)) => (plan.graph.node(*id).name.clone(), plan.graph.node(*id).op.name()),
        // Only integer Div/Mod make a fused group fail; name the first.
        Some(Step::Fused { nodes, .. }) => nodes
            .iter()
            .map(|&n| plan.graph.node(n))
            .find(|n| matches!(n.op, kiln_ir::op::Op::Mod { .. } | kiln_ir::op::Op::Binary(kiln_ir::op::BinaryOp::Div)))
            .map_or((String::new(), "kernel"), |n| (n.name.clone(), n.op.name())),
        _ => (String::new(), "kernel"),
    };
    let what = match op {
        "Gather" | "GatherElements" | "GatherND" | "ScatterND" => "an index is outside the indexed axis",
        "Div" | "Mod" => "integer division by zero",
        "RotaryEmbedding" => "a position id is outside the cos/sin caches",
        _ => "a label is outside the classes (and is not the ignore_index)",
    };
    BackendError::node(node, op, what)
}

/// `s` as a C string literal: quotes, backslashes and anything outside
/// printable ASCII escaped (octal, so that no following digit can extend it).
fn c_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'?' => out.push_str("\\?"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
    out
}

/// Text safe inside a C block comment.
fn comment_safe(s: &str) -> String {
    s.replace("*/", "* /").replace(|c: char| c.is_control(), " ")
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("kiln-aot-{name}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BackendError::Target(format!("cannot create `{}`: {e}", dir.display())))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ABI's description, at the top of every header.
const HEADER_DOC: &str = r#" *
 * C ABI (version 1). Every symbol starts with the library's name, so the
 * libraries of several models can be loaded into one process.
 *
 *   NAME_model *m;
 *   if (NAME_create(&m, 0) != KILN_OK) { fprintf(stderr, "%s\n", NAME_last_error()); ... }
 *   const void *inputs[NAMEU_NUM_INPUTS] = { ... };   caller-owned, filled
 *   void *outputs[NAMEU_NUM_OUTPUTS] = { ... };       caller-owned, written
 *   int status = NAME_run(m, inputs, outputs);
 *   NAME_destroy(m);
 *
 * - Shapes are fixed when the library is compiled; NAME_input(i) and
 *   NAME_output(i) describe each tensor (name, dtype, rank, shape, element
 *   count, bytes). Buffers are dense and row-major; no alignment is needed.
 * - The library allocates only in NAME_create (the scratch arena shared by
 *   all intermediate results); NAME_run allocates nothing.
 * - Errors are status codes (kiln_status) with a message from
 *   NAME_last_error(), kept per thread. KILN_ERROR_DATA means the data was
 *   invalid for the model (a class label or gather index out of range,
 *   say); the message names the node and op, and outputs are unspecified.
 * - The weights are compiled into the library: it needs no other file.
 *
"#;

/// The ABI's shared types (guarded by `KILN_ABI_V1` in the header).
const HEADER_TYPES: &str = r#"/* Status codes returned by NAME_create and NAME_run. */
typedef enum kiln_status {
    KILN_OK = 0,
    KILN_ERROR_ARGUMENT = 1, /* a NULL pointer where a buffer or handle is needed */
    KILN_ERROR_MEMORY = 2,   /* the arena could not be allocated */
    KILN_ERROR_DATA = 3,     /* the input data is invalid for the model */
    KILN_ERROR_CPU = 4       /* this CPU lacks an extension the code was compiled for */
} kiln_status;

/* One input or output. */
typedef struct kiln_tensor_desc {
    const char *name;     /* the graph value's name */
    int32_t dtype;        /* a kiln_dtype */
    int32_t rank;         /* number of dims */
    const int64_t *shape; /* rank dims */
    uint64_t count;       /* elements: the product of the dims */
    uint64_t bytes;       /* bytes of the buffer */
} kiln_tensor_desc;

"#;

/// The ABI's functions; `PFX_` becomes the library's prefix.
const WRAPPER_BODY: &str = r#"
struct PFX_model {
    void *arena_block; /* as allocated */
    void *arena;       /* aligned to ALIGN */
    int32_t num_threads; /* 0: libomp's default (OMP_NUM_THREADS, else every core) */
};

static _Thread_local char last_error[1024];

static int fail(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return status;
}

API int PFX_create(PFX_model **model, int num_threads) {
    if (!model) return fail(KILN_ERROR_ARGUMENT, "PFX_create: model is NULL");
    *model = 0;
    const char *missing = missing_cpu_feature();
    if (missing)
        return fail(KILN_ERROR_CPU, "PFX_create: this CPU lacks %s, which the code (compiled for %s) may use", missing,
                    TARGET);
    PFX_model *m = (PFX_model *)calloc(1, sizeof *m);
    if (!m) return fail(KILN_ERROR_MEMORY, "PFX_create: out of memory");
    m->arena_block = malloc(ARENA_BYTES + ALIGN);
    if (!m->arena_block) {
        free(m);
        return fail(KILN_ERROR_MEMORY, "PFX_create: cannot allocate the %lu-byte arena", (unsigned long)ARENA_BYTES);
    }
    m->arena = (void *)(((uintptr_t)m->arena_block + (ALIGN - 1)) & ~(uintptr_t)(ALIGN - 1));
    m->num_threads = num_threads > 0 ? num_threads : 0;
    *model = m;
    last_error[0] = 0;
    return KILN_OK;
}

API int PFX_run(PFX_model *model, const void *const *inputs, void *const *outputs) {
    void *buffers[N_BUFFERS];
    size_t b = 0;
    if (!model) return fail(KILN_ERROR_ARGUMENT, "PFX_run: model is NULL");
    if (N_IN > 0 && !inputs) return fail(KILN_ERROR_ARGUMENT, "PFX_run: inputs is NULL");
    if (N_OUT > 0 && !outputs) return fail(KILN_ERROR_ARGUMENT, "PFX_run: outputs is NULL");
    for (size_t i = 0; i < N_IN; i++) {
        if (!inputs[i] && input_descs[i].bytes > 0)
            return fail(KILN_ERROR_ARGUMENT, "PFX_run: input %lu (`%s`) is NULL", (unsigned long)i, input_descs[i].name);
        buffers[b++] = (void *)inputs[i];
    }
    for (size_t i = 0; i < N_OUT; i++) {
        if (!outputs[i] && output_descs[i].bytes > 0)
            return fail(KILN_ERROR_ARGUMENT, "PFX_run: output %lu (`%s`) is NULL", (unsigned long)i, output_descs[i].name);
        buffers[b++] = outputs[i];
    }
    for (size_t i = 0; i < N_CONST; i++) buffers[b++] = PFX_consts[i];
    buffers[b++] = model->arena;
    /* The run configuration: the thread count (0: libomp's default). */
    int32_t threads = model->num_threads;
    buffers[b++] = &threads;
    int status = PFX_entry(buffers);
    if (status != 0) {
        const char *what = status >= 1 && status <= N_STEPS ? step_errors[status - 1] : "unknown failure";
        return fail(KILN_ERROR_DATA, "PFX_run: %s", what);
    }
    return KILN_OK;
}

API int PFX_set_threads(PFX_model *model, int num_threads) {
    if (!model) return fail(KILN_ERROR_ARGUMENT, "PFX_set_threads: model is NULL");
    model->num_threads = num_threads > 0 ? num_threads : 0;
    return KILN_OK;
}

API void PFX_destroy(PFX_model *model) {
    if (!model) return;
    free(model->arena_block);
    free(model);
}

API size_t PFX_num_inputs(void) { return N_IN; }
API size_t PFX_num_outputs(void) { return N_OUT; }
API const kiln_tensor_desc *PFX_input(size_t i) { return i < N_IN ? &input_descs[i] : 0; }
API const kiln_tensor_desc *PFX_output(size_t i) { return i < N_OUT ? &output_descs[i] : 0; }
API const char *PFX_last_error(void) { return last_error; }
API const char *PFX_target(void) { return TARGET; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_escape_everything_unusual() {
        assert_eq!(c_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(c_string("é1"), "\"\\303\\2511\"");
        assert_eq!(c_string("??="), "\"\\?\\?=\"");
    }

    #[test]
    fn identifiers() {
        assert_eq!(identifier_from("gpt2-small"), "gpt2_small");
        assert_eq!(identifier_from("2x"), "m_2x");
        assert!(check_identifier("gpt2").is_ok());
        assert!(check_identifier("2x").is_err());
        assert!(check_identifier("a-b").is_err());
        assert!(check_identifier("__x").is_err());
        assert!(check_identifier("").is_err());
    }
}
