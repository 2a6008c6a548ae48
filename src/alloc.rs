//! The global allocator of everything that links this library (the binary, its tests and benches): mimalloc, behind `cap`'s count of allocated bytes.
//!
//! mimalloc keeps far less freed memory than glibc malloc under the node's
//! many-threaded ingest (benches/RESULTS.md). It also serves a new series'
//! first allocations from pages it already holds, so growth of resident
//! memory no longer tells what a series costs: `tandem sim calibrate` reads
//! the count of allocated bytes instead ([`heap_bytes`]).

use cap::Cap;
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: Cap<MiMalloc> = Cap::new(MiMalloc, usize::MAX);

/// mimalloc's `mi_option_purge_delay`: how long freed memory stays
/// committed before it goes back to the system.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds; mimalloc 3 keeps freed memory for 1 000 (its version 2
/// for 10). A connection frees its batches every flush, and on a 1-node
/// compare run the second-long delay held about 4 MB more at the peak.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets the allocator's options, unless the environment does
/// (`MIMALLOC_PURGE_DELAY`). Call it first thing in `main`, before any
/// thread starts: mimalloc's option setters are not thread-safe.
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: an integer option set before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// Bytes allocated and not yet freed by every thread of this process
/// (requested sizes, without the allocator's rounding).
pub fn heap_bytes() -> i64 {
    ALLOCATOR.allocated() as i64
}

#[cfg(test)]
mod tests {
    /// The option number is mimalloc's enum value: it must name the purge
    /// delay of the version linked, whose default is 1 000 ms. Only this
    /// test sets an option.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reading an integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(get(), 1000);
        super::configure();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }

    /// The count is process-wide and other tests allocate and free at the
    /// same time, so a single reading can be off by what they did in
    /// between: a large block and a few tries. Without the counting
    /// allocator the count never moves and every try fails.
    #[test]
    fn allocations_are_counted() {
        const BLOCK: usize = 64 << 20;
        let counted = (0..20).any(|_| {
            let before = super::heap_bytes();
            let block = std::hint::black_box(vec![0u8; BLOCK]);
            let grew = super::heap_bytes() - before;
            drop(block);
            grew >= BLOCK as i64
        });
        assert!(counted, "a {BLOCK}-byte block never showed in the count");
    }
}
