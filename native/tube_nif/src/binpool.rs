//! Binaries for the fragments a distribution port receives, reused once the
//! emulator has let go of them. The emulator copies each fragment of a large
//! message into the message's own buffer and drops the fragment; a fresh
//! binary for every 64 KiB fragment costs page faults (fresh memory, zeroed
//! by the kernel) that showed as a tenth of the receiving scheduler's time
//! under `perf`. Each scheduler thread keeps a few such binaries: one whose
//! only reference is ours again is filled anew.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};

extern "C" {
    fn tube_drv_alloc_binary(len: usize, data: *mut *mut c_char) -> *mut c_void;
    fn tube_drv_free_binary(bin: *mut c_void);
    fn tube_drv_binary_unshared(bin: *mut c_void, data: *mut *mut c_char) -> usize;
}

/// Size of a pooled binary: a distribution fragment (64 KiB of payload) and
/// its headers.
pub const POOLED: usize = 64 * 1024 + 1024;
/// Smallest message worth a pooled binary.
pub const POOLED_MIN: usize = 4096;
/// Binaries kept per scheduler thread.
const SPARES: usize = 4;

thread_local! {
    /// Binaries of `POOLED` bytes this thread delivered and still holds a
    /// reference to. Never freed at thread exit: scheduler threads live as
    /// long as the emulator.
    static POOL: RefCell<Vec<*mut c_void>> = const { RefCell::new(Vec::new()) };
}

/// A binary of at least `len` bytes (`len <= POOLED`) and its bytes: a spare
/// nobody else references, or a new one. `None` when out of memory.
pub fn take(len: usize) -> Option<(*mut c_void, *mut u8)> {
    debug_assert!(len <= POOLED);
    let spare = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|&bin| {
            let mut data: *mut c_char = std::ptr::null_mut();
            // SAFETY: `bin` is a live binary we hold a reference to.
            unsafe { tube_drv_binary_unshared(bin, &mut data) >= POOLED && !data.is_null() }
        })?;
        Some(p.swap_remove(i))
    });
    let mut data: *mut c_char = std::ptr::null_mut();
    let bin = match spare {
        // SAFETY: as above; only our reference is left, so we may write it.
        Some(bin) => unsafe {
            tube_drv_binary_unshared(bin, &mut data);
            bin
        },
        // SAFETY: plain allocation through the emulator.
        None => unsafe { tube_drv_alloc_binary(POOLED, &mut data) },
    };
    (!bin.is_null() && !data.is_null()).then_some((bin, data as *mut u8))
}

/// After the binary was delivered (the emulator took its own reference):
/// keeps ours for reuse, or drops it when the pool is full.
pub fn give_back(bin: *mut c_void) {
    let kept = POOL.with(|p| {
        let mut p = p.borrow_mut();
        (p.len() < SPARES).then(|| p.push(bin)).is_some()
    });
    if !kept {
        // SAFETY: our reference, not kept anywhere.
        unsafe { tube_drv_free_binary(bin) };
    }
}
