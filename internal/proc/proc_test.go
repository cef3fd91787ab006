package proc

import (
	"os"
	"testing"
)

func TestPeakRSS(t *testing.T) {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	rss, err := PeakRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss < 64<<20 {
		t.Fatalf("peak RSS %d bytes after touching 64 MB", rss)
	}
	_ = buf[len(buf)-1]
	if _, err := PeakRSS(-1); err == nil {
		t.Fatal("no error for a missing process")
	}
}
