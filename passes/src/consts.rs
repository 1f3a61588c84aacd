//! Interned constant tensors.
//!
//! E-nodes refer to constants by [`ConstId`] instead of holding tensors, so
//! nodes stay small and hashable. The table deduplicates by content (dtype,
//! shape and bytes, compared bitwise so NaN payloads and `-0.0` are kept
//! apart): the same value interned twice gets the same id, which is what
//! lets hash-consing merge equal constants. Ids are handed out in interning
//! order, which is deterministic for a given input graph and rule sequence.

use kiln_ir::tensor::Tensor;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Index of an interned constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConstId(u32);

impl ConstId {
    /// The index into the table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The interned tensors, deduplicated by content.
#[derive(Debug, Default)]
pub struct ConstTable {
    tensors: Vec<Tensor>,
    // Content hash -> ids with that hash; lookups compare bitwise.
    by_hash: HashMap<u64, Vec<ConstId>>,
}

impl ConstTable {
    /// An empty table.
    pub fn new() -> ConstTable {
        ConstTable::default()
    }

    /// The id of `t`, adding it if no equal tensor is interned yet.
    pub fn intern(&mut self, t: &Tensor) -> ConstId {
        let h = content_hash(t);
        let ids = self.by_hash.entry(h).or_default();
        if let Some(&id) = ids.iter().find(|id| self.tensors[id.index()].bitwise_eq(t)) {
            return id;
        }
        let id = ConstId(u32::try_from(self.tensors.len()).expect("fewer than 2^32 constants"));
        self.tensors.push(t.clone());
        ids.push(id);
        id
    }

    /// The tensor of an id from this table.
    pub fn get(&self, id: ConstId) -> &Tensor {
        &self.tensors[id.index()]
    }

    /// Number of interned tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// A hash of dtype, shape and bytes. `DefaultHasher::new` uses fixed keys,
/// so this is the same on every run.
fn content_hash(t: &Tensor) -> u64 {
    let mut h = DefaultHasher::new();
    t.dtype().hash(&mut h);
    t.shape().hash(&mut h);
    t.to_raw_le().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::dtype::DType;

    #[test]
    fn equal_content_gets_one_id() {
        let mut table = ConstTable::new();
        let a = table.intern(&Tensor::vec_i64(&[1, 2, 3]));
        let b = table.intern(&Tensor::vec_i64(&[1, 2, 3]));
        let c = table.intern(&Tensor::from_i64s(DType::I32, &[3], &[1, 2, 3]));
        let d = table.intern(&Tensor::scalar_f32(-0.0));
        let e = table.intern(&Tensor::scalar_f32(0.0));
        assert_eq!(a, b);
        assert_ne!(a, c, "dtype is part of the value");
        assert_ne!(d, e, "bitwise comparison keeps -0.0 apart");
        assert_eq!(table.len(), 4);
        assert_eq!(table.get(c).dtype(), DType::I32);
    }
}
