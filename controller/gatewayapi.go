package controller

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keyhole-net/keyhole/controller/auth"
	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
	"github.com/keyhole-net/keyhole/internal/trust"
)

// maxFlowBatch caps flow records per POST.
const maxFlowBatch = 256

func (c *Controller) handleEnrol(w http.ResponseWriter, r *http.Request) error {
	var req api.EnrolRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Name == "" {
		req.Name = "gateway"
	}
	if err := checkName("gateway", req.Name); err != nil {
		return err
	}
	if req.WGPublicKey.IsZero() {
		return badRequest("wg_public_key is required")
	}
	if _, err := trust.ParseCSR(req.CSR); err != nil {
		return badRequest("%v", err)
	}
	now := c.now()
	ev := api.AuditEvent{Type: "gateway.enrol.fail", Time: now, Actor: "gateway", Source: remoteAddr(r)}
	tok, err := c.store.ConsumeEnrolToken(r.Context(), auth.HashToken(req.Token), now)
	switch {
	case errors.Is(err, store.ErrNotFound):
		ev.Reason = "unknown token"
		c.audit(r.Context(), ev)
		return unauthorized("enrolment token not valid; create one with keyhole admin gateway token --group G")
	case errors.Is(err, store.ErrTokenUsed):
		ev.Reason = "token re-used"
		c.audit(r.Context(), ev)
		c.log.Warn("re-used gateway enrolment token refused", "source", remoteAddr(r))
		return conflict("enrolment token was already used; tokens are one-time, create a new one")
	case errors.Is(err, store.ErrExpired):
		ev.Reason = "token expired"
		c.audit(r.Context(), ev)
		return errf(http.StatusUnauthorized, api.CodeExpired, "enrolment token expired; create a new one")
	case err != nil:
		return err
	}
	gw, err := c.store.CreateGateway(r.Context(), store.Gateway{
		ID: api.GatewayID(auth.NewID("gw")), Name: req.Name, Group: tok.Group,
		WGPublicKey: req.WGPublicKey, CreatedAt: now,
	})
	if err != nil {
		return storeErr("gateway", err)
	}
	cert, err := c.ca.Sign(req.CSR, trust.KindGateway, string(gw.ID), c.cfg.CertLifetime, now)
	if err != nil {
		return badRequest("%v", err)
	}
	c.audit(r.Context(), api.AuditEvent{Type: "gateway.enrol", Actor: "gateway:" + string(gw.ID), GatewayID: gw.ID, Source: remoteAddr(r), Reason: "group " + tok.Group})
	c.log.Info("gateway enrolled", "gateway_id", gw.ID, "name", gw.Name, "group", gw.Group)
	writeJSON(w, http.StatusOK, api.EnrolResponse{
		GatewayID: gw.ID, Group: gw.Group, Certificate: trust.CertPEM(cert.Raw), OverlayIP: gw.OverlayIP,
	})
	return nil
}

func (c *Controller) handleGatewayCert(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	return c.renewCert(w, r, trust.KindGateway, string(g.gateway.ID))
}

// renewCert signs a new certificate for the caller's current key only: a
// renewal cannot move an identity to another key.
func (c *Controller) renewCert(w http.ResponseWriter, r *http.Request, kind, id string) error {
	var req api.CertificateRenewal
	if err := decode(w, r, &req); err != nil {
		return err
	}
	csr, err := trust.ParseCSR(req.CSR)
	if err != nil {
		return badRequest("%v", err)
	}
	cur := r.TLS.PeerCertificates[0]
	if !publicKeysEqual(cur.PublicKey, csr.PublicKey) {
		return badRequest("csr must be for the key of the current certificate")
	}
	cert, err := c.ca.Sign(req.CSR, kind, id, c.cfg.CertLifetime, c.now())
	if err != nil {
		return badRequest("%v", err)
	}
	writeJSON(w, http.StatusOK, api.CertificateResponse{Certificate: trust.CertPEM(cert.Raw)})
	return nil
}

func (c *Controller) handleGatewayHello(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	var req api.GatewayHello
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.WGPublicKey.IsZero() {
		return badRequest("wg_public_key is required")
	}
	if len(req.Endpoints) > 16 {
		return badRequest("at most 16 endpoints")
	}
	for _, ep := range req.Endpoints {
		if !ep.IsValid() || ep.Port() == 0 {
			return badRequest("endpoint %v is not a valid address:port", ep)
		}
	}
	if err := validCandidates(req.Candidates); err != nil {
		return err
	}
	resp := api.GatewayHelloResponse{STUN: c.relayAddr}
	var err error
	if resp.Relay, err = c.gatewayRelay(g.gateway.ID); err != nil {
		return err
	}
	now := c.now()
	if err := c.store.UpdateGatewayStatus(r.Context(), g.gateway.ID, req.WGPublicKey, req.Endpoints, now); err != nil {
		return err
	}
	g.gateway.WGPublicKey, g.gateway.Endpoints, g.gateway.LastSeen = req.WGPublicKey, req.Endpoints, now
	c.hub.updateInfo(g.gateway)
	c.hub.setCandidates(g.gateway.ID, req.Candidates)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// maxPeerReports bounds one peer report (and keeps it under the body cap).
const maxPeerReports = 200

// handleGatewayPeers takes a gateway's per-peer path report
// (POST /v1/gateway/peers), kept in memory for admins.
func (c *Controller) handleGatewayPeers(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	var req api.PeerReports
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if len(req.Peers) > maxPeerReports {
		return badRequest("at most %d peers per report", maxPeerReports)
	}
	for _, p := range req.Peers {
		if p.PublicKey.IsZero() {
			return badRequest("peer without public_key")
		}
		if p.Path != "" && p.Path != api.PathDirect && p.Path != api.PathRelayed {
			return badRequest("peer path %q: want direct or relayed", p.Path)
		}
	}
	if !c.hub.setPeers(g.gateway.ID, req.Peers) {
		return errf(http.StatusConflict, api.CodeConflict, "open the control stream before reporting peers")
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleGatewayStream holds GET /v1/gateway/stream: a sync event with every
// live grant of the gateway, then pushes as they come, as NDJSON.
func (c *Controller) handleGatewayStream(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	s := c.hub.open(g.gateway)
	// Deferred first, so it runs once the stream is removed.
	defer c.watchGateway(g.gateway.ID)
	c.streamOpened(g.gateway)
	defer func() {
		c.hub.remove(s)
		c.streamClosed(g.gateway)
	}()
	live, err := c.store.LiveGrants(r.Context(), c.now(), g.gateway.ID, "")
	if err != nil {
		return err
	}
	sync := c.syncEvent(live)
	sync.Seq = 1
	s.opened(sync)
	c.hub.load.note(g.gateway.ID, sync)
	w.Header().Set(api.HeaderStreamID, s.id)
	out := startNDJSON(w)
	c.log.Info("gateway stream open", "gateway_id", g.gateway.ID, "stream", s.id, "live_grants", len(live))
	if err := writeEvents(out, sync); err != nil {
		return nil
	}
	ping := time.NewTicker(c.pingInterval)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			c.log.Info("gateway stream closed", "gateway_id", g.gateway.ID, "stream", s.id)
			return nil
		case <-s.out.done:
			return nil
		case <-ping.C:
			if err := writeEvents(out, api.StreamEvent{Type: api.EventPing, Time: c.now()}); err != nil {
				return nil
			}
		case <-s.out.wake:
			if err := writeEvents(out, s.out.drain()...); err != nil {
				c.log.Info("gateway stream write failed", "gateway_id", g.gateway.ID, "err", err)
				return nil
			}
		}
	}
}

func (c *Controller) handleGatewayAck(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	var req api.GatewayAck
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if !c.hub.ack(g.gateway.ID, req.Stream, req.Seq) {
		return errf(http.StatusConflict, api.CodeConflict, "stream %q is not this gateway's current stream or seq %d was never sent; reconnect", req.Stream, req.Seq)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Controller) handleGatewayFlows(w http.ResponseWriter, r *http.Request, g gatewayCaller) error {
	var req api.FlowBatch
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if len(req.Records) > maxFlowBatch {
		return badRequest("at most %d flow records per request", maxFlowBatch)
	}
	for i := range req.Records {
		rec := &req.Records[i]
		rec.GatewayID = g.gateway.ID
		if rec.Proto != "tcp" && rec.Proto != "udp" {
			return badRequest("record %d: proto must be tcp or udp", i)
		}
		if rec.End.Before(rec.Start) {
			return badRequest("record %d: end before start", i)
		}
	}
	if err := c.store.AppendFlows(r.Context(), req.Records...); err != nil {
		return fmt.Errorf("store flows: %w", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
