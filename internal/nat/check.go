package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

// CandidateKind says how a candidate address was learned (RFC 8445 §5.1.1).
type CandidateKind uint8

// Candidate kinds.
const (
	// Host is an address of a local interface.
	Host CandidateKind = 1
	// ServerReflexive is the address a STUN server saw (the NAT's mapping).
	ServerReflexive CandidateKind = 2
	// Relayed is a TURN allocation's relayed address.
	Relayed CandidateKind = 3
)

// String returns the kind's name as ICE spells it.
func (k CandidateKind) String() string {
	switch k {
	case Host:
		return "host"
	case ServerReflexive:
		return "srflx"
	case Relayed:
		return "relay"
	default:
		return "unknown"
	}
}

// Candidate is an address a peer may be reachable at.
type Candidate struct {
	Kind CandidateKind
	Addr netip.AddrPort
}

// MaxCandidates bounds the candidates one check carries; more are ignored.
const MaxCandidates = 8

// attrCandidates is Keyhole's comprehension-optional STUN attribute carrying
// the sender's current candidates, so that both ends learn each other's new
// addresses on any working path (a trickle in the checks themselves). Each
// entry is kind (1 byte), address length (1 byte: 4 or 16), port (2 bytes),
// address.
const attrCandidates stun.AttrType = 0xC4B1

// Check errors.
var (
	// ErrBadIntegrity means a check answer failed its MESSAGE-INTEGRITY.
	ErrBadIntegrity = errors.New("connectivity check: bad message integrity")
)

// CheckConfig tells a Bind how to answer connectivity checks: STUN Binding
// requests from peers, authenticated with a short-term key per USERNAME
// (RFC 8489 §9.1). Requests that fail authentication are dropped silently,
// so a Bind never answers (or amplifies) anything an unknown sender says.
type CheckConfig struct {
	// Key returns the key for username; false drops the request.
	Key func(username string) (key []byte, ok bool)
	// Local returns the candidates to advertise in answers.
	Local func() []Candidate
	// OnCheck, if set, is called after an authenticated request, on the
	// receive path: it must not block. relayed says the request came
	// through this Bind's TURN allocation.
	OnCheck func(username string, from netip.AddrPort, relayed bool, remote []Candidate)
}

// SetChecks installs (or, with nil, removes) the connectivity check
// configuration. Until one is set, Binding requests are dropped.
func (b *Bind) SetChecks(cfg *CheckConfig) { b.checks.Store(cfg) }

// CheckResult is the answer to a connectivity check.
type CheckResult struct {
	// Mapped is our address as the peer saw it.
	Mapped netip.AddrPort
	// Remote are the candidates the peer advertised.
	Remote []Candidate
	// RTT is from the last request sent to the answer.
	RTT time.Duration
}

// checkSchedule retransmits a check every 100 ms for about 2 s: checks are
// also what opens the NATs on the way (hole punching), so they are sent
// steadily rather than backing off.
var checkSchedule = schedule{rto: 100 * time.Millisecond, max: 100 * time.Millisecond, sends: 20}

// Check sends an authenticated connectivity check to to from the WireGuard
// socket, advertising local, and waits for the peer's authenticated answer.
// It retransmits every 100 ms for about 2 s or until ctx is done.
func (b *Bind) Check(ctx context.Context, to netip.AddrPort, username string, key []byte, local []Candidate) (CheckResult, error) {
	var res CheckResult
	integrity := stun.NewShortTermIntegrity(string(key))
	var sent time.Time
	err := b.transact(ctx, to, checkSchedule, func(id [stunTxIDSize]byte) ([]byte, error) {
		m, err := stun.Build(stun.NewTransactionIDSetter(id), stun.BindingRequest,
			stun.NewUsername(username), candidatesSetter(local), integrity, stun.Fingerprint)
		if err != nil {
			return nil, err
		}
		sent = time.Now()
		return m.Raw, nil
	}, func(raw []byte) error {
		var m stun.Message
		if err := stun.Decode(raw, &m); err != nil {
			return fmt.Errorf("%w: %w", errMalformed, err)
		}
		if err := integrity.Check(&m); err != nil {
			return fmt.Errorf("%w: %w", errMalformed, ErrBadIntegrity) // a spoof: keep waiting
		}
		if m.Type != stun.BindingSuccess {
			return ErrRefused
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(&m); err != nil {
			return fmt.Errorf("%w: %w", errMalformed, err)
		}
		ip, ok := netip.AddrFromSlice(xa.IP)
		if !ok || xa.Port <= 0 || xa.Port > 0xffff {
			return fmt.Errorf("%w: bad XOR-MAPPED-ADDRESS", errMalformed)
		}
		res = CheckResult{Mapped: netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), Remote: candidatesOf(&m), RTT: time.Since(sent)}
		return nil
	})
	if err != nil {
		return CheckResult{}, fmt.Errorf("connectivity check: %w", err)
	}
	return res, nil
}

// answer handles pkt if it is a Binding request: an authenticated one is
// answered through reply, anything else is dropped. It reports whether pkt
// was a Binding request (and so is not for WireGuard: its first byte is 0).
func (b *Bind) answer(pkt []byte, from netip.AddrPort, relayed bool, reply func([]byte)) bool {
	if !isSTUN(pkt) || stunType(pkt) != stunBindingRequest {
		return false
	}
	cfg := b.checks.Load()
	if cfg == nil || cfg.Key == nil {
		return true
	}
	var m stun.Message
	if err := stun.Decode(append([]byte(nil), pkt...), &m); err != nil {
		return true
	}
	var user stun.Username
	if err := user.GetFrom(&m); err != nil {
		return true
	}
	key, ok := cfg.Key(user.String())
	if !ok {
		return true
	}
	integrity := stun.NewShortTermIntegrity(string(key))
	if err := integrity.Check(&m); err != nil {
		return true
	}
	var local []Candidate
	if cfg.Local != nil {
		local = cfg.Local()
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())},
		candidatesSetter(local), integrity, stun.Fingerprint)
	if err != nil {
		return true
	}
	reply(resp.Raw)
	if cfg.OnCheck != nil {
		cfg.OnCheck(user.String(), from, relayed, candidatesOf(&m))
	}
	return true
}

// replyDirect returns a reply function that sends to ep on the socket.
func (b *Bind) replyDirect(ep conn.Endpoint) func([]byte) {
	return func(p []byte) { _ = b.inner.Send([][]byte{p}, ep) } // best effort, like any UDP answer
}

// candidatesSetter encodes cs (at most MaxCandidates) as attrCandidates.
type candidatesSetter []Candidate

// AddTo adds the attribute to m; with no candidates it adds nothing.
func (cs candidatesSetter) AddTo(m *stun.Message) error {
	if len(cs) == 0 {
		return nil
	}
	var v []byte
	for i, c := range cs {
		if i == MaxCandidates {
			break
		}
		a := c.Addr.Addr().Unmap()
		raw := a.AsSlice()
		v = append(v, byte(c.Kind), byte(len(raw)))
		v = binary.BigEndian.AppendUint16(v, c.Addr.Port())
		v = append(v, raw...)
	}
	m.Add(attrCandidates, v)
	return nil
}

// candidatesOf decodes attrCandidates from m, skipping malformed entries.
func candidatesOf(m *stun.Message) []Candidate {
	v, err := m.Get(attrCandidates)
	if err != nil {
		return nil
	}
	var out []Candidate
	for len(v) >= 4 && len(out) < MaxCandidates {
		kind, n, port := CandidateKind(v[0]), int(v[1]), binary.BigEndian.Uint16(v[2:4])
		v = v[4:]
		if (n != 4 && n != 16) || len(v) < n {
			break
		}
		ip, _ := netip.AddrFromSlice(v[:n])
		v = v[n:]
		if kind < Host || kind > Relayed || port == 0 || !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		out = append(out, Candidate{Kind: kind, Addr: netip.AddrPortFrom(ip.Unmap(), port)})
	}
	return out
}
