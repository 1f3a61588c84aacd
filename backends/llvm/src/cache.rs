//! The compile cache: each specialization's machine code, kept as a shared
//! library on disk so that a later process (a second `kiln run` or `kiln
//! bench`) loads it instead of generating code again.
//!
//! - **Key.** A 128-bit FNV-1a hash of everything the generated code
//!   depends on: kiln's version, a fingerprint of the code generator's
//!   sources (so a rebuilt kiln never loads an older kiln's code), the
//!   cache format, the target (triple,
//!   CPU, features, vector width), the compile options, and the plan: every
//!   node's op, attributes (tensor attributes by their bytes) and wiring,
//!   every value's static type and initializer bytes (small constants are
//!   inlined into the code), the kernel steps and the memory plan. Two plans
//!   with the same key generate the same module.
//! - **Contents.** `<key>.so` exports `kiln_entry` with the JIT's calling
//!   convention (the buffer table: inputs, outputs, constants, arena). The
//!   constants are not in the library: the caller passes them in the table,
//!   as with the JIT.
//! - **Concurrency.** A miss writes the object and links the library under
//!   names unique to the process and moment, then renames the library into
//!   place; rename is atomic, so a concurrent reader sees either no file or
//!   a whole one, and two writers of one key write the same bytes.
//! - **Failures.** The cache is an optimization: when the directory cannot
//!   be written or the system C compiler cannot link, the specialization is
//!   JIT-compiled as without a cache, and [`CacheUse::Unavailable`] says why.

use crate::error::{BackendError, Result};
use crate::jit::{self, Generated, Jitted, TargetInfo};
use crate::plan::Plan;
use crate::CompileOptions;
use inkwell::targets::{FileType, RelocMode};
use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};

/// Bump when the library's contents or calling convention change, so that
/// libraries written by an older kiln are never loaded.
const FORMAT: &str = "kiln-cache-1";

/// What the compile cache did for one specialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// No cache directory was configured: code was JIT-compiled.
    Off,
    /// The library was found and loaded: no code was generated.
    Hit(PathBuf),
    /// Code was generated and written to this library, which was loaded.
    Miss(PathBuf),
    /// Code was generated and JIT-compiled because the cache could not be
    /// used (the reason is given).
    Unavailable(String),
}

impl CacheUse {
    /// `hit`, `miss`, `off` or `unavailable`, for reports.
    pub fn label(&self) -> &'static str {
        match self {
            CacheUse::Off => "off",
            CacheUse::Hit(_) => "hit",
            CacheUse::Miss(_) => "miss",
            CacheUse::Unavailable(_) => "unavailable",
        }
    }
}

/// The default cache directory: `$KILN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`; `None` when none of these
/// variables is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("KILN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kiln")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("kiln")))
}

/// JIT-compiles `plan`, or with `opts.cache_dir` set, loads it from the
/// cache or generates it into the cache.
pub(crate) fn compile(plan: &Plan, target: &TargetInfo, opts: &CompileOptions) -> Result<(Jitted, CacheUse)> {
    let Some(dir) = &opts.cache_dir else {
        return Ok((jit::compile_plan(plan, target, opts)?, CacheUse::Off));
    };
    let key = key(plan, target, opts);
    let path = dir.join(format!("{key}.so"));
    if path.is_file() {
        // A file that does not load (truncated by a full disk, say) is
        // regenerated below rather than reported.
        if let Ok(jitted) = load(&path) {
            return Ok((jitted, CacheUse::Hit(path)));
        }
    }
    let generated = jit::generate(plan, target, opts, RelocMode::PIC)?;
    match store(&generated, dir, &key, &path).and_then(|()| load(&path)) {
        Ok(jitted) => Ok((jitted.with_ir(generated.ir_unoptimized, generated.ir_optimized), CacheUse::Miss(path))),
        Err(e) => Ok((jit::jit(generated)?, CacheUse::Unavailable(e.to_string()))),
    }
}

/// Writes the module as an object file and links it into `path`.
fn store(generated: &Generated, dir: &Path, key: &str, path: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, "cannot create the cache directory", &e))?;
    let unique = format!(
        "{key}.{}.{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let object = dir.join(format!("{unique}.o"));
    let temp = dir.join(format!("{unique}.so.tmp"));
    let outcome = (|| {
        generated
            .machine
            .write_to_file(&generated.module, FileType::Object, &object)
            .map_err(|e| BackendError::Llvm(format!("cannot write `{}`: {e}", object.display())))?;
        link_shared(std::slice::from_ref(&object), &temp, uses_openmp(generated))?;
        std::fs::rename(&temp, path).map_err(|e| cache_error(path, "cannot move the library into place", &e))
    })();
    let _ = std::fs::remove_file(&object);
    if outcome.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    outcome
}

fn cache_error(path: &Path, what: &str, e: &std::io::Error) -> BackendError {
    BackendError::Llvm(format!("compile cache: {what} `{}`: {e}", path.display()))
}

/// Whether the module calls into the OpenMP runtime (libomp), which the
/// library must then be linked against.
pub(crate) fn uses_openmp(generated: &Generated) -> bool {
    crate::codegen::parallel::OMP_SYMBOLS.iter().any(|name| generated.module.get_function(name).is_some())
}

/// Where LLVM's OpenMP runtime (libomp) lives: where build.rs linked it.
pub(crate) const OPENMP_LIB_DIR: &str = match option_env!("KILN_LIBOMP_DIR") {
    Some(dir) => dir,
    None => "/usr/lib/llvm-22/lib",
};

/// The system C compiler: `$CC`, else `cc`.
pub(crate) fn c_compiler() -> String {
    std::env::var("CC").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "cc".to_string())
}

/// Links objects (and C sources) into a shared library with the system C
/// compiler, against libm and, when asked, libomp.
pub(crate) fn link_shared(inputs: &[PathBuf], output: &Path, openmp: bool) -> Result<()> {
    let cc = c_compiler();
    let mut cmd = std::process::Command::new(&cc);
    cmd.args(["-shared", "-fPIC", "-O2", "-o"]).arg(output).args(inputs);
    if openmp {
        cmd.arg(format!("-L{OPENMP_LIB_DIR}")).arg(format!("-Wl,-rpath,{OPENMP_LIB_DIR}")).arg("-lomp");
    }
    cmd.arg("-lm");
    let out = cmd.output().map_err(|e| {
        BackendError::Target(format!("cannot run the C compiler `{cc}` to link `{}`: {e}", output.display()))
    })?;
    if !out.status.success() {
        return Err(BackendError::Target(format!(
            "`{cc}` failed to link `{}` ({}): {}",
            output.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Loads a cached library and finds its entry.
fn load(path: &Path) -> Result<Jitted> {
    let library = Library::open(path)?;
    let address = library.symbol(crate::codegen::ENTRY)?;
    // SAFETY: the library was generated by this kiln (its key covers the
    // version and format) with `kiln_entry` of exactly this signature.
    let entry: unsafe extern "C" fn(*const *mut u8) -> i32 = unsafe { std::mem::transmute(address) };
    Ok(Jitted::from_library(library, entry))
}

/// A shared library opened with `dlopen`, closed when dropped.
pub(crate) struct Library {
    handle: *mut c_void,
}

impl Library {
    /// Opens `path` with its symbols private to it (`RTLD_LOCAL`), so that
    /// libraries exporting the same names do not clash.
    pub(crate) fn open(path: &Path) -> Result<Library> {
        let text = path.to_str().ok_or_else(|| BackendError::Target(format!("`{}` is not UTF-8", path.display())))?;
        let c_path = CString::new(text)
            .map_err(|_| BackendError::Target(format!("`{}` contains a NUL byte", path.display())))?;
        // SAFETY: a valid NUL-terminated path; dlopen has no other preconditions.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(BackendError::Target(format!("cannot load `{}`: {}", path.display(), dl_error())));
        }
        Ok(Library { handle })
    }

    /// The address of an exported symbol.
    pub(crate) fn symbol(&self, name: &str) -> Result<*mut c_void> {
        let c_name = CString::new(name).expect("symbol names are generated without NUL bytes");
        // SAFETY: the handle is open (closed only on drop) and the name is NUL-terminated.
        let address = unsafe { libc::dlsym(self.handle, c_name.as_ptr()) };
        if address.is_null() {
            return Err(BackendError::Target(format!("the library has no symbol `{name}`: {}", dl_error())));
        }
        Ok(address)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and is closed exactly once;
        // every function pointer into it is dropped with it (`Jitted`).
        unsafe {
            libc::dlclose(self.handle);
        }
    }
}

/// The message of the last dl* failure.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until
    // the next dl* call on this thread, copied out at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        return "unknown error".to_string();
    }
    unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
}

/// 128-bit FNV-1a: simple, stable across Rust versions and platforms
/// (unlike `std`'s hashers), and wide enough that distinct plans do not
/// collide in practice.
pub(crate) struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;

    pub(crate) fn new() -> Fnv128 {
        Fnv128(Self::OFFSET)
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// A length-prefixed field, so that field boundaries cannot shift.
    pub(crate) fn field(&mut self, data: &[u8]) {
        self.bytes(&(data.len() as u64).to_le_bytes());
        self.bytes(data);
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// The cache key of a plan compiled for `target` with `opts`.
pub(crate) fn key(plan: &Plan, target: &TargetInfo, opts: &CompileOptions) -> String {
    let mut h = Fnv128::new();
    h.field(FORMAT.as_bytes());
    h.field(env!("CARGO_PKG_VERSION").as_bytes());
    // The code generator's own sources (see build.rs): the same graph
    // compiles to different code after any change to them.
    h.field(env!("KILN_CODEGEN_FINGERPRINT").as_bytes());
    h.field(format!("{target:?}").as_bytes());
    // Every option but where the cache is and the thread count (which the
    // code reads at run time) changes the code, or may: the Debug text of
    // options added later joins the key by itself.
    let code_opts = CompileOptions { cache_dir: None, threads: None, ..opts.clone() };
    h.field(format!("{code_opts:?}").as_bytes());
    hash_plan(&mut h, plan);
    h.hex()
}

/// Feeds the plan's graph (structure, types, constants) and its kernel and
/// memory plan into `h`.
pub(crate) fn hash_plan(h: &mut Fnv128, plan: &Plan) {
    let g = &plan.graph;
    h.field(format!("{:?} {:?}", g.inputs(), g.outputs()).as_bytes());
    for v in g.value_ids() {
        let value = g.value(v);
        h.field(format!("{} {:?}", value.name, plan.types[v.index()]).as_bytes());
        match &value.initializer {
            Some(t) => {
                h.field(format!("init {} {:?}", t.dtype(), t.shape()).as_bytes());
                h.field(&t.to_raw_le());
            }
            None => h.field(b"-"),
        }
    }
    for id in g.node_ids() {
        let node = g.node(id);
        h.field(format!("{} {:?} {:?} {:?}", node.name, node.op, node.inputs, node.outputs).as_bytes());
        for (name, attr) in node.op.attrs() {
            h.field(name.as_bytes());
            match attr {
                kiln_ir::attr::Attr::Tensor(t) => {
                    h.field(format!("{} {:?}", t.dtype(), t.shape()).as_bytes());
                    h.field(&t.to_raw_le());
                }
                kiln_ir::attr::Attr::Float(x) => h.field(&x.to_bits().to_le_bytes()),
                kiln_ir::attr::Attr::Floats(xs) => {
                    h.field(&xs.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect::<Vec<u8>>())
                }
                other => h.field(format!("{other:?}").as_bytes()),
            }
        }
    }
    h.field(format!("{:?}", plan.steps).as_bytes());
    h.field(format!("{:?} {:?} {}", plan.loc, plan.scratch, plan.arena_bytes).as_bytes());
    for t in &plan.consts {
        h.field(format!("const {} {:?}", t.dtype(), t.shape()).as_bytes());
    }
}
