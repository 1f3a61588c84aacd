//! Feeds arbitrary bytes to the ONNX importer. Anything it accepts must also
//! survive ordering, type inference, verification, export and re-import:
//! none of these may panic, and what kiln exports kiln must read back.

#![no_main]

use kiln_ir::onnx::{import_model_bytes, model_to_bytes, ImportOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut graph) = import_model_bytes(data, None, ImportOptions::default()) else {
        return;
    };
    // Cycles are legal at import and reported here.
    let _ = graph.topo_order();
    if kiln_ir::infer_types(&mut graph).is_ok() {
        let _ = kiln_ir::verify(&graph);
    }
    if let Ok(bytes) = model_to_bytes(&graph) {
        import_model_bytes(&bytes, None, ImportOptions::default()).expect("kiln reads what kiln writes");
    }
});
