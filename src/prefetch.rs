//! A cache hint: the pipeline walks one series after another, each a few cache misses away,
//! and asks for the next ones' memory before it needs it.

/// Hints the CPU to fetch the cache line of `at` (nothing else happens).
#[cfg(target_arch = "x86_64")]
pub fn prefetch<T>(at: &T) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch is only a hint; it never faults and changes no memory, and the
    // pointer comes from a live reference anyway. `sse` is part of the x86_64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>((at as *const T).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn prefetch<T>(_: &T) {}
