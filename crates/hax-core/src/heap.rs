//! The C heap hax shares with Motr (or its emulator): what it holds, and
//! giving its free pages back to the system.
//!
//! glibc keeps freed memory in its arenas (one per thread that allocated, up
//! to eight per core) and returns only what lies at the top of a heap, and
//! once it has freed a block it mapped on its own it serves later blocks of
//! that size from the arenas too. After a burst (a thousand processes
//! restarting, each state sent to every link, large answers from Consul)
//! hax's resident size stayed near the peak, higher after each burst that
//! left the arenas fragmented differently, while what was in use came back.

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// In blocks handed out and not freed, mapped blocks included.
    pub in_use: u64,
    /// Free in the arenas: what [`release_free_heap`] can give back, and
    /// may already have.
    pub free: u64,
}

/// What the allocator holds; `None` where the C library is not glibc.
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no argument, only reads the allocator's
        // state under its locks, and returns a plain struct by value.
        let m = unsafe { hax_sys::heap::mallinfo2() };
        Some(HeapUsage {
            in_use: (m.uordblks + m.hblkhd) as u64,
            free: (m.fordblks + m.fsmblks) as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Gives the free pages of every arena back to the system; true if any
/// were. Takes each arena's lock while it walks its free blocks: a few
/// milliseconds for a hundred MiB, which the threads allocating meanwhile
/// wait for.
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim may be called from any thread at any time;
        // it only releases pages no allocation uses.
        unsafe { hax_sys::heap::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_blocks_are_counted_free() {
        // Large against what other tests of this process allocate meanwhile.
        let blocks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 1 << 20]).collect();
        let before = heap_usage().expect("glibc");
        assert!(before.in_use >= 64 << 20, "{before:?}");
        drop(blocks);
        let after = heap_usage().expect("glibc");
        assert!(
            after.in_use + (32 << 20) < before.in_use,
            "{before:?} then {after:?}"
        );
        release_free_heap();
    }
}
