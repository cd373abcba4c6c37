//! `table.exec.state.ttl` for operators that keep state per group (top-N, window functions):
//! each group's last change on the epochs' clock, and the groups left idle for longer than the
//! TTL, found in a pass at most every half TTL.

use foldhash::{HashMap, HashMapExt};

use freshet_common::RowKey;

/// When each group last changed, and when the next pass is due.
pub(crate) struct IdleGroups {
    ttl_ms: i64,
    touched: HashMap<RowKey, i64>,
    next_pass: i64,
}

impl IdleGroups {
    pub(crate) fn new(ttl_ms: i64) -> Self {
        Self {
            ttl_ms,
            touched: HashMap::new(),
            next_pass: i64::MIN,
        }
    }

    pub(crate) fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// When `group` last changed, if it is followed.
    pub(crate) fn touched_at(&self, group: &RowKey) -> Option<i64> {
        self.touched.get(group).copied()
    }

    /// When the next pass over idle groups is due (ms), for a checkpoint.
    pub(crate) fn next_pass(&self) -> i64 {
        self.next_pass
    }

    /// Takes back a checkpoint's [`IdleGroups::next_pass`].
    pub(crate) fn set_next_pass(&mut self, at_ms: i64) {
        self.next_pass = at_ms;
    }

    /// Notes that `group` changed at `now_ms`.
    pub(crate) fn touch(&mut self, group: &RowKey, now_ms: i64) {
        match self.touched.get_mut(group) {
            Some(at) => *at = now_ms,
            None => {
                self.touched.insert(group.clone(), now_ms);
            }
        }
    }

    /// Notes that `touched` changed at `now_ms`, and takes the groups idle past the TTL out of
    /// `groups` (ordered rows, as a top-N or a window operator keeps them), with their entries
    /// and bytes off the counts.
    pub(crate) fn forget(
        &mut self,
        now_ms: i64,
        touched: impl IntoIterator<Item = RowKey>,
        groups: &mut HashMap<RowKey, super::top_n::Ranked>,
        rows: &mut u64,
        bytes: &mut u64,
    ) {
        for group in touched {
            self.touch(&group, now_ms);
        }
        for group in self.expired(now_ms) {
            if let Some(ranked) = groups.remove(&group) {
                super::top_n::forget_ordered(ranked, rows, bytes);
            }
        }
    }

    /// The groups idle for longer than the TTL at `now_ms`, forgotten here, when a pass is due.
    pub(crate) fn expired(&mut self, now_ms: i64) -> Vec<RowKey> {
        if now_ms < self.next_pass {
            return Vec::new();
        }
        self.next_pass = now_ms.saturating_add(self.ttl_ms / 2);
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        let expired: Vec<RowKey> = self
            .touched
            .iter()
            .filter(|(_, at)| **at < cutoff)
            .map(|(group, _)| group.clone())
            .collect();
        for group in &expired {
            self.touched.remove(group);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::IdleGroups;
    use freshet_common::RowKey;

    #[test]
    fn groups_idle_past_the_ttl_expire_in_passes_every_half_ttl() {
        let mut idle = IdleGroups::new(100);
        let (a, b) = (RowKey::from(&b"a"[..]), RowKey::from(&b"b"[..]));
        idle.touch(&a, 0);
        idle.touch(&b, 0);
        assert!(idle.expired(10).is_empty());
        idle.touch(&b, 60);
        // A pass at 101 (due from 60): `a` has been idle since 0, `b` only since 60.
        assert_eq!(idle.expired(101), vec![a]);
        // No pass before 151.
        assert!(idle.expired(120).is_empty());
        assert_eq!(idle.expired(200), vec![b]);
    }
}
