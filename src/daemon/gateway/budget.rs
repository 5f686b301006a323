//! The process-wide budget for buffered bodies: every byte the gateway holds to scan it (a
//! request body, its decoded forms, a response sniffed as compressed) is reserved here first,
//! so the sum over all connections stays under `limits.max_buffered_bytes` whatever each one
//! sends. When the budget is spent the request is refused (`503`), never queued: a waiting
//! request would hold what others need.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared pool of bytes.
#[derive(Clone, Debug)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// An empty reservation that grows as data is buffered.
    pub fn reserve(&self) -> Reservation {
        Reservation {
            pool: self.0.clone(),
            held: None,
        }
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Bytes taken from the [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Takes `n` more bytes; false when the budget cannot spare them.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.pool.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_one_pool() {
        let budget = Budget::new(100);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        assert!(a.grow(60));
        assert!(!b.grow(50), "the pool is shared");
        assert!(b.grow(40));
        assert!(!a.grow(1));
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 60);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.available(), 100);
    }
}
