package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// DecodeJSON reads r's body into v: one JSON value, no unknown fields,
// nothing after it, at most MaxBody bytes. On failure it writes the 4xx
// answer (400, or 413 for a body over the bound) and returns false; the
// handler must then return without acting.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); !errors.Is(err2, io.EOF) {
			err = errors.New("data after the JSON value")
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", tooBig.Limit))
	case errors.Is(err, io.EOF):
		WriteError(w, http.StatusBadRequest, errors.New("empty body: this endpoint takes a JSON object"))
	default:
		WriteError(w, http.StatusBadRequest, fmt.Errorf("malformed JSON body: %v", err))
	}
	return false
}

// NoBody accepts a request to an endpoint that takes no parameters: an
// empty body or "{}". Anything else is refused (400, or 413 over the
// bound) so a client that meant to send options learns they are not
// applied.
func NoBody(w http.ResponseWriter, r *http.Request) bool {
	b, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		WriteError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", tooBig.Limit))
		return false
	case err != nil:
		WriteError(w, http.StatusBadRequest, fmt.Errorf("read body: %v", err))
		return false
	}
	if s := strings.TrimSpace(string(b)); s != "" && s != "{}" {
		WriteError(w, http.StatusBadRequest, errors.New("this endpoint takes no body (or {})"))
		return false
	}
	return true
}

// Query reads the query parameters named in allowed; an unknown
// parameter or a repeated one is a 400 (written, false returned), so a
// typo in a filter never silently lists everything.
func Query(w http.ResponseWriter, r *http.Request, allowed ...string) (map[string]string, bool) {
	q := r.URL.Query()
	out := map[string]string{}
	for k, vs := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			WriteError(w, http.StatusBadRequest, fmt.Errorf("unknown query parameter %q (this endpoint takes: %s)", k, strings.Join(allowed, ", ")))
			return nil, false
		}
		if len(vs) != 1 {
			WriteError(w, http.StatusBadRequest, fmt.Errorf("query parameter %q given %d times", k, len(vs)))
			return nil, false
		}
		out[k] = vs[0]
	}
	return out, true
}

// Limit parses a "limit" parameter: def when absent, 1..max otherwise.
func Limit(w http.ResponseWriter, v string, def, max int) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		WriteError(w, http.StatusBadRequest, fmt.Errorf("limit=%q: want a number from 1 to %d", v, max))
		return 0, false
	}
	return n, true
}
