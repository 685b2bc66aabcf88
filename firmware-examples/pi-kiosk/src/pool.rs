//! A fixed pool of session arenas, all allocated at start-up: a request
//! either gets one at once or is turned away, so memory never grows with
//! the number of clients.

use std::sync::{Arc, Mutex};

pub struct ArenaPool {
    free: Mutex<Vec<Vec<u8>>>,
    arena_bytes: usize,
    total: usize,
}

impl ArenaPool {
    pub fn new(total: usize, arena_bytes: usize) -> Arc<ArenaPool> {
        let free = (0..total).map(|_| vec![0u8; arena_bytes]).collect();
        Arc::new(ArenaPool { free: Mutex::new(free), arena_bytes, total })
    }

    /// An arena, or `None` when every one is in use.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Lease> {
        let arena = self.lock().pop()?;
        Some(Lease { arena, pool: Arc::clone(self) })
    }

    pub fn busy(&self) -> usize {
        self.total - self.lock().len()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // the list stays consistent even if a holder panicked: push and pop only
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One arena, back in the pool when dropped (whatever ended the request).
pub struct Lease {
    arena: Vec<u8>,
    pool: Arc<ArenaPool>,
}

impl Lease {
    pub fn arena(&mut self) -> &mut [u8] {
        &mut self.arena
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let arena = std::mem::take(&mut self.arena);
        self.pool.lock().push(arena);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_bounded_and_come_back() {
        let pool = ArenaPool::new(2, 64);
        let a = pool.try_acquire().unwrap();
        let b = pool.try_acquire().unwrap();
        assert!(pool.try_acquire().is_none());
        assert_eq!(pool.busy(), 2);
        drop(a);
        assert_eq!(pool.busy(), 1);
        let mut c = pool.try_acquire().unwrap();
        assert_eq!(c.arena().len(), 64);
        drop((b, c));
        assert_eq!(pool.busy(), 0);
    }
}
