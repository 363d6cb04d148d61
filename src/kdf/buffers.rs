//! A global allocator that keeps scrypt's 32 MiB working buffer for the next derivation.
//!
//! Why: scrypt (N=32768, r=8) allocates a fresh, zeroed 32 MiB array per derivation. glibc
//! serves an allocation that large with `mmap` and returns it with `munmap`, so every
//! derivation faults in 8,192 fresh pages and the kernel zeroes them — measured with `perf`
//! on `roomkey apply`, about 12% of the controller's CPU, the largest cost after scrypt's
//! own mixing. [`ScryptBufferCache`] wraps the system allocator and parks up to
//! [`SLOTS`] freed blocks of exactly that size instead of unmapping them; the next
//! derivation takes one back. Everything else goes straight to the system allocator.
//!
//! Memory: a parked block was one of the at most `KdfPool::max_parallel` buffers in use at
//! once, so the cache never holds more than the peak of concurrent derivations already
//! needed. Secrets: scrypt's array is derived from the ClientSecret, so a block is zeroed
//! as it is parked (the system allocator would have returned it to the kernel); a block
//! handed out again is therefore already zero, as `alloc_zeroed` promises.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The size of scrypt's `V` array for the device JWE's parameters: 128 · r · N bytes.
pub const SCRYPT_BUFFER: usize = 128 * 8 * 32_768;

/// At most this many blocks are parked (the controller runs one derivation per core).
pub const SLOTS: usize = 4;

/// The system allocator, with a small cache of zeroed scrypt-sized blocks.
pub struct ScryptBufferCache {
    slots: [AtomicPtr<u8>; SLOTS],
}

impl ScryptBufferCache {
    pub const fn new() -> Self {
        ScryptBufferCache {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS],
        }
    }

    /// Blocks the cache deals in: scrypt's array size, with no alignment beyond what the
    /// system allocator gives every block of that size (so any parked block fits).
    fn cached(layout: Layout) -> bool {
        layout.size() == SCRYPT_BUFFER && layout.align() <= 16
    }

    /// A parked (zeroed) block, if any.
    fn take(&self) -> Option<*mut u8> {
        self.slots.iter().find_map(|slot| {
            let p = slot.swap(ptr::null_mut(), Ordering::AcqRel);
            (!p.is_null()).then_some(p)
        })
    }

    /// Parks a block; false when every slot is taken.
    fn park(&self, block: *mut u8) -> bool {
        self.slots.iter().any(|slot| {
            slot.compare_exchange(ptr::null_mut(), block, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }
}

impl Default for ScryptBufferCache {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block handed out is either fresh from `System` for the same layout, or a
// block `System` allocated for an identical layout (same size, alignment ≤ 16, which
// `System` satisfies for every block of this size) that its owner deallocated and that no
// one else holds: `take` removes it from its slot atomically, so it is handed out once.
unsafe impl GlobalAlloc for ScryptBufferCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::cached(layout) {
            if let Some(block) = self.take() {
                return block;
            }
        }
        // SAFETY: forwarded with the caller's guarantees (non-zero size layout).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::cached(layout) {
            if let Some(block) = self.take() {
                // Parked blocks were zeroed when they were parked.
                return block;
            }
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if Self::cached(layout) {
            // SAFETY: the caller owns `block`, valid for `layout.size()` bytes.
            unsafe { ptr::write_bytes(block, 0, layout.size()) };
            if self.park(block) {
                return;
            }
        }
        // SAFETY: `block` came from `System` with this layout (cached blocks too).
        unsafe { System.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Self::cached(layout) || new_size == SCRYPT_BUFFER {
            // Through alloc/copy/dealloc so a cached size never meets `System.realloc`
            // with a block the cache handed out or will park.
            // SAFETY: `new_size` is non-zero and the layout valid, per the caller.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            // SAFETY: forwarded with the caller's guarantees.
            let fresh = unsafe { self.alloc(new_layout) };
            if !fresh.is_null() {
                // SAFETY: both blocks are valid for the smaller of the two sizes and distinct.
                unsafe {
                    ptr::copy_nonoverlapping(block, fresh, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
            }
            return fresh;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(block, layout, new_size) }
    }
}

/// Fixes glibc malloc's thresholds for a long fleet run (call once, first thing in `main`).
///
/// Why: glibc raises its mmap threshold each time a large block is freed, up to 32 MiB, so
/// after the first few the run's large transient buffers (the vault's sealed copy at every
/// save, growing with the fleet; replies; journal reads) come from the heap, where the
/// small long-lived allocations of 2,000 devices pin them: measured with `roomkey bench`
/// (2,000 devices, 400 sessions), ~12 MiB of the controller's peak RSS was such
/// fragmentation. Fixed thresholds of 128 KiB (glibc's defaults, never raised) send every
/// block that large to `mmap` and give freed heap tops back. scrypt's array is unaffected:
/// this cache keeps it. Other C libraries: nothing to do.
pub fn tune_system_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_scrypt_buffer_is_zeroed_parked_and_reused() {
        let cache = ScryptBufferCache::new();
        let layout = Layout::from_size_align(SCRYPT_BUFFER, 1).unwrap();
        unsafe {
            let a = cache.alloc_zeroed(layout);
            assert!(!a.is_null());
            ptr::write_bytes(a, 0xAB, SCRYPT_BUFFER);
            cache.dealloc(a, layout);
            // Handed out again, zeroed, for both kinds of allocation.
            let b = cache.alloc_zeroed(layout);
            assert_eq!(a, b);
            let bytes = std::slice::from_raw_parts(b, SCRYPT_BUFFER);
            assert!(bytes.iter().all(|&x| x == 0));
            cache.dealloc(b, layout);
            let c = cache.alloc(layout);
            assert_eq!(a, c);
            // Other sizes pass through; a second live block is a fresh one.
            let d = cache.alloc(layout);
            assert_ne!(c, d);
            let small = Layout::from_size_align(64, 8).unwrap();
            let s = cache.alloc(small);
            assert!(!s.is_null());
            cache.dealloc(s, small);
            cache.dealloc(c, layout);
            cache.dealloc(d, layout);
            // Empty the cache so the test frees what it took.
            while let Some(p) = cache.take() {
                System.dealloc(p, layout);
            }
        }
    }

    #[test]
    fn at_most_slots_blocks_are_parked() {
        let cache = ScryptBufferCache::new();
        let layout = Layout::from_size_align(SCRYPT_BUFFER, 1).unwrap();
        unsafe {
            let blocks: Vec<*mut u8> = (0..SLOTS + 2).map(|_| cache.alloc(layout)).collect();
            for &b in &blocks {
                cache.dealloc(b, layout);
            }
            let mut parked = 0;
            while let Some(p) = cache.take() {
                parked += 1;
                System.dealloc(p, layout);
            }
            assert_eq!(parked, SLOTS);
        }
    }

    #[test]
    fn scrypt_uses_exactly_the_cached_size() {
        // The constant must match what scrypt allocates for the device's parameters, or
        // the cache silently does nothing.
        let params = scrypt::Params::new(15, 8, 1, 32).unwrap();
        assert_eq!(
            SCRYPT_BUFFER,
            128 * params.r() as usize * (1usize << params.log_n())
        );
    }
}
