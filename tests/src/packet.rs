//! Ethernet/IPv4/TCP/UDP frame builders for fixtures. Checksums are computed (IPv4 header)
//! so frames are what a real client would send, although the balancer never reads them.

pub const BALANCER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];

/// A frame under construction, with the knobs fixtures need to break it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// IP options (length must be a multiple of 4, at most 40).
    pub ip_options: Vec<u8>,
    /// Raw value of the flags+fragment-offset field.
    pub frag: u16,
    pub tcp_flags: u8,
}

impl Frame {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Frame {
            src,
            dst,
            proto: 6,
            sport,
            dport,
            payload: Vec::new(),
            ip_options: Vec::new(),
            frag: 0x4000, // DF, as Linux sends TCP
            tcp_flags: 0x02,
        }
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Frame {
            proto: 17,
            frag: 0,
            payload: b"hello".to_vec(),
            ..Frame::tcp(src, sport, dst, dport)
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4();
        let ihl = 20 + self.ip_options.len();
        let mut f = Vec::with_capacity(14 + ihl + l4.len());
        f.extend_from_slice(&BALANCER_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        ip.extend_from_slice(&self.ip_options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    fn l4(&self) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&self.sport.to_be_bytes());
        h.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            h.extend_from_slice(&1u32.to_be_bytes()); // seq
            h.extend_from_slice(&0u32.to_be_bytes()); // ack
            h.push(5 << 4);
            h.push(self.tcp_flags);
            h.extend_from_slice(&64240u16.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        } else {
            h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
        }
        h.extend_from_slice(&self.payload);
        h
    }
}

/// RFC 1071 Internet checksum.
pub fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            (c[0] as u16) << 8
        };
        s += w as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An ARP request frame (must pass untouched).
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 100]);
    f
}

/// An IPv6 UDP frame (must pass untouched).
pub fn ipv6_udp() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BALANCER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 13, 17, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 13, 0, 0]);
    f.extend_from_slice(b"hello");
    f
}

/// An ICMP "fragmentation needed" (type 3, code 4) from `router` to `to`, quoting the first
/// 28 bytes of `quoted` (an IPv4 frame built by [`Frame`], Ethernet header skipped).
pub fn icmp_frag_needed(router: [u8; 4], to: [u8; 4], quoted: &[u8], mtu: u16) -> Vec<u8> {
    let inner = &quoted[14..14 + 28];
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(inner);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::udp(router, 0, to, 0);
    f.proto = 1;
    let mut out = f.bytes();
    // Replace the UDP part with the ICMP message and fix the IPv4 length and checksum.
    out.truncate(14 + 20);
    out.extend_from_slice(&icmp);
    let total = (20 + icmp.len()) as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&out[14..34]);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}
