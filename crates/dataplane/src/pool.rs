//! How many ports a node keeps ready for pods of one (network, project): enough that
//! back-to-back ADDs find one, few when nothing asks. A pool grows (doubles, up to a ceiling)
//! when an ADD finds it empty or leaves it less than half full, and shrinks (halves, down to a
//! floor) after a while without ADDs.

use std::time::{Duration, Instant};

/// After this long without an ADD, a pool halves (and again after as long).
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// The size a pool aims at, from the ADDs it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDemand {
    floor: usize,
    ceiling: usize,
    target: usize,
    /// The last ADD (or shrink), from which idleness counts.
    since: Instant,
    /// Whether an ADD asked before: the first finds the pool empty because it never was
    /// filled, not because ADDs outran it.
    asked: bool,
}

impl PoolDemand {
    /// A pool that keeps between `floor` and `ceiling` ports (a floor of 0: no pool at all).
    pub fn new(floor: usize, ceiling: usize, now: Instant) -> Self {
        PoolDemand {
            floor,
            ceiling: ceiling.max(floor),
            target: floor,
            since: now,
            asked: false,
        }
    }

    /// Ports to keep ready now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// An ADD asked the pool for a port: `hit` whether it had one ready, `left` how many
    /// ready ones it holds after. Returns whether the target grew.
    pub fn took(&mut self, now: Instant, hit: bool, left: usize) -> bool {
        self.since = now;
        let first = !std::mem::replace(&mut self.asked, true);
        if self.floor == 0 || first || (hit && left * 2 >= self.target) {
            return false;
        }
        let grown = (self.target * 2).clamp(1, self.ceiling);
        let grew = grown > self.target;
        self.target = grown;
        grew
    }

    /// Halves the target when no ADD came for [`POOL_IDLE`]; returns whether it shrank.
    pub fn idle(&mut self, now: Instant) -> bool {
        if self.target <= self.floor || now.saturating_duration_since(self.since) < POOL_IDLE {
            return false;
        }
        self.target = (self.target / 2).max(self.floor);
        self.since = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_grows_the_pool_and_quiet_shrinks_it_back() {
        let start = Instant::now();
        let mut demand = PoolDemand::new(2, 64, start);
        assert_eq!(demand.target(), 2);
        // The first ADD finds a pool that was never filled: no reason to grow.
        assert!(!demand.took(start, false, 0));
        assert_eq!(demand.target(), 2);
        // A steady trickle that finds the pool full enough keeps it small.
        assert!(!demand.took(start, true, 1));
        assert_eq!(demand.target(), 2);
        // Back-to-back ADDs drain it: each miss or low pool doubles, up to the ceiling.
        assert!(demand.took(start, false, 0));
        assert_eq!(demand.target(), 4);
        assert!(demand.took(start, true, 1));
        assert_eq!(demand.target(), 8);
        for _ in 0..10 {
            demand.took(start, false, 0);
        }
        assert_eq!(demand.target(), 64);
        // Quiet: halves every POOL_IDLE, never below the floor.
        assert!(!demand.idle(start + POOL_IDLE / 2));
        let mut at = start + POOL_IDLE;
        let mut sizes = Vec::new();
        while demand.idle(at) {
            sizes.push(demand.target());
            at += POOL_IDLE;
        }
        assert_eq!(sizes, vec![32, 16, 8, 4, 2]);
    }

    #[test]
    fn a_floor_of_zero_is_no_pool() {
        let start = Instant::now();
        let mut demand = PoolDemand::new(0, 64, start);
        assert!(!demand.took(start, false, 0));
        assert!(!demand.took(start, false, 0));
        assert_eq!(demand.target(), 0);
    }
}
