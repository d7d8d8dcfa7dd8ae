//! Passing listening sockets between proxy processes: a message with file
//! descriptors attached (`SCM_RIGHTS`) over a Unix stream socket. The
//! receiver gets its own descriptors of the same open sockets, so the
//! listen queue (and every connection waiting in it) carries over.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// At most this many descriptors in one message (one per route).
pub(super) const MAX_FDS: usize = 256;

/// Send `data` with `fds` attached, in one `sendmsg`.
pub(super) fn send(stream: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} listening sockets; at most {MAX_FDS} can be handed over",
                fds.len()
            ),
        ));
    }
    if data.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty message"));
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(fd_bytes) bytes, so the
        // first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the handover message was cut short",
        ));
    }
    Ok(())
}

/// Receive one message of at most `max` bytes and the descriptors attached
/// to it (close-on-exec). A message cut short (data or descriptors) is an
/// error, and every descriptor received is closed again.
pub(super) fn recv(stream: &UnixStream, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; max];
    // SAFETY: a pure size computation.
    let space =
        unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: plain data, pointers set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers for the duration of the call.
    let got = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg's control buffer; CMSG_* walk it within
    // msg_controllen, and each SCM_RIGHTS payload holds whole RawFds that
    // are now ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(first.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the handover message was larger than expected",
        ));
    }
    data.truncate(got as usize);
    Ok((data, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_listening_socket_passed_over_keeps_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Queued before the handover, accepted after it.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"queued").unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"{\"routes\":1}", &[listener.as_raw_fd()]).unwrap();
        drop(listener);
        let (data, fds) = recv(&b, 4096).unwrap();
        assert_eq!(data, b"{\"routes\":1}");
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let (mut conn, _) = received.accept().unwrap();
        let mut buf = [0u8; 6];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"queued");
    }

    #[test]
    fn a_message_without_descriptors_has_none() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"x", &[]).unwrap();
        let (data, fds) = recv(&b, 16).unwrap();
        assert_eq!((data.as_slice(), fds.len()), (&b"x"[..], 0));
    }
}
