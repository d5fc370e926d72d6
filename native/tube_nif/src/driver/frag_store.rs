//! Driver binaries as the memory of a distribution port's fragment joiner
//! (`tube_dist_frag`): a joined message goes to the emulator in the binary
//! its fragments were copied into.

use std::ffi::{c_char, c_void};

use tube_dist_frag::Store;

use super::{tube_drv_alloc_binary, tube_drv_free_binary, DrvPort};

extern "C" {
    fn tube_drv_deliver_binary_at(port: DrvPort, bin: *mut c_void, offs: usize, len: usize) -> std::ffi::c_int;
    fn tube_drv_realloc_binary(bin: *mut c_void, len: usize, data: *mut *mut c_char) -> *mut c_void;
}

/// The binaries of one port.
pub(super) struct Binaries {
    pub(super) port: DrvPort,
}

impl Store for Binaries {
    type Buf = *mut c_void;

    fn alloc(&mut self, cap: usize) -> Option<(*mut c_void, *mut u8)> {
        let mut data: *mut c_char = std::ptr::null_mut();
        // SAFETY: plain allocation through the emulator; `data` receives the binary's bytes.
        let bin = unsafe { tube_drv_alloc_binary(cap, &mut data) };
        // A binary's bytes are never null once it exists.
        (!bin.is_null()).then_some((bin, data as *mut u8))
    }

    fn resize(&mut self, buf: *mut c_void, cap: usize) -> Result<(*mut c_void, *mut u8), *mut c_void> {
        let mut data: *mut c_char = std::ptr::null_mut();
        // SAFETY: `buf` is a binary only this port holds (never yet delivered); on failure
        // the emulator leaves it as it was.
        let bin = unsafe { tube_drv_realloc_binary(buf, cap, &mut data) };
        // Null only when the emulator failed and left `buf` as it was; any other value
        // replaces `buf`, which may be gone.
        if bin.is_null() {
            return Err(buf);
        }
        Ok((bin, data as *mut u8))
    }

    fn deliver(&mut self, buf: *mut c_void, off: usize, len: usize) {
        // SAFETY: `port` is the live port whose callback runs; `off + len` bytes of `buf`
        // are filled; the helper hands the binary over and drops our reference.
        unsafe { tube_drv_deliver_binary_at(self.port, buf, off, len) };
    }

    fn free(&mut self, buf: *mut c_void) {
        // SAFETY: our only reference to a binary that was not handed over.
        unsafe { tube_drv_free_binary(buf) };
    }
}
