//! Group commit: concurrent requests for one resource share calls.
//!
//! The first request for a key goes out at once; requests arriving while that call is in
//! flight wait and then go together in the next. An idle resource therefore adds no delay,
//! and a busy one turns its queueing time into batching. The queue's single starts and the
//! rate limiter's decisions use it; each spawns the task that drains a key (so a caller
//! that gives up strands nobody) and answers its callers through their channels.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

/// Requests waiting per key. A key has an entry while a drain task owns its calls.
pub struct Pending<K, T> {
    waiting: Mutex<HashMap<K, Vec<T>>>,
}

impl<K: Hash + Eq + Clone, T> Default for Pending<K, T> {
    fn default() -> Self {
        Pending { waiting: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, T> Pending<K, T> {
    /// Queues `item` for `key`; true when the caller must start the key's drain task
    /// (nobody owns its calls yet).
    pub fn push(&self, key: &K, item: T) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match waiting.get_mut(key) {
            Some(queue) => {
                queue.push(item);
                false
            }
            None => {
                waiting.insert(key.clone(), vec![item]);
                true
            }
        }
    }

    /// The next call's worth (at most `max`) of `key`'s waiting items, in arrival order;
    /// empty when none wait, which also releases the key: the drain task must then stop.
    pub fn take(&self, key: &K, max: usize) -> Vec<T> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = waiting.get_mut(key) else { return Vec::new() };
        if queue.is_empty() {
            waiting.remove(key);
            return Vec::new();
        }
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn the_first_push_leads_and_an_empty_take_releases() {
        let p: Pending<&str, u32> = Pending::default();
        assert!(p.push(&"a", 1), "nobody owned a");
        assert!(!p.push(&"a", 2), "a is owned");
        assert!(p.push(&"b", 9), "keys are independent");
        assert_eq!(p.take(&"a", 1), [1]);
        assert_eq!(p.take(&"a", 10), [2]);
        assert!(p.take(&"a", 10).is_empty(), "none left: released");
        assert!(p.push(&"a", 3), "released, so the next push leads again");
    }
}
