//! The userspace baseline: an AF_PACKET socket on the interface with a classic
//! BPF filter that passes only TCP SYNs (SYN set, ACK clear; IPv4 first
//! fragments and IPv6 without extension headers), read with recvmmsg by a thread
//! that counts per destination port.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use anyhow::{Context as _, Result, bail};
use scan_common::PORTS;

const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Bytes of each SYN handed to userspace: enough for the headers.
const SNAPLEN: u32 = 128;
const BATCH: usize = 64;

#[repr(C)]
#[derive(Default)]
struct TpacketStats {
    packets: u32,
    drops: u32,
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

// Classic BPF opcodes.
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_B_IND: u16 = 0x50;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// `tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn` for IPv4 and IPv6, as
/// `tcpdump -dd` would write it. Jump offsets count from the next instruction.
pub const SYN_FILTER: [libc::sock_filter; 18] = [
    stmt(LD_H_ABS, 12),           // 0: ethertype
    jump(JEQ_K, 0x0800, 0, 8),    // 1: IPv4 -> 2, else -> 10
    stmt(LD_B_ABS, 23),           // 2: IPv4 protocol
    jump(JEQ_K, 6, 0, 13),        // 3: TCP -> 4, else reject
    stmt(LD_H_ABS, 20),           // 4: flags + fragment offset
    jump(JSET_K, 0x1fff, 11, 0),  // 5: later fragment -> reject
    stmt(LDX_B_MSH, 14),          // 6: X = IPv4 header length
    stmt(LD_B_IND, 14 + 13),      // 7: TCP flags
    stmt(AND_K, 0x12),            // 8: SYN | ACK
    jump(JEQ_K, 0x02, 6, 7),      // 9: SYN only -> accept, else reject
    jump(JEQ_K, 0x86dd, 0, 6),    // 10: IPv6 -> 11, else reject
    stmt(LD_B_ABS, 14 + 6),       // 11: next header
    jump(JEQ_K, 6, 0, 4),         // 12: TCP -> 13, else reject
    stmt(LD_B_ABS, 14 + 40 + 13), // 13: TCP flags
    stmt(AND_K, 0x12),            // 14
    jump(JEQ_K, 0x02, 0, 1),      // 15: SYN only -> accept, else reject
    stmt(RET_K, SNAPLEN),         // 16: accept
    stmt(RET_K, 0),               // 17: reject
];

fn check(ret: libc::c_int, what: &str) -> Result<()> {
    if ret < 0 {
        return Err(io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

fn setsockopt<T>(fd: i32, level: libc::c_int, name: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: passes a pointer to a live `T` and its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    }
}

/// Opens the socket: no protocol until the filter is attached, so no unfiltered
/// packet is ever queued; then bound to `ifindex` for every EtherType.
fn open(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    check(raw, "socket(AF_PACKET, SOCK_RAW)")?;
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let raw = fd.as_raw_fd();
    let program = libc::sock_fprog {
        len: SYN_FILTER.len() as u16,
        filter: SYN_FILTER.as_ptr().cast_mut(),
    };
    check(
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program),
        "SO_ATTACH_FILTER",
    )?;
    let rcvbuf: libc::c_int = 64 << 20;
    if setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf) < 0 {
        check(
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf),
            "SO_RCVBUF",
        )?;
    }
    let one: libc::c_int = 1;
    check(
        setsockopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &one),
        "PACKET_IGNORE_OUTGOING",
    )?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    check(
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout),
        "SO_RCVTIMEO",
    )?;
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: passes a valid sockaddr_ll and its size.
    let ret = unsafe {
        libc::bind(
            raw,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(ret, "bind(AF_PACKET)")?;
    Ok(fd)
}

/// Destination port of a frame the filter passed.
fn dport(frame: &[u8]) -> Option<u16> {
    let at = match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => 14 + usize::from(frame.get(14)? & 0x0f) * 4 + 2,
        0x86dd => 14 + 40 + 2,
        _ => return None,
    };
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

pub struct Counts {
    pub counted: u64,
    /// Ports with at least one SYN.
    pub ports: usize,
    /// What the kernel says the socket received and dropped (full buffer).
    pub kernel_packets: u64,
    pub kernel_drops: u64,
}

/// The running counter; dropping it stops the thread.
pub struct AfPacketCounter {
    stop: Arc<AtomicBool>,
    counted: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<Counts>>>,
}

impl AfPacketCounter {
    pub fn start(ifindex: u32) -> Result<Self> {
        let fd = open(ifindex)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, counted) = (stop.clone(), counted.clone());
            thread::Builder::new()
                .name("af-packet".into())
                .spawn(move || count(fd, &stop, &counted))?
        };
        Ok(Self {
            stop,
            counted,
            thread: Some(thread),
        })
    }

    /// SYNs counted so far.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Stops the thread after it has read what is queued.
    pub fn finish(mut self) -> Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the AF_PACKET counter thread panicked"),
            None => bail!("the AF_PACKET counter already finished"),
        }
    }
}

impl Drop for AfPacketCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn count(fd: OwnedFd, stop: &AtomicBool, counted: &AtomicU64) -> Result<Counts> {
    let raw = fd.as_raw_fd();
    let mut per_port = vec![0u64; PORTS as usize];
    let mut buffers = vec![[0u8; SNAPLEN as usize]; BATCH];
    let mut total = 0u64;
    loop {
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: zeroed mmsghdr is valid; each points at its own iovec.
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs/iovecs/buffers outlive the call; BATCH entries.
        let n = unsafe {
            libc::recvmmsg(
                raw,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    // Nothing queued for 100 ms: stop if asked (the queue is empty).
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                _ => return Err(e).context("recvmmsg"),
            }
        }
        for (msg, buf) in msgs.iter().zip(&buffers).take(n as usize) {
            let len = (msg.msg_len as usize).min(buf.len());
            if let Some(port) = dport(&buf[..len]) {
                per_port[port as usize] += 1;
                total += 1;
            }
        }
        counted.store(total, Ordering::Relaxed);
    }
    let mut stats = TpacketStats::default();
    let mut len = size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: passes a live TpacketStats and its size.
    let ret = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &mut len,
        )
    };
    check(ret, "PACKET_STATISTICS")?;
    Ok(Counts {
        counted: total,
        ports: per_port.iter().filter(|&&c| c > 0).count(),
        kernel_packets: u64::from(stats.packets),
        kernel_drops: u64::from(stats.drops),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_stay_inside_the_program() {
        for (pc, insn) in SYN_FILTER.iter().enumerate() {
            if insn.code & 0x07 == 0x05 {
                assert!(pc + 1 + (insn.jt as usize) < SYN_FILTER.len(), "jt at {pc}");
                assert!(pc + 1 + (insn.jf as usize) < SYN_FILTER.len(), "jf at {pc}");
            }
        }
        assert_eq!(SYN_FILTER[16].k, SNAPLEN);
        assert_eq!(SYN_FILTER[17].k, 0);
    }

    #[test]
    fn ports_are_read_after_the_ip_header() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x46; // IHL 6: 24-byte header
        f[14 + 24 + 2..14 + 24 + 4].copy_from_slice(&445u16.to_be_bytes());
        assert_eq!(dport(&f), Some(445));
    }
}
