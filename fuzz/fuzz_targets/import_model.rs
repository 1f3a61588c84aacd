//! Feeds arbitrary bytes to the ONNX importer. Anything it accepts must also
//! survive ordering, export and re-import: none of these may panic, and what
//! kiln exports kiln must read back.

#![no_main]

use kiln_ir::onnx::{import_model_bytes, model_to_bytes, ImportOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(graph) = import_model_bytes(data, None, ImportOptions::default()) else {
        return;
    };
    // Cycles are legal at import and reported here.
    let _ = graph.topo_order();
    // Export fails without types on the graph outputs; once type inference
    // and the verifier exist, run them here first.
    if let Ok(bytes) = model_to_bytes(&graph) {
        import_model_bytes(&bytes, None, ImportOptions::default()).expect("kiln reads what kiln writes");
    }
});
