//! Links LLVM's OpenMP runtime (libomp), which the generated code's
//! parallel kernels fork through (the JIT resolves the runtime's entry
//! points to the addresses this link provides, see `src/jit.rs`), and
//! builds the C++ shim that asks LLVM's target registry whether a CPU name
//! is valid (cpp/cpu_names.cpp), against the LLVM that llvm-sys links.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
