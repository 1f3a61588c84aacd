//! Links LLVM's OpenMP runtime (libomp), which the generated code's
//! parallel kernels fork through (the JIT resolves the runtime's entry
//! points to the addresses this link provides, see `src/jit.rs`), and
//! builds the C++ shim that asks LLVM's target registry whether a CPU name
//! is valid (cpp/cpu_names.cpp), against the LLVM that llvm-sys links.
//! It also fingerprints the code generator's sources for the compile
//! cache's key.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    code_generator_fingerprint();
    println!("cargo:rerun-if-changed=cpp/cpu_names.cpp");
    println!("cargo:rerun-if-env-changed=KILN_LIBOMP_DIR");
    println!("cargo:rerun-if-env-changed=LLVM_SYS_221_PREFIX");
    let dir = std::env::var("KILN_LIBOMP_DIR").unwrap_or_else(|_| "/usr/lib/llvm-22/lib".to_string());
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=omp");

    // The same LLVM as llvm-sys: its prefix variable, else llvm-config on PATH.
    let llvm_config = match std::env::var_os("LLVM_SYS_221_PREFIX") {
        Some(prefix) => PathBuf::from(prefix).join("bin").join("llvm-config"),
        None => PathBuf::from("llvm-config"),
    };
    let include = Command::new(&llvm_config)
        .arg("--includedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| panic!("cannot run `{}` to find LLVM's headers", llvm_config.display()));
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(include)
        .define("_GNU_SOURCE", None)
        .define("__STDC_CONSTANT_MACROS", None)
        .define("__STDC_FORMAT_MACROS", None)
        .define("__STDC_LIMIT_MACROS", None)
        .flag("-fno-exceptions")
        .flag("-fno-rtti")
        .warnings(false)
        .file("cpp/cpu_names.cpp")
        .compile("kiln_cpu_names");
}

/// Hashes every file under `src/` (path and bytes, in sorted order) into
/// `KILN_CODEGEN_FINGERPRINT`: the compile cache keys libraries by it, so a
/// kiln built from changed code generator sources never loads a library
/// an older one generated, even at the same crate version.
fn code_generator_fingerprint() {
    println!("cargo:rerun-if-changed=src");
    fn walk(dir: &std::path::Path, files: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(std::path::Path::new("src"), &mut files);
    files.sort();
    // FNV-1a, 64 bits: stable across toolchains, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in &files {
        feed(file.to_string_lossy().as_bytes());
        feed(&std::fs::read(file).unwrap_or_default());
    }
    println!("cargo:rustc-env=KILN_CODEGEN_FINGERPRINT={h:016x}");
}
