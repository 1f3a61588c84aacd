//! placeholder
use super::Rule;
use std::sync::Arc;
/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    Vec::new()
}
