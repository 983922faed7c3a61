package sdk

// EntryView is one map entry as a policy sees it: the key, the value and the
// metadata mendmq keeps per entry. All times are Unix milliseconds.
//
// Key and Value alias the request buffer the host wrote into guest memory:
// they are valid only until the policy function returns. Copy them to keep
// them, and never write into them.
type EntryView struct {
	// Key identifies the entry inside its map. For the map "$retained" it is
	// the MQTT topic.
	Key []byte
	// Value is the stored bytes. For "$retained" it is the encoded retained
	// message.
	Value []byte
	// Cost is the entry's size in bytes as accounted by the owning node.
	Cost int64
	// Hits counts reads of the entry.
	Hits int64
	// Version starts at 0 and grows by one on every update.
	Version int64
	// CreationTime is when the entry was first written.
	CreationTime int64
	// LastAccessTime is the last read or write.
	LastAccessTime int64
	// LastUpdateTime is the last write.
	LastUpdateTime int64
	// LastStoredTime is the last time the entry reached a MapStore (0 if never).
	LastStoredTime int64
	// ExpirationTime is when the entry expires; 0 means it never expires.
	ExpirationTime int64
}

// Verdict is what a policy decided for one merge. The numeric values are the
// wire values of ABI version 1 (see sdk/ABI.md).
type Verdict uint32

// Verdicts. With an absent existing entry, VerdictKeepExisting and
// VerdictDelete both leave the key absent.
const (
	// VerdictKeepExisting leaves the existing entry as it is.
	VerdictKeepExisting Verdict = 0
	// VerdictTakeMerging stores the merging entry unchanged.
	VerdictTakeMerging Verdict = 1
	// VerdictPut stores Result.Entry, an entry the policy built (same key).
	VerdictPut Verdict = 2
	// VerdictDelete removes the key.
	VerdictDelete Verdict = 3
	// VerdictFail refuses to decide: the host keeps the existing entry and
	// parks the merging one for an operator, with Result.Reason.
	VerdictFail Verdict = 4
)

// String names the verdict as the ABI document and `mendmq policy test` do.
func (v Verdict) String() string {
	switch v {
	case VerdictKeepExisting:
		return "keep_existing"
	case VerdictTakeMerging:
		return "take_merging"
	case VerdictPut:
		return "put"
	case VerdictDelete:
		return "delete"
	case VerdictFail:
		return "fail"
	}
	return "invalid"
}

// Result is a policy's answer. Build it with KeepExisting, TakeMerging, Put,
// Delete or Fail rather than by hand.
type Result struct {
	// Verdict is the decision.
	Verdict Verdict
	// Entry is the entry to store when Verdict is VerdictPut. Its Key must
	// equal the merging entry's key.
	Entry *EntryView
	// Reason explains a VerdictFail to the operator (at most MaxReasonLen
	// bytes are sent; longer reasons are cut).
	Reason string
}

// MaxReasonLen bounds the bytes of a Fail reason sent to the host.
const MaxReasonLen = 1024

// KeepExisting keeps the existing entry (absent stays absent).
func KeepExisting() Result { return Result{Verdict: VerdictKeepExisting} }

// TakeMerging stores the merging entry as it is. It is cheaper than
// Put(merging): nothing is copied back to the host.
func TakeMerging() Result { return Result{Verdict: VerdictTakeMerging} }

// Put stores e, an entry the policy built, typically a copy of the merging or
// existing entry with a new Value. e.Key must equal the merging key.
func Put(e *EntryView) Result { return Result{Verdict: VerdictPut, Entry: e} }

// Delete removes the key from the map.
func Delete() Result { return Result{Verdict: VerdictDelete} }

// Fail refuses to decide. The host keeps the existing entry, parks the
// merging entry where an operator can resolve it, and counts it. Use it for
// input the policy cannot interpret, e.g. a value that is not valid JSON.
func Fail(reason string) Result { return Result{Verdict: VerdictFail, Reason: reason} }

// Policy is the function a policy author writes. mapName is the map being
// merged ("$retained" for retained MQTT messages). existing is nil when the
// key is absent on the surviving side. The function must be deterministic:
// every node runs it on the same inputs and must reach the same answer.
type Policy func(mapName string, merging, existing *EntryView) Result
