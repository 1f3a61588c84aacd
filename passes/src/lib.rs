//! Kiln's rewriting passes over the graph IR.

#![warn(missing_docs)]

pub mod analysis;
pub mod consts;
pub mod lang;
pub mod rules;
pub mod typing;
pub mod convert;
pub mod extract;
pub mod cost;
