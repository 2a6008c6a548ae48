//! A hint to the CPU: start loading a cache line now, without waiting for it.
//!
//! The write path looks up many series in tables far bigger than the caches;
//! a loop that first asks for every line it will need and then uses them
//! waits on memory once, where a load at each use waits each time. A
//! prefetch never faults and changes no result: on other architectures this
//! is a no-op.

#[inline(always)]
pub(crate) fn prefetch<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(at);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
