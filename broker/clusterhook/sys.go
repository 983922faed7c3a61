package clusterhook

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/mochi-mqtt/server/v2/system"

	"github.com/mendmq/mendmq/cluster"
)

// statusSource is implemented by *cluster.Node.
type statusSource interface {
	Status() cluster.Status
}

// OnSysInfoTick publishes the cluster's state under $SYS/broker/cluster/
// with mochi's own $SYS topics (every mqtt.sys_interval), retained so a
// new subscriber sees it at once:
//
//	$SYS/broker/cluster/node                     this node's name
//	$SYS/broker/cluster/members                  JSON: [{name, state, reachable}]
//	$SYS/broker/cluster/members/alive            count of alive members
//	$SYS/broker/cluster/peers/<peer>/bytes/sent  data-plane bytes to <peer>
//	$SYS/broker/cluster/peers/<peer>/bytes/received
//	$SYS/broker/cluster/peers/<peer>/queue       frames waiting for <peer>
//	$SYS/broker/cluster/peers/<peer>/forwarded   publishes forwarded to <peer>
//	$SYS/broker/cluster/peers/<peer>/received    publishes received from <peer>
//	$SYS/broker/cluster/forwarded                publishes forwarded to peers
//	$SYS/broker/cluster/received                 publishes received from peers
//	$SYS/broker/cluster/replication/lag_ms       write-to-apply lag of the last replicated change
//	$SYS/broker/cluster/netsplit/active          "true" while a member is unreachable
//	$SYS/broker/cluster/netsplit/gated           "true" while the allow_*_during_netsplit gate refuses
//	$SYS/broker/cluster/netsplit/unreachable     JSON: [{name, since, last_contact, reason, uncertainty_ms}]
//	$SYS/broker/cluster/netsplit/count           netsplits since the node started
//	$SYS/broker/cluster/netsplit/last_heal       JSON: {at, duration_ms, convergence_ms} ("{}" if none)
func (w *WillHook) OnSysInfoTick(*system.Info) {
	w.sh.sysMu.RLock()
	defer w.sh.sysMu.RUnlock()
	select {
	case <-w.sh.done:
		return // stopping: the storage hooks are closing
	default:
	}
	src, ok := w.sh.cluster().(statusSource)
	if !ok {
		return
	}
	st := src.Status()
	type member struct {
		Name      string `json:"name"`
		State     string `json:"state"`
		Reachable bool   `json:"reachable"`
	}
	ms := make([]member, 0, len(st.Members))
	alive := 0
	pub := func(topic, v string) { _ = w.sh.srv.Publish("$SYS/broker/cluster/"+topic, []byte(v), true, 0) }
	for _, m := range st.Members {
		ms = append(ms, member{Name: m.Name, State: m.State, Reachable: m.Reachable || m.Self})
		if m.State == "alive" {
			alive++
		}
		if m.Self {
			continue
		}
		pub("peers/"+m.Name+"/bytes/sent", strconv.FormatUint(m.BytesSent, 10))
		pub("peers/"+m.Name+"/bytes/received", strconv.FormatUint(m.BytesReceived, 10))
		pub("peers/"+m.Name+"/queue", strconv.Itoa(m.QueueFrames))
		pub("peers/"+m.Name+"/forwarded", strconv.FormatUint(m.Forwarded, 10))
		pub("peers/"+m.Name+"/received", strconv.FormatUint(m.Received, 10))
	}
	b, _ := json.Marshal(ms)
	pub("node", st.Node)
	pub("members", string(b))
	pub("members/alive", strconv.Itoa(alive))
	pub("forwarded", strconv.FormatUint(st.Forwarded, 10))
	pub("received", strconv.FormatUint(st.Received, 10))
	pub("replication/lag_ms", strconv.FormatInt(st.ReplicationLagMS, 10))
	publishNetsplit(pub, st.Netsplit)
}

// publishNetsplit publishes the netsplit topics (see OnSysInfoTick).
func publishNetsplit(pub func(topic, v string), ns cluster.NetsplitStatus) {
	type unreachable struct {
		Name          string    `json:"name"`
		Since         time.Time `json:"since"`
		LastContact   time.Time `json:"last_contact,omitzero"`
		Reason        string    `json:"reason"`
		UncertaintyMS int64     `json:"uncertainty_ms"`
	}
	us := make([]unreachable, 0, len(ns.Unreachable))
	for _, u := range ns.Unreachable {
		us = append(us, unreachable{Name: u.Name, Since: u.Since, LastContact: u.LastContact, Reason: u.Reason,
			UncertaintyMS: u.Uncertainty().Milliseconds()})
	}
	b, _ := json.Marshal(us)
	heal := []byte("{}")
	if h := ns.LastHeal; h != nil {
		heal, _ = json.Marshal(struct {
			At            time.Time `json:"at"`
			DurationMS    int64     `json:"duration_ms"`
			ConvergenceMS int64     `json:"convergence_ms"`
		}{h.At, h.Duration.Milliseconds(), h.Convergence.Milliseconds()})
	}
	pub("netsplit/active", strconv.FormatBool(ns.Split))
	pub("netsplit/gated", strconv.FormatBool(ns.Gated))
	pub("netsplit/unreachable", string(b))
	pub("netsplit/count", strconv.FormatUint(ns.Splits, 10))
	pub("netsplit/last_heal", string(heal))
}
