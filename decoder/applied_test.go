package decoder

import (
	"fmt"
	"testing"
)

// TestAppliedDependencies: AppliedPrefix messages become the transaction's
// dependencies, the newest per node, in filtered, ordinary and streamed
// transactions alike; other messages, malformed contents and
// non-transactional messages are ignored.
func TestAppliedDependencies(t *testing.T) {
	nonTransactional := top.message(AppliedPrefix, AppliedContent(7, 0x10))
	nonTransactional[1] = 0
	tests := []struct {
		name string
		msgs [][]byte
		want string
	}{{
		name: "filtered transaction",
		msgs: [][]byte{relU, begin(1), origin("bdr_a"), top.insert(3, tx("1")),
			top.message(AppliedPrefix, AppliedContent(3, 0x2000)),
			top.message(AppliedPrefix, AppliedContent(3, 0x1000)),
			top.message(AppliedPrefix, AppliedContent(4, 0x16B3778)),
			top.message("other", "3:0/9000"), commit()},
		want: "txn 1 origin=bdr_a: [{3 0/2000} {4 0/16B3778}]",
	}, {
		name: "ordinary transaction keeps its changes",
		msgs: [][]byte{relU, nonTransactional, begin(2), top.insert(3, tx("1")),
			top.message(AppliedPrefix, "garbage"), top.message(AppliedPrefix, "x:0/10"),
			top.message(AppliedPrefix, AppliedContent(-1, 0x10)), commit()},
		want: "txn 2: INSERT public.u new=(1) [{-1 0/10}]",
	}, {
		name: "streamed transaction",
		msgs: [][]byte{relU, streamStart(100, true), in(101).message(AppliedPrefix, AppliedContent(5, 0x30)),
			in(100).insert(3, tx("1")), streamStop(),
			begin(3), commit(),
			streamStart(100, false), in(100).message(AppliedPrefix, AppliedContent(5, 0x40)), streamStop(),
			streamAbort(100, 101), streamCommit(100)},
		want: "txn 3: []|txn 100 streamed: INSERT public.u new=(1) [{5 0/40}]",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDecoder(t, Config{})
			var got string
			for i, txn := range feed(t, d, tc.msgs...) {
				if i > 0 {
					got += "|"
				}
				got += fmt.Sprint(summary(t, txn), " ", txn.Applied)
			}
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
