//! Page-aligned buffers for O_DIRECT I/O.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

pub const ALIGN: usize = 4096;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of `len` bytes (a non-zero multiple of ALIGN), contents
    /// unspecified until written.
    pub fn new(len: usize) -> Self {
        Self::alloc(len, false)
    }

    /// A buffer of `len` bytes (a non-zero multiple of ALIGN), all zero.
    pub fn zeroed(len: usize) -> Self {
        Self::alloc(len, true)
    }

    fn alloc(len: usize, zeroed: bool) -> Self {
        assert!(len > 0 && len.is_multiple_of(ALIGN), "aligned buffer of {len} bytes");
        let layout = Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// The bytes, to fill in place; only for a buffer made by [`zeroed`]
    /// or [`copy_from`] (initialised throughout).
    ///
    /// [`zeroed`]: AlignedBuf::zeroed
    /// [`copy_from`]: AlignedBuf::copy_from
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes, initialised by the constructor.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub fn copy_from(data: &[u8]) -> Self {
        let mut b = AlignedBuf::new(data.len());
        // SAFETY: both ranges are `data.len()` bytes and do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.as_mut_ptr(), data.len()) };
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes; callers only read it after the
        // kernel (or copy_from) filled it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Whether `off` and `len` allow O_DIRECT.
pub fn is_aligned(off: u64, len: usize) -> bool {
    off.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN) && len > 0
}
