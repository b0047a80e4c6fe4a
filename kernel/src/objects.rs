//! A partition's object table: IOAS, HWPT and device objects share one id
//! space, ids start at 1 and are never 0, and the lowest free id is reused
//! after DESTROY (as iommufd's xarray allocation does, and as
//! IOMMUFD-OBSERVED.md saw). Tables are per partition, so an id never names
//! another partition's object.

use alloc::collections::{BTreeMap, BTreeSet};

/// Objects of one partition, by id.
#[derive(Debug)]
pub struct ObjectTable<T> {
    objects: BTreeMap<u32, T>,
    /// Ids below `next` that are free again.
    free: BTreeSet<u32>,
    next: u32,
    limit: u32,
}

impl<T> ObjectTable<T> {
    /// An empty table holding at most `limit` objects.
    #[must_use]
    pub fn new(limit: u32) -> Self {
        Self { objects: BTreeMap::new(), free: BTreeSet::new(), next: 1, limit }
    }

    /// Store `object` under the lowest free id; `None` when the table is full.
    pub fn insert(&mut self, object: T) -> Option<u32> {
        if self.objects.len() >= self.limit as usize {
            return None;
        }
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                let id = self.next;
                self.next = self.next.checked_add(1)?;
                id
            }
        };
        self.objects.insert(id, object);
        Some(id)
    }

    /// The object `id`.
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&T> {
        self.objects.get(&id)
    }

    /// The object `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.objects.get_mut(&id)
    }

    /// Take object `id` out; its id becomes free.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let object = self.objects.remove(&id)?;
        if id + 1 == self.next {
            self.next = id;
            // Fold free ids at the top back into `next`.
            while let Some(&top) = self.free.last() {
                if top + 1 != self.next {
                    break;
                }
                self.free.pop_last();
                self.next = top;
            }
        } else {
            self.free.insert(id);
        }
        Some(object)
    }

    /// Objects in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.objects.iter().map(|(id, o)| (*id, o))
    }

    /// Number of objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Free ids kept below the highest id in use (what the lowest-free-id
    /// rule remembers besides the objects).
    #[must_use]
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    /// Whether there is no object.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_the_lowest_free_is_reused() {
        let mut t = ObjectTable::new(100);
        assert_eq!((t.insert('a'), t.insert('b'), t.insert('c')), (Some(1), Some(2), Some(3)));
        assert_eq!(t.remove(2), Some('b'));
        assert_eq!(t.remove(2), None);
        assert_eq!(t.get(2), None);
        assert_eq!(t.insert('d'), Some(2));
        assert_eq!(t.insert('e'), Some(4));
        // Removing from the top folds back: ids stay dense.
        assert_eq!(t.remove(4), Some('e'));
        assert_eq!(t.remove(3), Some('c'));
        assert_eq!(t.insert('f'), Some(3));
        assert_eq!(t.iter().map(|(id, o)| (id, *o)).collect::<alloc::vec::Vec<_>>(), [(1, 'a'), (2, 'd'), (3, 'f')]);
        assert_eq!(t.get(0), None);
    }

    #[test]
    fn full_table_refuses() {
        let mut t = ObjectTable::new(2);
        assert!(t.insert(1).is_some() && t.insert(2).is_some());
        assert_eq!(t.insert(3), None);
        assert_eq!(t.len(), 2);
        t.remove(1);
        assert_eq!(t.insert(4), Some(1));
        *t.get_mut(1).unwrap() += 1;
        assert_eq!(t.get(1), Some(&5));
        assert!(!t.is_empty());
    }
}
