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
    #[test]
    fn allocations_are_counted() {
        let before = super::heap_bytes();
        let block = std::hint::black_box(vec![1u8; 1 << 20]);
        assert!(super::heap_bytes() - before >= 1 << 20);
        drop(block);
    }
}
