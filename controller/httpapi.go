package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/keyhole-net/keyhole/controller/store"
	"github.com/keyhole-net/keyhole/internal/api"
)

// maxBodyBytes caps every request body; nothing in the protocol comes near
// it, and an unbounded body is a memory exhaustion attack.
const maxBodyBytes = 64 << 10

// apiError is an error with an HTTP status and a wire body. Handlers return
// it; writeError turns any error into a response in one place.
type apiError struct {
	status int
	body   api.Error
	// retryAfter, when set, is sent as Retry-After (429, 503).
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.body.Code + ": " + e.body.Message }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, body: api.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

func badRequest(format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func notFound(format string, args ...any) *apiError {
	return errf(http.StatusNotFound, api.CodeNotFound, format, args...)
}

func conflict(format string, args ...any) *apiError {
	return errf(http.StatusConflict, api.CodeConflict, format, args...)
}

func unauthorized(format string, args ...any) *apiError {
	return errf(http.StatusUnauthorized, api.CodeUnauthorized, format, args...)
}

// storeErr maps store sentinel errors to API errors, naming the object.
func storeErr(what string, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound("%s not found", what)
	case errors.Is(err, store.ErrConflict):
		return conflict("%s already exists", what)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// writeError answers with the JSON error for err. Errors that are not
// apiErrors are internal: logged with detail, answered without it.
func (c *Controller) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The client went away, or the controller is shutting down:
		// nobody reads an answer, and nothing went wrong here.
		c.log.Debug("request ended before its answer", "method", r.Method, "path", r.URL.Path, "err", err)
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			ae = errf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body over %d bytes", maxBodyBytes)
		} else {
			c.log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
			ae = errf(http.StatusInternalServerError, api.CodeInternal, "internal error; the controller log has details")
		}
	}
	if ae.status >= 400 && ae.status < 500 {
		c.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", ae.status, "code", ae.body.Code, "msg", ae.body.Message)
	}
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ae.retryAfter.Seconds()))))
	}
	writeJSON(w, ae.status, ae.body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads exactly one JSON object into v: JSON content type, body
// capped, unknown fields and trailing data refused.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errf(http.StatusUnsupportedMediaType, api.CodeUnsupported, "send JSON with Content-Type: application/json")
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body over %d bytes", maxBodyBytes)
		}
		return badRequest("read body: %v", err)
	}
	return decodeBody(body, v)
}

// decodeBody is decode without the HTTP parts, for fuzzing.
func decodeBody(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("malformed JSON body: %v", err)
	}
	if dec.More() {
		return badRequest("malformed JSON body: data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("malformed JSON body: data after the object")
	}
	return nil
}

var (
	namePattern     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)
	userNamePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._@+-]{0,127}$`)
)

func checkName(kind, name string) error {
	if !namePattern.MatchString(name) {
		return badRequest("%s name %q: use 1–63 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func checkUserName(name string) error {
	if !userNamePattern.MatchString(name) {
		return badRequest("user name %q: use 1–128 letters, digits or . _ @ + -, starting with a letter or digit", name)
	}
	return nil
}

// bearer returns the token of an "Authorization: Bearer …" header.
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// handler adapts an error-returning handler to http.Handler.
type handler func(w http.ResponseWriter, r *http.Request) error

func (c *Controller) wrap(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			c.writeError(w, r, err)
		}
	}
}

// logRequests logs each request at debug level without headers or bodies
// (they hold tokens and passwords).
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		next.ServeHTTP(w, r)
	})
}
