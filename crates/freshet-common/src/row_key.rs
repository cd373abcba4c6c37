//! Row-encoded keys as operator state holds them.
//!
//! State maps (groups of an aggregate, rows of a join side, the row index of a materialized
//! table) are keyed by rows in Arrow's row format. Most such rows are short — a BIGINT key is 9
//! bytes — and a boxed slice would put every key behind a pointer: each probe of a map with a
//! hundred thousand entries then pays a cache miss to compare the key. A [`RowKey`] keeps keys
//! of up to [`RowKey::INLINE`] bytes inside the map's own slot and boxes only longer ones.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

/// The bytes of a row-encoded key, inline when short. Hashes, compares and orders exactly as
/// its bytes (`[u8]`) do, so maps keyed by it are looked up with a `&[u8]`.
#[derive(Clone)]
pub struct RowKey(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; RowKey::INLINE] },
    Heap(Box<[u8]>),
}

impl RowKey {
    /// Keys up to this many bytes are held inline (the key is then 32 bytes in all).
    pub const INLINE: usize = 30;

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// Memory the key holds outside its own slot.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(bytes) => bytes.len(),
        }
    }
}

impl From<&[u8]> for RowKey {
    fn from(key: &[u8]) -> Self {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..key.len()].copy_from_slice(key);
                RowKey(Repr::Inline { len, bytes })
            }
            _ => RowKey(Repr::Heap(key.into())),
        }
    }
}

impl Borrow<[u8]> for RowKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::ops::Deref for RowKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for RowKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Hash for RowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for RowKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RowKey {}

impl PartialOrd for RowKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RowKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RowKey").field(&self.as_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn short_and_long_keys_behave_as_their_bytes() {
        let short: &[u8] = &[1, 2, 3];
        let long: Vec<u8> = (0..100).collect();
        let edge: Vec<u8> = (0..RowKey::INLINE as u8).collect();
        let mut map: HashMap<RowKey, i32> = HashMap::new();
        map.insert(RowKey::from(short), 1);
        map.insert(RowKey::from(long.as_slice()), 2);
        map.insert(RowKey::from(edge.as_slice()), 3);
        assert_eq!(map.get(short), Some(&1));
        assert_eq!(map.get(long.as_slice()), Some(&2));
        assert_eq!(map.get(edge.as_slice()), Some(&3));
        assert_eq!(map.get(&[1u8, 2][..]), None);
        assert_eq!(RowKey::from(short).heap_bytes(), 0);
        assert_eq!(RowKey::from(edge.as_slice()).heap_bytes(), 0);
        assert_eq!(RowKey::from(long.as_slice()).heap_bytes(), 100);

        // Ordered as the bytes are, whatever the representation.
        let keys: Vec<Vec<u8>> = vec![vec![2], long.clone(), vec![0, 255], edge.clone(), vec![]];
        let ordered: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| RowKey::from(k.as_slice()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(ordered, expected);
        assert_eq!(std::mem::size_of::<RowKey>(), 32);
    }
}
