//! Links LLVM's OpenMP runtime (libomp), which the generated code's
//! parallel kernels fork through. The JIT resolves the runtime's entry
//! points to the addresses this link provides (see `src/jit.rs`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KILN_LIBOMP_DIR");
    let dir = std::env::var("KILN_LIBOMP_DIR").unwrap_or_else(|_| "/usr/lib/llvm-22/lib".to_string());
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=dylib=omp");
}
