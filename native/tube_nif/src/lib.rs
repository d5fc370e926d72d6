//! The native side of `tube` inside the BEAM: one shared library that is
//! both the NIF library of module `tube_nif` (control plane: Xenstore
//! client, watch forwarding, ring set-up) and the linked-in port driver
//! `tube_nif` (data plane: one port per tube end).
//!
//! Both are loaded from the same file (`priv/tube_nif.so`), so the rings the
//! NIFs set up reach the driver through [`handoff`] in the same address
//! space.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod driver;
mod handoff;
mod linger;
mod ring_nif;
mod rx_bound;
mod rx_clock;
mod xs_nif;

use std::ffi::c_void;

/// Atoms used in replies and messages.
pub mod atoms {
    rustler::atoms! {
        ok,
        error,
        closed,
        timeout,
        io,
        protocol,
        peer_gone,
        corrupt,
        bad_ref,
        denied,
        delivery_mismatch,
        tube_xs,
        watch,
        enomem,
        tube_xs_reply,
    }
}

extern "C" {
    fn tube_drv_entry() -> *mut c_void;
}

/// Entry point the emulator looks up when `erl_ddll` loads this file as a
/// driver. It must be defined here: a cdylib does not re-export the symbols
/// of the C glue it links.
#[no_mangle]
pub extern "C" fn driver_init() -> *mut c_void {
    // SAFETY: tube_drv_entry returns the address of a static, fully
    // initialised ErlDrvEntry in c_src/tube_drv.c.
    unsafe { tube_drv_entry() }
}

rustler::init!("tube_nif");
