//! The backward of `kiln::LinearCrossEntropy` as native code: the loss and
//! its gradients with respect to the hidden states, the head weight and the
//! bias, with the tile filtering of Cut Cross-Entropy. It mirrors
//! [`kiln_ir::interp::linear_cross_entropy_grad`] (same arguments, options
//! and result types), so callers can switch between the f64 reference and
//! this kernel.
//!
//! The kernel is generated for the exact shapes, dtypes and attributes of
//! a call and JIT-compiled through the same machinery as graphs; compiled
//! kernels are cached per thread, keyed by everything they depend on, so a
//! training loop with fixed shapes compiles once. See the `codegen::lce`
//! module for the tiling: the logits are recomputed tile by tile with a
//! register-blocked GEMM and never held whole; besides the inputs and the
//! gradients the working memory is a few tiles and four numbers per row.
//!
//! Arithmetic is in the inputs' dtype (f32 or f64), with the loss and the
//! `mean` denominator summed in f64 as the forward kernel does.

use crate::codegen::{self, Problem, ProblemError};
use crate::error::{BackendError, Result};
use crate::jit::{self, Jitted};
use crate::plan::ALIGN;
use crate::CompileOptions;
use kiln_ir::dtype::DType;
use kiln_ir::op::{LossReduction, Op};
use kiln_ir::tensor::Tensor;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

pub use kiln_ir::interp::{LceGradOptions, LceGradStats, LinearCrossEntropyGrad};

/// The node name errors carry: the kernel runs outside any graph.
const ERROR_NODE: &str = "linear_cross_entropy_grad";

thread_local! {
    /// Compiled backward kernels of this thread, by [`cache_key`].
    static KERNELS: RefCell<BTreeMap<String, Rc<Jitted>>> = const { RefCell::new(BTreeMap::new()) };
}

fn error(message: impl Into<String>) -> BackendError {
    BackendError::node(ERROR_NODE, "LinearCrossEntropy", message)
}

/// The loss and gradients of `kiln::LinearCrossEntropy`, computed by a
/// kernel generated for the host CPU (see [`linear_cross_entropy_grad_with`]).
pub fn linear_cross_entropy_grad(
    op: &Op,
    inputs: &[Option<Tensor>],
    grad_loss: &Tensor,
    options: &LceGradOptions,
) -> Result<LinearCrossEntropyGrad> {
    linear_cross_entropy_grad_with(op, inputs, grad_loss, options, &CompileOptions::default())
}

/// The loss and gradients of `kiln::LinearCrossEntropy` on the CPU
/// backend, for the target of `compile`.
///
/// Arguments are those of the reference,
/// [`kiln_ir::interp::linear_cross_entropy_grad`]: `op` an
/// [`Op::LinearCrossEntropy`]; `inputs` `hidden` `[N, d]`, `weight`
/// `[V, d]` or `[d, V]`, `labels` `[N]` (i32 or i64), optional `bias`
/// `[V]` and class `weight` `[V]` (the float inputs f32 or f64, all one
/// dtype); `grad_loss` the upstream gradient, a scalar for `mean` and
/// `sum`, `[N]` for `none` (any float dtype). Of the options,
/// `chunk_size` is the vocabulary tile (by default the op's `chunk_size`,
/// at most 256, which keeps a packed tile of the head in L2),
/// `row_block` the rows per tile of the backward pass, and
/// `skip_threshold` the filter: a tile (row block × vocabulary tile) in
/// which every `|∂l_i/∂x_ik|` is below it adds nothing to the gradients
/// (0 keeps every tile; the error bound is the reference's). The result's
/// `stats` count this kernel's tiles.
///
/// Errors ([`BackendError::Node`] naming op `LinearCrossEntropy`): another
/// op, missing inputs, unsupported dtypes, shapes that do not agree, a
/// `grad_loss` of the wrong shape, a chunk size or row block of 0, a
/// negative or non-finite threshold, a label outside `[0, V)` that is not
/// the `ignore_index`, and a target LLVM cannot generate code for.
pub fn linear_cross_entropy_grad_with(
    op: &Op,
    inputs: &[Option<Tensor>],
    grad_loss: &Tensor,
    options: &LceGradOptions,
    compile: &CompileOptions,
) -> Result<LinearCrossEntropyGrad> {
    if options.row_block == 0 {
        return Err(error("row_block must be at least 1"));
    }
    if options.chunk_size == Some(0) {
        return Err(error("chunk_size must be at least 1"));
    }
    if let Op::LinearCrossEntropy { chunk_size, .. } = op {
        if options.chunk_size.is_none() && *chunk_size < 1 {
            return Err(error("chunk_size must be at least 1"));
        }
    }
    let tau = options.skip_threshold as f64;
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(error(format!("skip_threshold must be finite and non-negative, found {tau}")));
    }
    let input = |slot: usize, what: &str| -> Result<Tensor> {
        inputs
            .get(slot)
            .and_then(Option::as_ref)
            .map(crate::standard_layout)
            .ok_or_else(|| error(format!("input {slot} ({what}) is missing")))
    };
    let optional = |slot: usize| inputs.get(slot).and_then(Option::as_ref).map(crate::standard_layout);
    let (hidden, weight, labels) = (input(0, "hidden")?, input(1, "weight")?, input(2, "labels")?);
    let (bias, class_w) = (optional(3), optional(4));
    let shape_of = |t: &Option<Tensor>| t.as_ref().map(|t| (t.dtype(), t.shape().to_vec()));
    let (bias_ty, class_ty) = (shape_of(&bias), shape_of(&class_w));
    let problem = codegen::problem_of(
        op,
        (hidden.dtype(), hidden.shape()),
        (weight.dtype(), weight.shape()),
        (labels.dtype(), labels.shape()),
        bias_ty.as_ref().map(|(d, s)| (*d, s.as_slice())),
        class_ty.as_ref().map(|(d, s)| (*d, s.as_slice())),
        options.chunk_size,
    )
    .map_err(|e| match e {
        ProblemError::Unsupported(m) => {
            BackendError::unsupported(ERROR_NODE, "LinearCrossEntropy", format!("{m} (f32 and f64 are supported)"))
        }
        ProblemError::Invalid(m) => error(m),
    })?;
    if !grad_loss.dtype().is_float() {
        return Err(error(format!("grad_loss must be a float tensor, found {}", grad_loss.dtype())));
    }
    let upstream_shape: &[usize] = if problem.reduction == LossReduction::None { &[problem.n] } else { &[] };
    if grad_loss.shape() != upstream_shape {
        return Err(error(format!(
            "grad_loss must have the loss's shape {upstream_shape:?} (reduction {:?}), found {:?}",
            problem.reduction,
            grad_loss.shape()
        )));
    }
    let dtype = problem.dtype;
    let upstream = Tensor::from_f64s(dtype, &[grad_loss.len().max(1)], &grad_loss.to_f64s());
    let row_block = options.row_block;

    let target = jit::target_info(compile)?;
    let key = format!(
        "{op:?}|{problem:?}|{row_block}|{}|{:?}|{}|{}|{:?}",
        options.skip_threshold.to_bits(),
        compile.target_cpu,
        target.cpu,
        target.features,
        compile.target_features
    );
    let kernel = KERNELS.with(|cache| cache.borrow().get(&key).cloned());
    let kernel = match kernel {
        Some(k) => k,
        None => {
            let jitted = jit::compile_module("linear_cross_entropy_grad", &target, compile, &|cg| {
                codegen::emit_backward_module(cg, &problem, row_block, tau)
            })?;
            let k = Rc::new(jitted);
            KERNELS.with(|cache| cache.borrow_mut().insert(key, k.clone()));
            k
        }
    };
    run(&kernel, &problem, row_block, [&hidden, &weight, &labels], bias.as_ref(), class_w.as_ref(), &upstream)
}

/// Allocates the outputs and scratch and calls the compiled kernel.
fn run(
    kernel: &Jitted,
    p: &Problem,
    row_block: usize,
    [hidden, weight, labels]: [&Tensor; 3],
    bias: Option<&Tensor>,
    class_w: Option<&Tensor>,
    upstream: &Tensor,
) -> Result<LinearCrossEntropyGrad> {
    let dtype = p.dtype;
    let loss_shape: &[usize] = if p.reduction == LossReduction::None { &[p.n] } else { &[] };
    let mut loss = crate::zeroed(dtype, loss_shape);
    let mut d_hidden = crate::zeroed(dtype, &[p.n, p.d]);
    let mut d_weight = crate::zeroed(dtype, weight.shape());
    let mut d_bias = bias.map(|_| crate::zeroed(dtype, &[p.vocab]));
    let mut stats = crate::zeroed(DType::I64, &[2]);
    let elem = if dtype == DType::F64 { 8 } else { 4 };
    let scratch_bytes = codegen::backward_scratch(p, row_block).total * elem;
    let mut scratch = vec![0u8; scratch_bytes + ALIGN];
    let scratch_ptr = {
        let ptr = scratch.as_mut_ptr();
        // SAFETY: the offset is below ALIGN and the vector has ALIGN spare bytes.
        unsafe { ptr.add(ptr.align_offset(ALIGN)) }
    };
    let mut_ptr = |t: &mut Tensor| kiln_ir::for_each_tensor!(t, a => a.as_mut_ptr().cast::<u8>());
    let ptr = |t: &Tensor| kiln_ir::for_each_tensor!(t, a => a.as_ptr() as *mut u8);
    let mut buffers: Vec<*mut u8> = vec![mut_ptr(&mut loss), mut_ptr(&mut d_hidden), mut_ptr(&mut d_weight)];
    if let Some(db) = d_bias.as_mut() {
        buffers.push(mut_ptr(db));
    }
    buffers.push(mut_ptr(&mut stats));
    buffers.extend([ptr(hidden), ptr(weight), ptr(labels)]);
    buffers.extend(bias.map(ptr));
    buffers.extend(class_w.map(ptr));
    buffers.push(ptr(upstream));
    buffers.push(scratch_ptr);
    if buffers.len() != codegen::backward_buffer_count(p) {
        return Err(BackendError::Llvm(format!(
            "the backward kernel takes {} buffers, {} were bound",
            codegen::backward_buffer_count(p),
            buffers.len()
        )));
    }
    // SAFETY: every buffer is contiguous (standard layout) with the shapes
    // and dtypes the kernel was generated for (checked by `problem_of` and
    // above), the outputs and scratch were allocated here at their full
    // sizes, and the kernel writes only those.
    let status = unsafe { kernel.call(&buffers) };
    drop(scratch);
    if status != 0 {
        return Err(error("a label is outside the classes (and is not the ignore_index)"));
    }
    let counts = stats.to_i64s();
    Ok(LinearCrossEntropyGrad {
        loss,
        d_hidden,
        d_weight,
        d_bias,
        stats: LceGradStats { tiles: counts[0] as usize, skipped: counts[1] as usize },
    })
}
