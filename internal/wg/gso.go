package wg

import (
	"encoding/binary"
	"errors"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Software TCP segmentation. The link endpoint advertises host GSO to gVisor,
// so the TCP sender hands it packets of up to ~64 KiB with a partial
// (pseudo-header only) checksum. WireGuard needs MTU-sized packets with
// complete checksums, so the tun.Device Read path cuts them up here. This is
// what a NIC (or the kernel's GSO) would do; wireguard-go has its own
// version for Linux TUN devices but does not export it.

const (
	ipv4HeaderMin  = 20
	ipv6HeaderLen  = 40
	tcpHeaderMin   = 20
	ipProtoTCP     = 6
	tcpFlagFIN     = 0x01
	tcpFlagPSH     = 0x08
	tcpFlagCWR     = 0x80
	tcpChecksumOff = 16
)

var (
	errMalformed   = errors.New("malformed IP/TCP packet")
	errNotTCP      = errors.New("not a TCP packet")
	errShortBuffer = errors.New("output buffer too small for segment")
)

// tcpPacket holds the header layout of an IP packet carrying TCP, as found by
// parseTCP. Lengths are in bytes.
type tcpPacket struct {
	v6        bool
	ipHdrLen  int
	tcpHdrLen int
}

// hdrLen is the length of the IP and TCP headers together.
func (p tcpPacket) hdrLen() int { return p.ipHdrLen + p.tcpHdrLen }

// segments returns how many packets of at most mss payload bytes pkt (whose
// layout is p) becomes. A packet without payload is one segment.
func (p tcpPacket) segments(pkt []byte, mss int) int {
	payload := len(pkt) - p.hdrLen()
	if payload <= mss || mss <= 0 {
		return 1
	}
	return (payload + mss - 1) / mss
}

// parseTCP checks that pkt is a whole, unfragmented IPv4 or IPv6 packet
// carrying TCP and returns its header layout. The length fields must agree
// with len(pkt): the packets come from our own stack, so a mismatch means a
// bug, and we would rather drop the packet than send garbage.
func parseTCP(pkt []byte) (tcpPacket, error) {
	var p tcpPacket
	if len(pkt) < 1 {
		return p, errMalformed
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < ipv4HeaderMin {
			return p, errMalformed
		}
		p.ipHdrLen = int(pkt[0]&0x0f) * 4
		if p.ipHdrLen < ipv4HeaderMin || p.ipHdrLen > len(pkt) {
			return p, errMalformed
		}
		if int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) {
			return p, errMalformed
		}
		// More-fragments flag or a fragment offset: not ours to segment.
		if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return p, errMalformed
		}
		if pkt[9] != ipProtoTCP {
			return p, errNotTCP
		}
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return p, errMalformed
		}
		p.v6 = true
		p.ipHdrLen = ipv6HeaderLen
		if int(binary.BigEndian.Uint16(pkt[4:6])) != len(pkt)-ipv6HeaderLen {
			return p, errMalformed
		}
		// Our stack adds no extension headers to TCP, so TCP must follow
		// the fixed header directly.
		if pkt[6] != ipProtoTCP {
			return p, errNotTCP
		}
	default:
		return p, errMalformed
	}
	if len(pkt)-p.ipHdrLen < tcpHeaderMin {
		return p, errMalformed
	}
	p.tcpHdrLen = int(pkt[p.ipHdrLen+12]>>4) * 4
	if p.tcpHdrLen < tcpHeaderMin || p.hdrLen() > len(pkt) {
		return p, errMalformed
	}
	return p, nil
}

// pseudoHeaderSum returns the unfolded-then-folded one's complement sum of the
// TCP pseudo-header for a TCP segment of tcpLen bytes inside the IP packet
// whose header is ipHdr.
func pseudoHeaderSum(p tcpPacket, ipHdr []byte, tcpLen int) uint16 {
	var sum uint16
	if p.v6 {
		sum = checksum.Checksum(ipHdr[8:40], 0) // source and destination
	} else {
		sum = checksum.Checksum(ipHdr[12:20], 0)
	}
	var tail [4]byte
	if p.v6 {
		// Upper-layer length is 32 bits in IPv6, 16 in IPv4; with a
		// segment under 64 KiB both sum the same.
		binary.BigEndian.PutUint16(tail[0:2], uint16(tcpLen))
		tail[3] = ipProtoTCP
	} else {
		tail[1] = ipProtoTCP
		binary.BigEndian.PutUint16(tail[2:4], uint16(tcpLen))
	}
	return checksum.Checksum(tail[:], sum)
}

// setTCPChecksum computes the full TCP checksum of pkt in place, replacing
// whatever the checksum field held (gVisor leaves a partial sum there when it
// expects offload).
func setTCPChecksum(pkt []byte, p tcpPacket) {
	tcp := pkt[p.ipHdrLen:]
	tcp[tcpChecksumOff], tcp[tcpChecksumOff+1] = 0, 0
	sum := pseudoHeaderSum(p, pkt[:p.ipHdrLen], len(tcp))
	sum = checksum.Checksum(tcp, sum)
	binary.BigEndian.PutUint16(tcp[tcpChecksumOff:], ^sum)
}

// setIPv4Checksum recomputes the IPv4 header checksum of hdr in place.
func setIPv4Checksum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:], ^checksum.Checksum(hdr, 0))
}

// segmentTCP splits pkt, a TCP packet with layout p, into segments carrying
// at most mss payload bytes each, writing segment number first, first+1, …
// into out[i][offset:] and their lengths into sizes[i]. It stops when out is
// full and returns how many segments it wrote; the caller resumes with
// first+n. Every segment gets its own IP length, IPv4 ID and header checksum,
// TCP sequence number and full TCP checksum; FIN and PSH stay only on the
// last segment and CWR only on the first, as Linux TCP GSO does.
//
// pkt is not modified. A packet whose payload fits in mss comes out as one
// segment with its checksums completed.
func segmentTCP(pkt []byte, p tcpPacket, mss, first int, out [][]byte, sizes []int, offset int) (int, error) {
	if mss <= 0 {
		return 0, errMalformed
	}
	hdrLen := p.hdrLen()
	payload := pkt[hdrLen:]
	total := p.segments(pkt, mss)
	var ipID uint16
	if !p.v6 {
		ipID = binary.BigEndian.Uint16(pkt[4:6])
	}
	seq := binary.BigEndian.Uint32(pkt[p.ipHdrLen+4:])
	flags := pkt[p.ipHdrLen+13]

	n := 0
	for seg := first; seg < total && n < len(out); seg++ {
		start := seg * mss
		end := min(start+mss, len(payload))
		segLen := end - start
		if segLen < 0 { // only for first > total, a caller bug
			return n, errMalformed
		}
		if offset+hdrLen+segLen > len(out[n]) {
			return n, errShortBuffer
		}
		dst := out[n][offset : offset+hdrLen+segLen]
		copy(dst, pkt[:hdrLen])
		copy(dst[hdrLen:], payload[start:end])

		ip := dst[:p.ipHdrLen]
		if p.v6 {
			binary.BigEndian.PutUint16(ip[4:6], uint16(p.tcpHdrLen+segLen))
		} else {
			binary.BigEndian.PutUint16(ip[2:4], uint16(hdrLen+segLen))
			binary.BigEndian.PutUint16(ip[4:6], ipID+uint16(seg))
			setIPv4Checksum(ip)
		}

		tcp := dst[p.ipHdrLen:]
		binary.BigEndian.PutUint32(tcp[4:8], seq+uint32(start))
		f := flags
		if seg != total-1 {
			f &^= tcpFlagFIN | tcpFlagPSH
		}
		if seg != 0 {
			f &^= tcpFlagCWR
		}
		tcp[13] = f
		setTCPChecksum(dst, p)

		sizes[n] = len(dst)
		n++
	}
	return n, nil
}
