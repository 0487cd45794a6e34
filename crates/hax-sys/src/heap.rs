//! glibc's allocator statistics and trimming: the C library hax and Motr
//! share, not part of `hax_glue.h`. Only where glibc is the C library.

use core::ffi::c_int;

/// `struct mallinfo2` of `<malloc.h>` (glibc 2.33 and later).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct mallinfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

extern "C" {
    /// Statistics of every arena; takes each arena's lock in turn.
    pub fn mallinfo2() -> mallinfo2;
    /// Gives the free pages of every arena back to the system (keeping
    /// `pad` bytes at the top of the main heap); 1 if any were released.
    pub fn malloc_trim(pad: usize) -> c_int;
}
