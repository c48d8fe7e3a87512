package sysdns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
)

// resolvedProxyStub is systemd-resolved's second stub (127.0.0.54), which
// forwards without its own routing; neither stub may be an upstream.
var resolvedProxyStub = netip.MustParseAddr("127.0.0.54")

// resolvedUpstreams returns the servers systemd-resolved forwards to, from
// the resolv.conf it writes for programs that bypass the stub. Missing
// file: none.
func (e env) resolvedUpstreams(server netip.Addr, log *slog.Logger) ([]netip.AddrPort, error) {
	b, err := os.ReadFile(e.resolvedConf)
	if errors.Is(err, fs.ErrNotExist) {
		log.Debug("system DNS: systemd-resolved lists no upstream servers", "path", e.resolvedConf)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sysdns: read %s: %w", e.resolvedConf, err)
	}
	var out []netip.AddrPort
	for _, ap := range parseNameservers(b, -1, server) {
		if a := ap.Addr().Unmap(); a != resolvedStub && a != resolvedProxyStub {
			out = append(out, ap)
		}
	}
	return out, nil
}

// applyResolved routes domains to s.Server on s.Interface, and nothing
// else: the link is never the default route. The default route goes off
// first, so that no query meant for another link reaches us in between.
func (e env) applyResolved(s Setting, domains []string) error {
	ctx := context.Background()
	if err := e.run(ctx, e.resolvectl, "default-route", s.Interface, "false"); err != nil {
		return err
	}
	if len(domains) > 0 {
		args := []string{"domain", s.Interface}
		for _, d := range domains {
			args = append(args, "~"+d) // routing only, not a search domain
		}
		if err := e.run(ctx, e.resolvectl, args...); err != nil {
			return err
		}
	}
	return e.run(ctx, e.resolvectl, "dns", s.Interface, s.Server.String())
}

// undoResolved reverts the link's DNS settings. A link that is gone (the
// TUN device of a process that died) took its settings with it.
func (e env) undoResolved(st *state, log *slog.Logger) error {
	if !e.linkExists(st.Interface) {
		log.Debug("system DNS: interface gone, nothing to revert", "interface", st.Interface)
		return nil
	}
	if e.resolvectl == "" {
		return fmt.Errorf("revert %s: resolvectl not found", st.Interface)
	}
	if err := e.run(context.Background(), e.resolvectl, "revert", st.Interface); err != nil {
		if !e.linkExists(st.Interface) { // gone meanwhile
			return nil
		}
		return err
	}
	log.Info("system DNS: systemd-resolved settings reverted", "interface", st.Interface)
	return nil
}
