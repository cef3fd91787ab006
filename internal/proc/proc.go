// Package proc reads facts about processes from /proc (Linux). Functions
// are safe for concurrent use.
package proc

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
)

var vmHWM = regexp.MustCompile(`VmHWM:\s+(\d+) kB`)

// PeakRSS is the peak resident set size of process pid (VmHWM), in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	m := vmHWM.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no VmHWM for process %d", pid)
	}
	kb, err := strconv.ParseInt(string(m[1]), 10, 64)
	if err != nil {
		return 0, err
	}
	return kb << 10, nil
}
