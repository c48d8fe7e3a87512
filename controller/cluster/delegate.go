package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate carries memberlist's callbacks, so they stay off Cluster's API.
// memberlist calls them on its own goroutines, some with its locks held:
// none of them blocks.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
)

// metaLeaving is this node's metadata once Leave was called.
const metaLeaving = "leaving"

// NodeMeta implements memberlist.Delegate: empty, or metaLeaving.
func (d *delegate) NodeMeta(int) []byte {
	if d.c.leaving.Load() {
		return []byte(metaLeaving)
	}
	return nil
}

// NotifyMsg implements memberlist.Delegate: it hands a gossip message to
// the event worker, or drops it when the worker is behind.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) == 0 || len(b) > maxEventBytes {
		d.c.stats.dropped.Add(1)
		d.c.log.Debug("cluster: dropped message of bad size", "bytes", len(b))
		return
	}
	d.hand(inbound{msgs: [][]byte{slices.Clone(b)}})
}

// GetBroadcasts implements memberlist.Delegate.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.c.queue.GetBroadcasts(overhead, limit)
}

// LocalState implements memberlist.Delegate: the live revocations.
func (d *delegate) LocalState(bool) []byte {
	return encodeState(d.c.revs.snapshot(time.Now()))
}

// MergeRemoteState implements memberlist.Delegate: a peer's revocations
// go to the event worker like gossip, which verifies and delivers those
// not seen before.
func (d *delegate) MergeRemoteState(buf []byte, _ bool) {
	msgs, err := decodeState(buf)
	if err != nil {
		d.c.stats.dropped.Add(1)
		d.c.log.Debug("cluster: dropped malformed state", "err", err, "bytes", len(buf))
		return
	}
	if len(msgs) == 0 {
		return
	}
	for i := range msgs {
		msgs[i] = slices.Clone(msgs[i])
	}
	d.hand(inbound{msgs: msgs, viaState: true})
}

func (d *delegate) hand(in inbound) {
	select {
	case d.c.inbound <- in:
	default:
		d.c.stats.dropped.Add(int64(len(in.msgs)))
		d.c.log.Warn("cluster: event queue full; dropped a message", "state", in.viaState)
	}
}

// NotifyAlive implements memberlist.AliveDelegate. It admits a node only
// if its name is a controller ID and it proved, over mutual TLS at the
// address in the message, that it holds a certificate for that ID. For a
// node not proved yet it asks the connector to verify it (a join at that
// address) and refuses for now: memberlist hears of the node again from
// that join's state exchange.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.c.cfg.NodeName {
		return nil
	}
	if !ValidNodeName(n.Name) {
		return fmt.Errorf("node name %q is not a controller ID", n.Name)
	}
	addr := n.Address()
	if d.c.peers.verifiedAt(n.Name, addr) {
		return nil
	}
	select {
	case d.c.intro <- memberlist.Address{Addr: addr, Name: n.Name}:
	default:
	}
	return fmt.Errorf("node %s at %s has not proved its identity here yet; verifying", n.Name, addr)
}

// NotifyJoin implements memberlist.EventDelegate.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	d.c.setMember(n, true)
	if n.Name == d.c.cfg.NodeName {
		return
	}
	d.c.failedMu.Lock()
	delete(d.c.failed, n.Name)
	d.c.failedMu.Unlock()
	d.member(MemberJoin, n)
}

// NotifyLeave implements memberlist.EventDelegate: a leave, when the node
// marked itself leaving first, or else a failure. (memberlist does not set
// Node.State in these callbacks.)
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	d.c.setMember(n, false)
	if n.Name == d.c.cfg.NodeName {
		return
	}
	change := MemberLeave
	if string(n.Meta) != metaLeaving {
		change = MemberFail
		d.c.failedMu.Lock()
		if _, ok := d.c.failed[n.Name]; ok || len(d.c.failed) < maxRejoinable {
			d.c.failed[n.Name] = rejoinable{addr: n.Address(), since: time.Now()}
		}
		d.c.failedMu.Unlock()
	}
	d.member(change, n)
}

// NotifyUpdate implements memberlist.EventDelegate. The leaving mark is
// not news: the leave follows.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	d.c.setMember(n, true)
	if n.Name == d.c.cfg.NodeName || string(n.Meta) == metaLeaving {
		return
	}
	d.member(MemberUpdate, n)
}

// setMember records a member's news in the table. memberlist calls the
// event delegate with its node lock held, so n is stable here.
func (c *Cluster) setMember(n *memberlist.Node, alive bool) {
	m := toMember(n)
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	if alive {
		c.table[m.Name] = m
	} else {
		delete(c.table, m.Name)
	}
}

func (d *delegate) member(change MemberChange, n *memberlist.Node) {
	m := toMember(n)
	d.c.log.Info("cluster member "+change.String(), "member", m.Name, "addr", m.Addr.String())
	select {
	case d.c.members <- MemberEvent{Change: change, Member: m}:
	default:
		d.c.log.Warn("cluster: member queue full; dropped a member event", "member", m.Name, "change", change.String())
	}
}

// logWriter turns memberlist's log lines ("[LEVEL] memberlist: text") into
// debug records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := ""
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			level, line = strings.ToLower(line[1:i]), strings.TrimSpace(line[i+1:])
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	w.log.Debug(line, "source", "memberlist", "ml_level", level)
	return len(p), nil
}
