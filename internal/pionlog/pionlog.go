// Package pionlog adapts the pion libraries' logger interface to log/slog,
// so pion's STUN/TURN code logs through the logger the caller passed in
// rather than pion's own stderr default.
//
// pion is chatty about conditions that are normal on the internet (stray
// packets, stale nonces) and logs per packet at Debug, so its Trace and
// Debug lines go below slog's Debug (LevelTrace: shown only to a handler
// that asks for them), Info and Warn to Debug, and Error to Info: our own
// code logs the failures it acts on.
package pionlog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// Factory returns a pion LoggerFactory writing to l (nil discards).
func Factory(l *slog.Logger) logging.LoggerFactory {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return factory{l}
}

type factory struct{ l *slog.Logger }

func (f factory) NewLogger(scope string) logging.LeveledLogger {
	return logger{f.l.With("pion", scope)}
}

// logger is a pion LeveledLogger over slog.
type logger struct{ l *slog.Logger }

// LevelTrace is the level of pion's Trace and Debug lines.
const LevelTrace = slog.LevelDebug - 4

var _ logging.LeveledLogger = logger{}

func (g logger) log(level slog.Level, msg string) { g.l.Log(context.Background(), level, msg) }

func (g logger) logf(level slog.Level, format string, args ...any) {
	if g.l.Enabled(context.Background(), level) {
		g.log(level, fmt.Sprintf(format, args...))
	}
}

func (g logger) Trace(msg string)                  { g.log(LevelTrace, msg) }
func (g logger) Tracef(format string, args ...any) { g.logf(LevelTrace, format, args...) }
func (g logger) Debug(msg string)                  { g.log(LevelTrace, msg) }
func (g logger) Debugf(format string, args ...any) { g.logf(LevelTrace, format, args...) }
func (g logger) Info(msg string)                   { g.log(slog.LevelDebug, msg) }
func (g logger) Infof(format string, args ...any)  { g.logf(slog.LevelDebug, format, args...) }
func (g logger) Warn(msg string)                   { g.log(slog.LevelDebug, msg) }
func (g logger) Warnf(format string, args ...any)  { g.logf(slog.LevelDebug, format, args...) }
func (g logger) Error(msg string)                  { g.log(slog.LevelInfo, msg) }
func (g logger) Errorf(format string, args ...any) { g.logf(slog.LevelInfo, format, args...) }
