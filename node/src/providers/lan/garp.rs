//! Gratuitous ARP: tells every host on the LAN that an IPv4 address is now reached through this
//! node's interface, so clients' ARP caches follow a moved workload at once instead of after
//! their entries time out. The same frame `arping -U` sends (an ARP request for the address
//! from the address, to the broadcast MAC); written with an `AF_PACKET` socket so no extra
//! package is needed on the node.

use std::net::Ipv4Addr;

use crate::sys::netns;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Debug, thiserror::Error)]
pub enum GarpError {
    #[error("interface {0} not found in this network namespace")]
    NoInterface(String),
    #[error("interface {interface} has no Ethernet address ({detail})")]
    NoMac { interface: String, detail: String },
    #[error("gratuitous ARP on {interface}: {source}")]
    Socket { interface: String, source: std::io::Error },
}

/// The frame: Ethernet header plus an ARP request whose sender and target are both `ip`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request (what `arping -U` sends)
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The interface's MAC, from `ip` (not /sys: sysfs shows the namespace it was mounted in,
/// which is not ours when the daemon was started with `nsenter --net`).
pub fn mac_of(interface: &str) -> Result<[u8; 6], GarpError> {
    let no_mac = |detail: String| GarpError::NoMac { interface: interface.into(), detail };
    let out = netns::ip(&["-o", "link", "show", "dev", interface]).map_err(|e| no_mac(e.to_string()))?;
    let text = out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).ok_or_else(|| no_mac(out.trim().to_string()))?;
    let bytes: Vec<u8> = text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| no_mac(text.to_string()))
}

/// Sends one gratuitous ARP for `ip` out of `interface` (in this thread's network namespace).
pub fn announce(interface: &str, ip: Ipv4Addr) -> Result<(), GarpError> {
    let mac = mac_of(interface)?;
    let name = std::ffi::CString::new(interface).map_err(|_| GarpError::NoInterface(interface.into()))?;
    // SAFETY: plain libc calls with valid pointers and lengths; the fd is closed below.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(GarpError::NoInterface(interface.into()));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be()));
        if fd < 0 {
            return Err(GarpError::Socket { interface: interface.into(), source: std::io::Error::last_os_error() });
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&BROADCAST);
        let f = frame(mac, ip);
        let sent = libc::sendto(
            fd,
            f.as_ptr().cast(),
            f.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(GarpError::Socket { interface: interface.into(), source: err });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_an_arp_request_for_the_address_from_the_address() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = frame(mac, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 77, 0, 2]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 77, 0, 2]);
    }
}
