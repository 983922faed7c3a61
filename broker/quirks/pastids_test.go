package quirks

import "testing"

// TestPastIDs: the packet id counter is moved to the end of the arc the
// queue's ids cover (the far side of the widest gap between them), unless
// it is already just past it.
func TestPastIDs(t *testing.T) {
	for _, tc := range []struct {
		name string
		ids  []uint16
		last uint16
		want uint16
	}{
		{"no ids", nil, 7, 7},
		{"fresh client before the queue", []uint16{400, 401, 402}, 0, 402},
		{"low counter inside the range", []uint16{3, 9, 12}, 5, 12},
		{"counter just past the queue", []uint16{400, 401, 402}, 410, 410},
		{"queue across the wrap", []uint16{65530, 65535, 1, 2}, 0, 2},
		{"counter at the wrap's start", []uint16{65530, 65535, 1, 2}, 65531, 2},
		{"duplicates and one id", []uint16{9, 9}, 0, 9},
		{"counter far behind", []uint16{30000, 30001}, 100, 30001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pastIDs(tc.ids, tc.last); got != tc.want {
				t.Errorf("pastIDs(%v, %d) = %d, want %d", tc.ids, tc.last, got, tc.want)
			}
		})
	}
}
