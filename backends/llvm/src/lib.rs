//! Kiln's llvm backend. It is empty on purpose: code generation is a later
//! milestone, and this crate exists so the workspace layout is final. It
//! exports nothing, so nothing can mistake it for a working backend.
