//! Batched datagram I/O for the media shards: `recvmmsg(2)` reads up to [`BATCH`] packets
//! from a socket in one system call and `sendmmsg(2)` sends several from one socket.
//!
//! A shard owns one [`Batch`]: a fixed pool of packet buffers plus the message headers the
//! kernel fills, allocated once when the shard starts. Packets are relayed in the buffer
//! they were read into (headers rewritten in place) and sent from it: nothing is copied or
//! allocated per packet. The unsafe code of the crate is confined to this module.
//!
//! Sockets marked with [`stamp_arrivals`] have the kernel's receive time of each datagram
//! read with it ([`Batch::arrived`]), so a shard can tell how long a packet spent in the
//! switch, its queue on the socket included.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Packets read or sent per system call.
pub(crate) const BATCH: usize = 16;
/// Largest datagram a buffer holds; longer ones are dropped as malformed.
pub(crate) const MAX_PACKET: usize = 2048;

/// Buffers and message headers for one shard's batched reads and sends.
pub(crate) struct Batch {
    bufs: Box<[[u8; MAX_PACKET]; BATCH]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    from: [SocketAddr; BATCH],
    names: Box<[libc::sockaddr_storage; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    /// Ancillary data of each read (the kernel's receive timestamp).
    controls: Box<[Control; BATCH]>,
    /// Each packet's arrival, nanoseconds since the Unix epoch (0: not stamped).
    arrived: [u64; BATCH],
}

/// Room for one `SCM_TIMESTAMPNS` control message (a `timespec`), aligned as `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Asks the kernel to stamp each datagram `socket` receives with its arrival time
/// (`SO_TIMESTAMPNS`), read back by [`Batch::arrived`]. Best effort: a socket that cannot
/// be stamped still works, its packets unstamped.
pub(crate) fn stamp_arrivals(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed; the fd is the caller's open
    // socket.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Now, in the clock [`Batch::arrived`] is in: nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) const UNSPECIFIED: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

impl Batch {
    /// The buffers, allocated once.
    pub(crate) fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value (null pointers, zero lengths).
        let (names, iovs, hdrs) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        Self {
            bufs: Box::new([[0; MAX_PACKET]; BATCH]),
            lens: [0; BATCH],
            truncated: [false; BATCH],
            from: [UNSPECIFIED; BATCH],
            names: Box::new(names),
            iovs: Box::new(iovs),
            hdrs: Box::new(hdrs),
            controls: Box::new([Control([0; 64]); BATCH]),
            arrived: [0; BATCH],
        }
    }

    /// Reads up to [`BATCH`] datagrams from `fd` without blocking; returns how many (the
    /// error `WouldBlock` when there were none). Fewer than `BATCH` means the socket was
    /// empty when the kernel looked.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_PACKET,
            };
            let hdr = &mut self.hdrs[i];
            hdr.msg_hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            hdr.msg_hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = size_of::<Control>() as _;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: every header points at a buffer, an iovec, an address and a control
        // buffer owned by `self`, which outlive the call; lengths match the allocations.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let hdr = &self.hdrs[i];
            self.lens[i] = (hdr.msg_len as usize).min(MAX_PACKET);
            self.truncated[i] = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // No address written (namelen 0): unspecified, never a stale one.
            self.from[i] = if hdr.msg_hdr.msg_namelen == 0 {
                UNSPECIFIED
            } else {
                decode(&self.names[i]).unwrap_or(UNSPECIFIED)
            };
            self.arrived[i] = timestamp(&self.hdrs[i].msg_hdr);
        }
        Ok(n)
    }

    /// When packet `i` of the last read reached the socket, in nanoseconds since the Unix
    /// epoch ([`now_ns`]'s clock); 0 when the socket does not stamp its packets.
    pub(crate) fn arrived(&self, i: usize) -> u64 {
        self.arrived[i]
    }

    /// Packet `i` of the last read: its bytes (to rewrite in place) and its source. A
    /// datagram longer than [`MAX_PACKET`] comes back empty.
    pub(crate) fn packet(&mut self, i: usize) -> (&mut [u8], SocketAddr) {
        let len = if self.truncated[i] { 0 } else { self.lens[i] };
        (&mut self.bufs[i][..len], self.from[i])
    }

    /// Packet `i`'s whole buffer and its length (0 for an oversized datagram), for a
    /// rewrite that changes the length (SRTP adds or removes its trailer in place); the
    /// new length is given back with [`set_len`](Self::set_len).
    pub(crate) fn buffer(&mut self, i: usize) -> (&mut [u8; MAX_PACKET], usize) {
        let len = if self.truncated[i] { 0 } else { self.lens[i] };
        (&mut self.bufs[i], len)
    }

    /// Sets packet `i`'s length after a rewrite in its buffer.
    pub(crate) fn set_len(&mut self, i: usize, len: usize) {
        self.lens[i] = len.min(MAX_PACKET);
        self.truncated[i] = false;
    }

    /// Sends packets of the last read (`items`: buffer index and destination) from `fd` in
    /// as few system calls as the kernel allows. Returns how many were sent; a packet the
    /// kernel refused is skipped and the rest still go.
    pub(crate) fn send(&mut self, fd: RawFd, items: &[(usize, SocketAddr)]) -> usize {
        let count = items.len().min(BATCH);
        for (k, &(i, to)) in items[..count].iter().enumerate() {
            let namelen = encode(to, &mut self.names[k]);
            self.iovs[k] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            };
            let hdr = &mut self.hdrs[k];
            hdr.msg_hdr.msg_name = (&raw mut self.names[k]).cast();
            hdr.msg_hdr.msg_namelen = namelen;
            hdr.msg_hdr.msg_iov = &raw mut self.iovs[k];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let (mut next, mut sent) = (0, 0);
        while next < count {
            // SAFETY: headers `next..count` point at buffers, iovecs and addresses owned by
            // `self`, set up above.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[next..].as_mut_ptr(),
                    (count - next) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                next += n as usize;
                sent += n as usize;
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A full socket buffer or an ICMP error pending on the socket: the packet at
            // `next` is lost, the others may still go.
            next += 1;
        }
        sent
    }
}

/// The `SCM_TIMESTAMPNS` time in a received message's ancillary data, in nanoseconds since
/// the Unix epoch; 0 when there is none.
// `msg_controllen` is a `size_t` on glibc, a `socklen_t` elsewhere.
#[allow(clippy::unnecessary_cast)]
fn timestamp(hdr: &libc::msghdr) -> u64 {
    if hdr.msg_control.is_null() || (hdr.msg_controllen as usize) < size_of::<libc::cmsghdr>() {
        return 0;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of control
    // messages, which the CMSG macros walk within those bounds.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                && (*cmsg).cmsg_len as usize
                    >= libc::CMSG_LEN(size_of::<libc::timespec>() as u32) as usize
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return (ts.tv_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    0
}

fn decode(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET), which fits in the
            // storage and has no stricter alignment.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn encode(addr: SocketAddr, name: &mut libc::sockaddr_storage) -> u32 {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is at least as aligned.
            let a =
                unsafe { &mut *(name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_port = v4.port().to_be();
            a.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            a.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let a =
                unsafe { &mut *(name as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a.sin6_port = v6.port().to_be();
            a.sin6_flowinfo = v6.flowinfo().to_be();
            a.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            a.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_burst_is_read_in_one_call_with_sources_and_sent_back_in_one() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut batch = Batch::new();
        assert_eq!(
            batch.recv(rx.as_raw_fd()).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        for i in 0..(BATCH as u8 + 3) {
            tx.send_to(&[i; 12], rx.local_addr().expect("addr"))
                .expect("send");
        }
        let n = batch.recv(rx.as_raw_fd()).expect("recv");
        assert_eq!(n, BATCH);
        let (p, from) = batch.packet(5);
        assert_eq!(p, &[5u8; 12][..]);
        assert_eq!(from, tx.local_addr().expect("addr"));
        let back: Vec<(usize, SocketAddr)> = (0..4).map(|i| (i, from)).collect();
        assert_eq!(batch.send(rx.as_raw_fd(), &back), 4);
        let mut buf = [0u8; 64];
        for i in 0..4u8 {
            let (len, _) = tx.recv_from(&mut buf).expect("echo");
            assert_eq!(&buf[..len], &[i; 12][..]);
        }
        // The remaining three come with the next read, which reports the socket drained.
        assert_eq!(batch.recv(rx.as_raw_fd()).expect("recv"), 3);
        assert_eq!(batch.packet(2).0, &[BATCH as u8 + 2; 12][..]);
    }

    #[test]
    fn a_stamped_socket_tells_when_each_packet_arrived() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        stamp_arrivals(&rx).expect("SO_TIMESTAMPNS");
        // The kernel turns receive stamping on for the host a moment later (deferred
        // work); until then a packet is stamped when read.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = now_ns();
        tx.send_to(&[1; 12], rx.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(5));
        tx.send_to(&[2; 12], rx.local_addr().expect("addr"))
            .expect("send");
        tx.send_to(&[3; 12], plain.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).expect("recv"), 2);
        let after = now_ns();
        let (first, second) = (batch.arrived(0), batch.arrived(1));
        assert!(
            before <= first && first <= second && second <= after,
            "{before} {first} {second} {after}"
        );
        // Sent 5 ms apart, stamped as they arrived (not when read).
        assert!(second - first >= 4_000_000, "{first} {second}");
        assert!(after - second >= 4_000_000, "{second} {after}");
        // A socket not asked for stamps gives none.
        assert_eq!(batch.recv(plain.as_raw_fd()).expect("recv"), 1);
        assert_eq!(batch.arrived(0), 0);
    }

    #[test]
    fn an_oversized_datagram_comes_back_empty_and_ipv6_sources_are_read() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host
        };
        let tx = UdpSocket::bind("[::1]:0").expect("bind");
        tx.send_to(&[7u8; MAX_PACKET + 100], rx.local_addr().expect("addr"))
            .expect("send");
        tx.send_to(&[1u8; 3], rx.local_addr().expect("addr"))
            .expect("send");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).expect("recv"), 2);
        assert!(batch.packet(0).0.is_empty());
        let (p, from) = batch.packet(1);
        assert_eq!(p, &[1u8; 3][..]);
        assert_eq!(from, tx.local_addr().expect("addr"));
    }
}
