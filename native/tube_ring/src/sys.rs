//! Thin, checked wrappers over the Linux calls the tube needs. Every raw fd becomes an
//! `OwnedFd` the moment it exists, so no error path leaks one.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// Turns the C convention "-1 and errno" into an `io::Result`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// As [`cvt`], for calls returning `ssize_t`.
pub fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Wraps a freshly returned fd.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match cvt_size(n) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An anonymous, sealed-size memory file of `len` zero bytes. It has no name anywhere in
/// the filesystem and disappears with its last fd and mapping.
pub fn sealed_memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal.
    let fd = owned(unsafe {
        libc::memfd_create(c"tube".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    // Shrinking would turn the peer's accesses into SIGBUS; forbid it (and growing) for good.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on an fd we own.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(fd)
}

/// Checks that a received memfd has exactly `len` bytes and can no longer shrink or grow.
pub fn check_memfd(fd: &OwnedFd, len: usize) -> Result<(), &'static str> {
    // SAFETY: `st` is a plain C struct; zero is a valid bit pattern and fstat overwrites it.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `st` is valid for writes.
    if cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }).is_err() || st.st_size != len as i64 {
        return Err("shared memory has the wrong size");
    }
    // SAFETY: plain fcntl on an fd we own.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals == -1 || seals & need != need {
        return Err("shared memory is not sealed against resizing");
    }
    Ok(())
}

/// A shared read-write mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` shared.
    pub fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the mapping.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; `Tube` drops every pointer user before the mapping.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another thread is fine.
unsafe impl Send for Mapping {}

/// `sockaddr_un` for a name in the abstract namespace (leading NUL: no filesystem entry).
fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: plain C struct; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    if name.is_empty() || name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad socket name"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path[1..].iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

fn stream_socket() -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain syscall.
    owned(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })
}

/// A non-blocking listening socket bound to abstract `name`.
pub fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = stream_socket()?;
    let (addr, len) = abstract_addr(name)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
    // SAFETY: plain syscall on our fd.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 8) })?;
    Ok(fd)
}

/// Connects a non-blocking stream socket to abstract `name`, retrying while the backlog is
/// full, until `deadline`.
pub fn connect_abstract(name: &[u8], deadline: Instant) -> io::Result<OwnedFd> {
    let (addr, len) = abstract_addr(name)?;
    loop {
        let fd = stream_socket()?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let r = unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
        match cvt(r) {
            Ok(_) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts one connection (non-blocking, close-on-exec), or `None` if none is pending.
pub fn accept(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: null address pointers are allowed: we do not want the peer address.
    let r = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), flags) };
    match owned(r) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Credentials of the process at the other end of a connected Unix socket.
pub fn peer_cred(fd: &OwnedFd) -> io::Result<libc::ucred> {
    // SAFETY: plain C struct; all-zero is valid.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size of `cred`.
    cvt(unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    })?;
    Ok(cred)
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Waits until `fd` has one of `events` or `timeout` passes. Returns the revents (0 on timeout).
pub fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is one valid pollfd.
    match cvt(unsafe { libc::poll(&mut p, 1, ms) }) {
        Ok(_) => Ok(p.revents),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Time left until `deadline` (zero once passed).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Waits until `fd` is readable; `TimedOut` once `deadline` has passed.
fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    let left = remaining(deadline);
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    poll_fd(fd, libc::POLLIN, left).map(drop)
}

/// Reads exactly `buf.len()` bytes from non-blocking `fd` before `deadline`.
/// `UnexpectedEof` if the peer closes first, `TimedOut` if the deadline passes.
pub fn read_exact_until(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for `rest.len()` bytes of writes.
        let r = unsafe { libc::recv(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
        match cvt_size(r) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(fd.as_raw_fd(), deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `bytes` (small; fits the socket buffer) without SIGPIPE.
pub fn send_all(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: `bytes` is valid for reads of its length.
    let n = cvt_size(unsafe {
        libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Room for one control message carrying one fd (u64 words keep it aligned for cmsghdr).
#[repr(C)]
struct CmsgBuf([u64; 4]);

/// A message header for one iovec and a control buffer of `CmsgBuf`'s size; both must
/// outlive every use of the header.
fn one_byte_msg(iov: &mut libc::iovec, cbuf: &mut CmsgBuf) -> libc::msghdr {
    // SAFETY: plain C struct; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<CmsgBuf>();
    msg
}

/// Sends one byte with `fd` attached (SCM_RIGHTS).
pub fn send_fd(sock: &OwnedFd, byte: u8, fd: &OwnedFd) -> io::Result<()> {
    let mut data = [byte];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = CmsgBuf([0; 4]);
    let mut msg = one_byte_msg(&mut iov, &mut cbuf);
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    debug_assert!(msg.msg_controllen <= size_of::<CmsgBuf>());
    // SAFETY: msg_control points to a buffer of msg_controllen bytes, so the first header fits.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if cmsg.is_null() {
        return Err(io::Error::other("no room for control message"));
    }
    // SAFETY: `cmsg` points into `cbuf`, which has room for the header and one fd.
    unsafe {
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd.as_raw_fd());
    }
    // SAFETY: `msg` and everything it points to live across the call.
    let n = cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })?;
    if n != 1 {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
    }
    Ok(())
}

/// Receives one byte and at most one attached fd before `deadline`.
/// `Ok(None)` if the peer closed the connection without sending anything.
pub fn recv_fd(sock: &OwnedFd, deadline: Instant) -> io::Result<Option<(u8, Option<OwnedFd>)>> {
    loop {
        let mut data = [0u8];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
        let mut cbuf = CmsgBuf([0; 4]);
        let mut msg = one_byte_msg(&mut iov, &mut cbuf);
        let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
        // SAFETY: `msg` points to valid buffers of the stated sizes.
        match cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) }) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some((data[0], take_fd(&msg)))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(sock.as_raw_fd(), deadline)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Takes ownership of every fd in `msg`'s control data, returning the first (others are closed).
fn take_fd(msg: &libc::msghdr) -> Option<OwnedFd> {
    let mut first = None;
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk the kernel-written headers
    // within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside the control buffer (see above).
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let payload = c.cmsg_len - unsafe { libc::CMSG_LEN(0) } as usize;
            for i in 0..payload / size_of::<RawFd>() {
                // SAFETY: the kernel wrote `payload` bytes of fds after the header.
                let raw = unsafe { libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: SCM_RIGHTS installed this fd in our table; nobody else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                if first.is_none() {
                    first = Some(fd);
                }
            }
        }
        // SAFETY: as above; CMSG_NXTHDR returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    first
}
