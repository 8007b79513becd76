//! When a loop is worth spreading over the thread pool.
//!
//! A parallel loop started outside the pool hands its work to the pool's threads and waits
//! for one to wake up and take it; on a busy machine that wait can outlast the loop itself.
//! A single-thread pool (a daemon told to leave the other cores to a trainer) gains nothing
//! in exchange, so with one its loops run on the calling thread.

/// Whether the pool has more than one thread.
pub fn pool_is_parallel() -> bool {
    rayon::current_num_threads() > 1
}

/// The fewest items a task of an indexed parallel loop may hold (`with_min_len`): all of
/// them, so that the loop is not split and runs on the calling thread, with a single-thread
/// pool.
pub fn min_items_per_task() -> usize {
    if pool_is_parallel() {
        1
    } else {
        usize::MAX
    }
}

/// `rayon::join`, or the two calls one after the other with a single-thread pool.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if pool_is_parallel() {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn an_unsplit_loop_runs_on_the_calling_thread() {
        // What a single-thread pool's loops rely on: with every item in one task, rayon does
        // not hand the loop to the pool.
        let caller = std::thread::current().id();
        let ran_on: Vec<_> = (0..10_000)
            .into_par_iter()
            .with_min_len(usize::MAX)
            .map(|_| std::thread::current().id())
            .collect();
        assert!(ran_on.iter().all(|&id| id == caller));
    }

    #[test]
    fn only_pools_of_several_threads_split_loops() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        assert_eq!(pool(1).install(min_items_per_task), usize::MAX);
        assert_eq!(pool(2).install(min_items_per_task), 1);
        let caller = std::thread::current().id();
        let (a, b) = pool(1).install(|| {
            join(
                || std::thread::current().id(),
                || std::thread::current().id(),
            )
        });
        assert!(a == b && a != caller);
    }
}
