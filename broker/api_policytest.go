package broker

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/mendmq/mendmq/broker/admin"
	"github.com/mendmq/mendmq/plugins"
	"github.com/mendmq/mendmq/plugins/policycli"
)

// policyTestRequest is the body of POST /api/v1/policies/test.
type policyTestRequest struct {
	// Map is the map name the policy sees ("$retained" for retained
	// messages); its policy decides unless Policy names another loaded
	// one.
	Map      string           `json:"map"`
	Policy   string           `json:"policy"`
	Merging  *policycli.Entry `json:"merging"`
	Existing *policycli.Entry `json:"existing"`
}

// policyTestAnswer is what the running policy decided.
type policyTestAnswer struct {
	Policy  string           `json:"policy"`
	SHA256  string           `json:"sha256"`
	Map     string           `json:"map"`
	Verdict string           `json:"verdict"`
	Reason  string           `json:"reason,omitempty"`
	Entry   *policycli.Entry `json:"entry,omitempty"`
}

// apiPolicyTest runs one merge through a running policy as a heal would,
// without its effects (plugins.Registry.Try): nothing parked, counted or
// written.
func (b *Broker) apiPolicyTest(w http.ResponseWriter, r *http.Request) {
	var req policyTestRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	switch {
	case req.Map == "":
		admin.WriteError(w, http.StatusBadRequest, errors.New(`"map" is required: the map name the policy sees ("$retained" for retained messages)`))
		return
	case req.Merging == nil:
		admin.WriteError(w, http.StatusBadRequest, errors.New(`"merging" is required: {"key": "k", "value": "v", "last_update_time": 1700000000000, …}`))
		return
	}
	merging, err := req.Merging.View("merging")
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, err)
		return
	}
	var existing *plugins.EntryView
	if req.Existing != nil {
		if existing, err = req.Existing.View("existing"); err != nil {
			admin.WriteError(w, http.StatusBadRequest, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := b.policies.Try(ctx, req.Policy, req.Map, merging, existing)
	switch {
	case errors.Is(err, plugins.ErrPolicyNotLoaded):
		admin.WriteError(w, http.StatusNotFound, err)
		return
	case err != nil:
		admin.WriteError(w, http.StatusServiceUnavailable, err)
		return
	}
	out := policyTestAnswer{Policy: res.Policy, SHA256: res.SHA256, Map: res.Map, Verdict: res.Verdict, Reason: res.Reason}
	if res.Entry != nil {
		out.Entry = policycli.ToEntry(res.Entry)
	}
	admin.WriteJSON(w, http.StatusOK, out)
}
