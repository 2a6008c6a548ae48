//! The binary's global allocator: mimalloc, with a live-bytes counter that `tandem sim calibrate` switches on.
//!
//! mimalloc keeps far less freed memory than glibc malloc under the node's
//! many-threaded ingest (benches/RESULTS.md). It also serves a new series'
//! first allocations from pages it already holds, so growth of resident
//! memory no longer tells what a series costs: the calibration counts the
//! bytes the program allocates instead. Until counting is switched on, the
//! counter costs one relaxed load per allocation.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

use mimalloc::MiMalloc;

pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

/// Starts counting. Returns a meter: bytes allocated and not yet freed since
/// counting started, by every thread (negative when more was freed than
/// allocated, for memory allocated before). Only differences mean anything.
/// Fails when `Counting` is not this program's global allocator.
pub fn count_heap() -> anyhow::Result<fn() -> i64> {
    COUNTING.store(true, Relaxed);
    let before = LIVE.load(Relaxed);
    let probe = std::hint::black_box(vec![0u8; 1 << 16]);
    let grown = LIVE.load(Relaxed) - before;
    drop(probe);
    anyhow::ensure!(
        grown >= 1 << 16,
        "the heap counter is not this program's global allocator (tandem::alloc::Counting)"
    );
    Ok(|| LIVE.load(Relaxed))
}

fn counted(delta: i64) {
    if COUNTING.load(Relaxed) {
        LIVE.fetch_add(delta, Relaxed);
    }
}

// SAFETY: every call is passed on to mimalloc unchanged; the counter only
// reads the layouts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            counted(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            counted(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { MiMalloc.dealloc(ptr, layout) };
        counted(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counted(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    /// Unit tests run under the system allocator: the meter must refuse
    /// rather than report zeros (tests/sim_cli.rs covers the binary).
    #[test]
    fn counting_needs_to_be_the_global_allocator() {
        let err = super::count_heap().unwrap_err().to_string();
        assert!(err.contains("global allocator"), "{err}");
    }
}
