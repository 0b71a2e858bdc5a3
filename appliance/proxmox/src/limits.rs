//! A limit on concurrent tasks per node.
//!
//! Parallel clones (and other tasks) on one node contend for Proxmox VE's
//! file locks (the source's config lock, the storage lock for volume
//! allocation), which are taken with short timeouts: past a handful in
//! flight, tasks fail with `can't lock file '...' - got timeout`. Every
//! task-starting call of the [`Client`](crate::Client) takes a permit of
//! its node here and holds it until the task has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default tasks in flight per node (PVE's own bulk actions default to
/// 4 parallel workers).
pub const DEFAULT_TASKS_PER_NODE: usize = 4;

/// Semaphores by node name. Clones share the limits.
#[derive(Debug, Clone)]
pub struct NodeLimiter {
    per_node: usize,
    nodes: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl NodeLimiter {
    /// At most `per_node` tasks at once on each node (at least 1).
    pub fn new(per_node: usize) -> NodeLimiter {
        NodeLimiter {
            per_node: per_node.max(1),
            nodes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limit.
    pub fn per_node(&self) -> usize {
        self.per_node
    }

    fn semaphore(&self, node: &str) -> Arc<Semaphore> {
        let mut nodes = match self.nodes.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        nodes
            .entry(node.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_node)))
            .clone()
    }

    /// Waits for a slot on `node`; the slot is free again when the permit
    /// drops.
    pub async fn acquire(&self, node: &str) -> OwnedSemaphorePermit {
        self.semaphore(node)
            .acquire_owned()
            .await
            .expect("the node semaphores are never closed")
    }

    /// Slots free on `node` now.
    pub fn available(&self, node: &str) -> usize {
        self.semaphore(node).available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn limits_each_node_separately() {
        let l = NodeLimiter::new(2);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for i in 0..10 {
            let l = l.clone();
            let in_flight = in_flight.clone();
            let peak = peak.clone();
            joins.push(tokio::spawn(async move {
                let node = if i % 2 == 0 { "a" } else { "b" };
                let _p = l.acquire(node).await;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        // Two nodes with two slots each.
        assert!(peak.load(Ordering::SeqCst) <= 4);
        assert_eq!(l.available("a"), 2);
        assert_eq!(NodeLimiter::new(0).per_node(), 1);
    }
}
