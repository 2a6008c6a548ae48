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

/// Bytes allocated and not yet freed by every thread of this process
/// (requested sizes, without the allocator's rounding).
pub fn heap_bytes() -> i64 {
    ALLOCATOR.allocated() as i64
}

#[cfg(test)]
mod tests {
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
