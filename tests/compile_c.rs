//! `kiln compile`: the shared library and its C ABI driven by the C example
//! (examples/c/run_model.c, built with the system `cc`), the --emit
//! formats, the errors, and the compile cache of `kiln run` / `kiln bench`.

mod common;

use common::*;
use kiln::ir::onnx::import::read_tensor_pb;
use kiln::ir::op::{BinaryOp, Op, UnaryOp};
use kiln::ir::{DType, Dim, Graph, Tensor, TensorType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The test-data inputs and reference outputs of an example model.
fn test_data(model_dir: &Path) -> (Vec<Tensor>, Vec<Tensor>) {
    let dir = model_dir.join("test_data_set_0");
    let read = |prefix: &str| -> Vec<Tensor> {
        (0..)
            .map(|k| dir.join(format!("{prefix}_{k}.pb")))
            .take_while(|p| p.is_file())
            .map(|p| read_tensor_pb(&p).expect("the example's test data reads").1)
            .collect()
    };
    (read("input"), read("output"))
}

/// `--dim NAME=VALUE` arguments that give the model's symbolic input dims
/// the sizes of `inputs`.
fn dim_args(model: &Path, inputs: &[Tensor]) -> Vec<String> {
    let graph = kiln::ir::io::load(model).expect("the example model loads");
    let mut dims = BTreeMap::new();
    for (&v, t) in graph.inputs().iter().zip(inputs) {
        let ty = graph.value(v).ty.as_ref().expect("example inputs are typed");
        for (d, &n) in ty.shape.iter().zip(t.shape()) {
            if let Dim::Sym(p) = d {
                if let [s] = p.symbols().as_slice() {
                    dims.insert(s.to_string(), n);
                }
            }
        }
    }
    dims.into_iter().map(|(s, n)| format!("--dim={s}={n}")).collect()
}

/// Runs `kiln` with string arguments (and extra environment).
fn kiln_with(args: &[String], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the kiln binary starts")
}

/// Compiles examples/c/run_model.c against library `lib<name>.so` and
/// header `<name>.h` in `dir`.
fn build_runner(dir: &Path, name: &str) -> PathBuf {
    let source = kiln_test_support::repo_root().join("examples/c/run_model.c");
    let exe = dir.join(format!("run_{name}"));
    let out = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-DKILN_HEADER=\"{name}.h\""))
        .arg(format!("-DKILN_NAME={name}"))
        .arg("-I")
        .arg(dir)
        .arg(&source)
        .arg("-L")
        .arg(dir)
        .arg(format!("-l{name}"))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc starts");
    assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// Writes each input's raw bytes to a file, for run_model.
fn write_raw_inputs(dir: &Path, inputs: &[Tensor]) -> Vec<PathBuf> {
    inputs
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let path = dir.join(format!("input_{k}.bin"));
            std::fs::write(&path, t.to_raw_le()).expect("the input file is written");
            path
        })
        .collect()
}

/// Parses run_model's output: per output, its name, dtype name, shape and
/// elements.
fn parse_outputs(text: &str) -> Vec<(String, Tensor)> {
    let mut outputs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(header) = lines.next() {
        let rest = header.strip_prefix("output ").unwrap_or_else(|| panic!("unexpected line `{header}`"));
        let mut words = rest.splitn(4, ' ');
        let (_index, name, dtype, shape) = (words.next(), words.next(), words.next(), words.next());
        let name = name.expect("an output name").to_string();
        let dtype = DType::from_name(dtype.expect("a dtype")).expect("a known dtype");
        let shape: Vec<usize> = shape
            .expect("a shape")
            .trim_matches(|c| c == '[' || c == ']')
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("a dim"))
            .collect();
        let count: usize = shape.iter().product();
        let values: Vec<f64> =
            (0..count).map(|_| lines.next().expect("an element").parse().expect("a number")).collect();
        outputs.push((name, Tensor::from_f64s(dtype, &shape, &values)));
    }
    outputs
}

fn run_runner(exe: &Path, inputs: &[PathBuf]) -> std::process::Output {
    Command::new(exe).args(inputs).output().expect("run_model starts")
}

/// Compiles `model` into `dir/lib<name>.so` with `dir/<name>.h`.
fn compile_library(model: &Path, dir: &Path, name: &str, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "compile".into(),
        model.display().to_string(),
        "-o".into(),
        dir.join(format!("lib{name}.so")).display().to_string(),
        "--header".into(),
        dir.join(format!("{name}.h")).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    assert_ok(&kiln_with(&args, &[]), &format!("kiln compile {}", model.display()));
}

/// A library compiled from an example model, run by the C example, gives
/// the reference outputs (onnxruntime's, rtol 1e-4, atol 1e-5).
#[test]
fn c_example_matches_reference_outputs() {
    let work = tempfile::tempdir().expect("a temp dir");
    for (model, name) in [("gpt2_fused", "gpt2"), ("bert_fused", "bert")] {
        let dir = model_dir(model);
        let onnx = dir.join("model.onnx");
        let (inputs, expected) = test_data(&dir);
        let lib = work.path().join(format!("lib{name}.so"));
        let header = work.path().join(format!("{name}.h"));
        let mut args: Vec<String> = vec![
            "compile".into(),
            onnx.display().to_string(),
            "-o".into(),
            lib.display().to_string(),
            "--header".into(),
            header.display().to_string(),
        ];
        args.extend(dim_args(&onnx, &inputs));
        let out = kiln_with(&args, &[]);
        assert_ok(&out, &format!("kiln compile {model}"));
        assert!(stdout(&out).contains(&format!("{name}_create")), "{}", stdout(&out));
        let exe = build_runner(work.path(), name);
        let files = write_raw_inputs(work.path(), &inputs);
        let run = run_runner(&exe, &files);
        assert!(run.status.success(), "{model}: run_model failed: {}", stderr(&run));
        let outputs = parse_outputs(&stdout(&run));
        assert_eq!(outputs.len(), expected.len(), "{model}: output count");
        for ((got_name, got), want) in outputs.iter().zip(&expected) {
            assert_allclose(got, want, &format!("{model} output `{got_name}`"));
        }
    }

    // Both libraries in one program: every symbol carries its library's
    // name, so they link side by side.
    let both = work.path().join("both.c");
    std::fs::write(
        &both,
        "#include \"gpt2.h\"\n#include \"bert.h\"\n#include <stdio.h>\n\
         int main(void) { gpt2_model *g; bert_model *b;\n\
           if (gpt2_create(&g, 0) || bert_create(&b, 1)) return 1;\n\
           printf(\"%zu %zu %s\\n\", gpt2_num_inputs(), bert_num_inputs(), gpt2_input(0)->name);\n\
           if (gpt2_input(99) != 0 || bert_run(b, 0, 0) != KILN_ERROR_ARGUMENT) return 2;\n\
           printf(\"%s\\n\", bert_last_error());\n\
           gpt2_destroy(g); bert_destroy(b); bert_destroy(0); return 0; }\n",
    )
    .expect("the source is written");
    let exe = work.path().join("both");
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(work.path())
        .arg(&both)
        .arg("-L")
        .arg(work.path())
        .args(["-lgpt2", "-lbert"])
        .arg(format!("-Wl,-rpath,{}", work.path().display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc starts");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).output().expect("the program starts");
    assert!(run.status.success(), "exit {:?}: {}", run.status, stderr(&run));
    let text = stdout(&run);
    assert!(text.starts_with("2 "), "{text}");
    assert!(text.contains("input_ids"), "{text}");
    assert!(text.contains("bert_run: inputs is NULL"), "{text}");
}

/// A label out of range: run returns KILN_ERROR_DATA with a message that
/// names the node and its op, instead of reading outside the weights.
#[test]
fn bad_label_is_an_error_naming_the_node() {
    let work = tempfile::tempdir().expect("a temp dir");
    let dir = model_dir("gpt2_fused");
    let onnx = dir.join("model.onnx");
    let (mut inputs, _) = test_data(&dir);
    let lib = work.path().join("libgpt.so");
    let header = work.path().join("gpt.h");
    let mut args: Vec<String> = vec![
        "compile".into(),
        onnx.display().to_string(),
        "-o".into(),
        lib.display().to_string(),
        "--header".into(),
        header.display().to_string(),
    ];
    args.extend(dim_args(&onnx, &inputs));
    assert_ok(&kiln_with(&args, &[]), "kiln compile");
    let exe = build_runner(work.path(), "gpt");
    let labels = &inputs[1];
    let mut values = labels.to_i64s();
    values[3] = 100_000;
    inputs[1] = Tensor::from_i64s(DType::I64, labels.shape(), &values);
    let files = write_raw_inputs(work.path(), &inputs);
    let run = run_runner(&exe, &files);
    assert_eq!(run.status.code(), Some(1), "{}", stdout(&run));
    let err = stderr(&run);
    assert!(err.contains("a label is outside the classes"), "{err}");
    assert!(err.contains("node `") && (err.contains("CrossEntropy") || err.contains("Loss")), "{err}");

    // A file of the wrong size is the C example's own error.
    std::fs::write(&files[0], [0u8; 3]).expect("written");
    let run = run_runner(&exe, &files);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains("must hold exactly"), "{}", stderr(&run));
}

/// y = relu(x) @ w + b: small enough to compile in a moment.
fn small_model(dir: &Path, weight_scale: f64) -> PathBuf {
    let mut g = Graph::new("small");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![Dim::sym("n"), Dim::Fixed(8)])).expect("input");
    let w: Vec<f64> = (0..8 * 4).map(|i| weight_scale * ((i % 7) as f64 - 3.0) / 4.0).collect();
    let w = g.add_initializer("w", Tensor::from_f64s(DType::F32, &[8, 4], &w)).expect("w");
    let b = g.add_initializer("b", Tensor::from_f64s(DType::F32, &[4], &[0.5, -0.5, 0.25, 0.0])).expect("b");
    let r = g.add_node("relu", Op::Unary(UnaryOp::Relu), vec![Some(x)], &["r"]).expect("relu");
    let r = g.node(r).output(0).expect("an output");
    let m = g.add_node("matmul", Op::MatMul, vec![Some(r), Some(w)], &["m"]).expect("matmul");
    let m = g.node(m).output(0).expect("an output");
    let y = g.add_node("bias", Op::Binary(BinaryOp::Add), vec![Some(m), Some(b)], &["y"]).expect("add");
    let y = g.node(y).output(0).expect("an output");
    g.add_output(y);
    kiln::ir::infer_types(&mut g).expect("types");
    let path = dir.join(format!("small_{weight_scale}.onnx"));
    kiln::ir::io::save(&g, &path).expect("saved");
    path
}

/// --emit writes the generated module: an ELF object, assembly text with
/// the entry, LLVM IR with `define` lines and the constants.
#[test]
fn emit_formats() {
    let work = tempfile::tempdir().expect("a temp dir");
    let model = small_model(work.path(), 1.0);
    let emit = |kind: &str, file: &str| -> Vec<u8> {
        let out_path = work.path().join(file);
        let args: Vec<String> = vec![
            "compile".into(),
            model.display().to_string(),
            "-o".into(),
            out_path.display().to_string(),
            "--emit".into(),
            kind.into(),
            "--dim".into(),
            "n=3".into(),
        ];
        let out = kiln_with(&args, &[]);
        assert_ok(&out, &format!("--emit {kind}"));
        assert!(stdout(&out).contains("entry small_entry"), "{}", stdout(&out));
        std::fs::read(&out_path).expect("the file exists")
    };
    let obj = emit("obj", "small.o");
    assert_eq!(&obj[..4], b"\x7fELF", "an ELF object");
    let asm = String::from_utf8(emit("asm", "small.s")).expect("assembly is text");
    assert!(asm.contains("small_entry:") && asm.contains(".text"), "{asm}");
    let ir = String::from_utf8(emit("llvm-ir", "small.ll")).expect("IR is text");
    assert!(ir.lines().any(|l| l.starts_with("define") && l.contains("@small_entry(")), "{ir}");
    assert!(ir.contains("@small_consts = hidden constant"), "{ir}");
    assert!(ir.contains("@small_const0 = private constant"), "{ir}");
    // The object links, with the header, into a working library too.
    let lib = work.path().join("libsmall.so");
    let args: Vec<String> = vec![
        "compile".into(),
        model.display().to_string(),
        "-o".into(),
        lib.display().to_string(),
        "--header".into(),
        work.path().join("small.h").display().to_string(),
        "--dim".into(),
        "n=3".into(),
        "-O0".into(),
    ];
    assert_ok(&kiln_with(&args, &[]), "kiln compile -O0");
    let exe = build_runner(work.path(), "small");
    let x = Tensor::from_f64s(DType::F32, &[3, 8], &(0..24).map(|i| (i as f64 - 10.0) / 3.0).collect::<Vec<_>>());
    let files = write_raw_inputs(work.path(), std::slice::from_ref(&x));
    let run = run_runner(&exe, &files);
    assert!(run.status.success(), "{}", stderr(&run));
    let graph = kiln::ir::io::load(&model).expect("loads");
    let want = kiln::ir::interp::run(&graph, &[("x".to_string(), x)]).expect("the interpreter runs");
    let got = parse_outputs(&stdout(&run));
    assert_allclose(&got[0].1, &want[0].1, "small y");
}

#[test]
fn compile_errors_are_clear() {
    let work = tempfile::tempdir().expect("a temp dir");
    let model = small_model(work.path(), 1.0);
    let lib = work.path().join("libsmall.so");
    let base: Vec<String> = vec!["compile".into(), model.display().to_string(), "-o".into(), lib.display().to_string()];
    let with = |extra: &[&str]| {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        kiln_with(&a, &[])
    };
    assert_user_error(&with(&[]), &["`x`", "axis 0", "`n`", "--dim n=VALUE"], "symbolic dim without --dim");
    assert_user_error(&with(&["--dim", "seq=3"]), &["--dim seq", "`n`"], "unknown --dim name");
    assert_user_error(
        &with(&["--dim", "n=3", "--target-cpu", "not-a-cpu"]),
        &["unknown CPU `not-a-cpu`"],
        "unknown --target-cpu",
    );
    assert_user_error(&with(&["--dim", "n=3", "--name", "9lives"]), &["`9lives`", "C identifier"], "bad --name");
    assert!(!lib.exists(), "nothing is written on an error");
    let gpt2 = model_dir("gpt2_fused");
    let run = kiln(&[
        &"run",
        &gpt2.join("model.onnx"),
        &"--inputs",
        &gpt2.join("test_data_set_0"),
        &"--backend",
        &"cpu",
        &"--target-cpu",
        &"skylake-avx513",
        &"--no-cache",
    ]);
    assert_user_error(&run, &["unknown CPU `skylake-avx513`", "skylake-avx512"], "kiln run --target-cpu");
}

/// The second `kiln run` (and `kiln bench`) loads the specialization from
/// the compile cache instead of generating code.
#[test]
fn second_run_hits_the_compile_cache() {
    let work = tempfile::tempdir().expect("a temp dir");
    let cache = work.path().join("cache");
    let dir = model_dir("gpt2_fused");
    let onnx = dir.join("model.onnx");
    let data = dir.join("test_data_set_0");
    let run_args: Vec<String> = vec![
        "run".into(),
        onnx.display().to_string(),
        "--backend".into(),
        "cpu".into(),
        "--inputs".into(),
        data.display().to_string(),
    ];
    let env = [("KILN_CACHE_DIR", cache.as_path())];
    let first = kiln_with(&run_args, &env);
    assert_ok(&first, "first run");
    assert!(stdout(&first).contains("compile cache miss"), "{}", stdout(&first));
    let libraries: Vec<_> = std::fs::read_dir(&cache).expect("the cache exists").flatten().collect();
    assert_eq!(libraries.len(), 1, "one library and no temporary files: {libraries:?}");
    assert!(libraries[0].file_name().to_string_lossy().ends_with(".so"));
    let second = kiln_with(&run_args, &env);
    assert_ok(&second, "second run");
    assert!(stdout(&second).contains("compile cache hit"), "{}", stdout(&second));
    assert!(stdout(&second).contains(" ok"), "the outputs still match:\n{}", stdout(&second));

    let mut no_cache = run_args.clone();
    no_cache.push("--no-cache".into());
    let off = kiln_with(&no_cache, &env);
    assert_ok(&off, "--no-cache");
    assert!(stdout(&off).contains("compile cache off"), "{}", stdout(&off));

    let bench_args: Vec<String> = vec![
        "bench".into(),
        onnx.display().to_string(),
        "--backend".into(),
        "cpu".into(),
        "--inputs".into(),
        data.display().to_string(),
        "--iterations".into(),
        "1".into(),
        "--json".into(),
    ];
    let bench = kiln_with(&bench_args, &env);
    assert_ok(&bench, "kiln bench");
    let json: serde_json::Value = serde_json::from_str(&stdout(&bench)).expect("bench prints JSON");
    assert_eq!(json["cache"], "hit", "{json}");
}

/// In one process: a cache hit generates no code (the backend counts
/// modules generated), and changed weights change the key.
#[test]
fn cache_hits_skip_codegen_and_the_key_covers_constants() {
    let work = tempfile::tempdir().expect("a temp dir");
    let cache = work.path().join("cache");
    let opts = kiln_backend_llvm::CompileOptions { cache_dir: Some(cache.clone()), ..Default::default() };
    let x = Tensor::from_f64s(DType::F32, &[2, 8], &(0..16).map(|i| (i as f64 - 5.0) / 2.0).collect::<Vec<_>>());
    let inputs = [("x".to_string(), x)];
    let run = |scale: f64| {
        let graph = kiln::ir::io::load(small_model(work.path(), scale)).expect("loads");
        let compiled = kiln_backend_llvm::compile(&graph, &opts).expect("compiles");
        let before = kiln_backend_llvm::codegen_runs();
        let info = compiled.specialization_for(&inputs).expect("specializes");
        let generated = kiln_backend_llvm::codegen_runs() - before;
        let got = compiled.run(&inputs).expect("runs");
        let want = kiln::ir::interp::run(&graph, &inputs).expect("the interpreter runs");
        assert_allclose(&got[0].1, &want[0].1, &format!("scale {scale}"));
        (info.cache.label(), generated)
    };
    // The other tests of this binary generate code only in `kiln`
    // processes, so this process's count is this test's.
    assert_eq!(run(1.0), ("miss", 1));
    assert_eq!(run(1.0), ("hit", 0), "a hit generates no code");
    assert_eq!(run(2.0), ("miss", 1), "other weights are another key");
    assert_eq!(run(2.0), ("hit", 0));
    assert_eq!(std::fs::read_dir(&cache).expect("the cache exists").count(), 2);
}

/// A softmax big enough for the backend's parallel kernel: the library
/// links libomp (and loads it: `ldd` finds it), and runs on one thread and
/// on two, both matching the interpreter.
#[test]
fn library_runs_on_several_threads() {
    let work = tempfile::tempdir().expect("a temp dir");
    let mut g = Graph::new("wide");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[64, 1024])).expect("input");
    let s = g.add_node("softmax", Op::Softmax { axis: -1 }, vec![Some(x)], &["y"]).expect("softmax");
    let y = g.node(s).output(0).expect("an output");
    g.add_output(y);
    kiln::ir::infer_types(&mut g).expect("types");
    let model = work.path().join("wide.onnx");
    kiln::ir::io::save(&g, &model).expect("saved");
    compile_library(&model, work.path(), "wide", &["-O0"]);
    let lib = work.path().join("libwide.so");
    let ldd = Command::new("ldd").arg(&lib).output().expect("ldd starts");
    let deps = stdout(&ldd);
    assert!(deps.contains("libomp"), "the parallel softmax needs libomp:\n{deps}");
    assert!(!deps.contains("not found"), "{deps}");
    let exe = build_runner(work.path(), "wide");
    let values: Vec<f64> = (0..64 * 1024).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
    let x = Tensor::from_f64s(DType::F32, &[64, 1024], &values);
    let files = write_raw_inputs(work.path(), std::slice::from_ref(&x));
    let want = kiln::ir::interp::run(&g, &[("x".to_string(), x)]).expect("the interpreter runs");
    for threads in ["1", "2"] {
        let run = Command::new(&exe).args(["--threads", threads]).args(&files).output().expect("run_model starts");
        assert!(run.status.success(), "{}", stderr(&run));
        let got = parse_outputs(&stdout(&run));
        assert_allclose(&got[0].1, &want[0].1, &format!("softmax on {threads} threads"));
    }
}

/// A library compiled for a CPU with extensions the running one lacks is
/// refused by `create` with KILN_ERROR_CPU and a message naming the
/// extension, rather than dying of an illegal instruction. znver4 has
/// AMD's SSE4a, which Intel CPUs lack; on an AMD host the library runs.
#[test]
fn library_checks_the_cpu_at_create() {
    let work = tempfile::tempdir().expect("a temp dir");
    let model = small_model(work.path(), 1.0);
    compile_library(&model, work.path(), "zen", &["--dim", "n=3", "--target-cpu", "znver4"]);
    let exe = build_runner(work.path(), "zen");
    let x = Tensor::from_f64s(DType::F32, &[3, 8], &[0.5; 24]);
    let files = write_raw_inputs(work.path(), std::slice::from_ref(&x));
    let run = run_runner(&exe, &files);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let host_has_sse4a = cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sse4a"));
    if host_has_sse4a {
        assert!(run.status.success(), "{}", stderr(&run));
    } else {
        assert_eq!(run.status.code(), Some(1));
        let err = stderr(&run);
        assert!(err.contains("zen_create: this CPU lacks sse4a") && err.contains("znver4"), "{err}");
    }
}
