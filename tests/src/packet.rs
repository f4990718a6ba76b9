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

/// IPv6 extension headers a [`Frame6`] can carry (RFC 8200 §4).
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;

/// An IPv6 frame under construction: TCP, UDP or ICMPv6 (`proto` 58, `payload` is then the
/// whole ICMPv6 message), after optional extension headers. Upper-layer checksums are
/// computed over the pseudo-header, so frames are what a real client sends.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
    /// Extension headers in order: (type, length in 8-byte units beyond the first 8).
    /// A fragment header is always 8 bytes (its length is ignored).
    pub ext: Vec<(u8, u8)>,
    /// Raw fragment offset + flags of a fragment header.
    pub frag: u16,
    pub tcp_flags: u8,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Frame6 {
    pub fn tcp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Frame6 {
            src,
            dst,
            proto: 6,
            sport,
            dport,
            payload: Vec::new(),
            ext: Vec::new(),
            frag: 0,
            tcp_flags: 0x02,
            src_mac: CLIENT_MAC,
            dst_mac: BALANCER_MAC,
        }
    }

    pub fn udp(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16) -> Self {
        Frame6 {
            proto: 17,
            payload: b"hello".to_vec(),
            ..Frame6::tcp(src, sport, dst, dport)
        }
    }

    /// An ICMPv6 message (type, code, 4 bytes of header data, body), checksum computed.
    pub fn icmp(
        src: [u8; 16],
        dst: [u8; 16],
        ty: u8,
        code: u8,
        data: [u8; 4],
        body: &[u8],
    ) -> Self {
        let mut m = vec![ty, code, 0, 0];
        m.extend_from_slice(&data);
        m.extend_from_slice(body);
        Frame6 {
            proto: 58,
            payload: m,
            ..Frame6::tcp(src, 0, dst, 0)
        }
    }

    /// The IPv6 packet (no Ethernet header).
    pub fn packet(&self) -> Vec<u8> {
        let upper = self.upper();
        let mut ext = Vec::new();
        for (i, &(ty, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.proto, |e| e.0);
            if ty == EXT_FRAGMENT {
                ext.extend_from_slice(&[next, 0]);
                ext.extend_from_slice(&self.frag.to_be_bytes());
                ext.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                continue;
            }
            let total = (len as usize + 1) * 8;
            let mut h = vec![0u8; total];
            h[0] = next;
            h[1] = len;
            if ty == EXT_ROUTING {
                h[2] = 253; // experimental routing type, segments left 0: ignored by nodes
            } else {
                h[2] = 1; // PadN over the rest
                h[3] = (total - 4) as u8;
            }
            ext.extend_from_slice(&h);
        }
        let first = self.ext.first().map_or(self.proto, |e| e.0);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((ext.len() + upper.len()) as u16).to_be_bytes());
        p.push(first);
        p.push(64);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&ext);
        p.extend_from_slice(&upper);
        p
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&self.packet());
        f
    }

    fn upper(&self) -> Vec<u8> {
        let mut h = Vec::new();
        let csum_at = match self.proto {
            6 => {
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&1u32.to_be_bytes());
                h.extend_from_slice(&0u32.to_be_bytes());
                h.push(5 << 4);
                h.push(self.tcp_flags);
                h.extend_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                16
            }
            17 => {
                h.extend_from_slice(&self.sport.to_be_bytes());
                h.extend_from_slice(&self.dport.to_be_bytes());
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                6
            }
            _ => 2,
        };
        h.extend_from_slice(&self.payload);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src);
        pseudo.extend_from_slice(&self.dst);
        pseudo.extend_from_slice(&(h.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, self.proto]);
        pseudo.extend_from_slice(&h);
        let c = checksum(&pseudo);
        h[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// An ICMPv6 Packet Too Big (type 2) from `router` to `to`, quoting the start of `quoted`
/// (an IPv6 frame built by [`Frame6`], Ethernet header skipped): the fixed header and the
/// first 8 bytes after it at least.
pub fn icmpv6_packet_too_big(router: [u8; 16], to: [u8; 16], quoted: &[u8], mtu: u32) -> Vec<u8> {
    let inner = &quoted[14..quoted.len().min(14 + 40 + 20)];
    Frame6::icmp(router, to, 2, 0, mtu.to_be_bytes(), inner).bytes()
}

/// An NDP neighbour solicitation for `target` from `src` (to the solicited-node multicast
/// address and its multicast MAC), with a source link-layer address option.
pub fn ndp_solicitation(src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut dst = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    dst[13..].copy_from_slice(&target[13..]);
    let mut body = target.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&CLIENT_MAC);
    let mut f = Frame6::icmp(src, dst, 135, 0, [0; 4], &body);
    f.dst_mac = [0x33, 0x33, 0xff, target[13], target[14], target[15]];
    let mut out = f.bytes();
    out[14 + 7] = 255; // hop limit 255, as NDP requires
    out
}
