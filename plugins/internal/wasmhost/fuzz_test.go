package wasmhost

import (
	"context"
	"testing"

	"github.com/mendmq/mendmq/plugins/internal/abi"
	"github.com/mendmq/mendmq/sdk"
)

// FuzzCHeaderRequest feeds arbitrary request bytes to the C header's decoder
// (inside the C latestupdate module) and holds it to the Go SDK's verdict:
// a request the SDK rejects must be refused (merge_batch returns 0), one it
// accepts must get one decodable result per item. The guest must never trap.
func FuzzCHeaderRequest(f *testing.F) {
	items := []sdk.Item{
		{Merging: sdk.EntryView{Key: []byte("k"), Value: []byte("v"), LastUpdateTime: 2}},
		{Merging: sdk.EntryView{Key: []byte("key2"), LastUpdateTime: 1}, Existing: sdk.EntryView{Key: []byte("key2"), LastUpdateTime: 5}, HasExisting: true},
	}
	f.Add(sdk.AppendRequest(nil, "orders", items))
	f.Add(sdk.AppendRequest(nil, "", items[:1]))
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	m := compile(f, repoFile(f, "examples/policies/c/latestupdate/latestupdate.wasm"), opts())
	in := instantiate(f, m)
	f.Fuzz(func(t *testing.T, req []byte) {
		_, sitems, serr := sdk.DecodeRequest(req, nil)
		ctx := context.Background()
		buf, err := in.request(ctx, uint32(len(req)))
		if err != nil {
			t.Fatal(err)
		}
		copy(buf, req)
		in.stack[0], in.stack[1] = uint64(in.inPtr), uint64(len(req))
		if err := in.batch.CallWithStack(ctx, in.stack[:]); err != nil {
			t.Fatalf("guest trapped: %v", err)
		}
		ptr, n := uint32(in.stack[0]>>32), uint32(in.stack[0])
		if serr != nil {
			if n != 0 {
				t.Fatalf("C accepted a request the SDK rejects (%v)", serr)
			}
			return
		}
		if n == 0 {
			t.Fatal("C refused a request the SDK accepts")
		}
		view, ok := in.mem.Read(ptr, n)
		if !ok {
			t.Fatal("result outside memory")
		}
		hitems := make([]abi.Item, len(sitems))
		for i := range sitems {
			hitems[i].Merging = &abi.EntryView{Key: sitems[i].Merging.Key}
		}
		res, err := abi.DecodeResults(view, hitems, nil)
		if err != nil {
			t.Fatalf("C answered garbage: %v", err)
		}
		for i, r := range res {
			want := abi.TakeMerging
			if sitems[i].HasExisting && sitems[i].Merging.LastUpdateTime < sitems[i].Existing.LastUpdateTime {
				want = abi.KeepExisting
			}
			if r.Verdict != want {
				t.Fatalf("item %d: %s, want %s", i, r.Verdict, want)
			}
		}
	})
}
