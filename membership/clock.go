package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Clock exchange. Last update wins compares commit times taken on different
// hosts, so it is only as good as their clocks: every gossip probe's answer
// carries the answering bdrd's wall clock, and the prober estimates how far
// the member's clock is from its own.
//
// A probe sent at local time t1 and answered at t4 (rtt = t4 - t1) carries
// the member's time T, read when it answered. If the way there and the way
// back took as long, T was read at local time t4 - rtt/2, so the member's
// clock is ahead of ours by
//
//	offset = T - (t4 - rtt/2)
//
// and, however asymmetric the two ways are, the error is at most rtt/2. As in
// NTP's clock filter, of the recent samples the one with the smallest round
// trip is the estimate: it has the tightest error bound, and a sample that a
// queue or a descheduled process delayed one way is not used.
//
// Two samples of one clock agree within their error bounds; when a new one
// does not agree with an older one, a clock was stepped (NTP corrected one,
// an operator set one) and the older samples that disagree are dropped, so
// the estimate follows the step at the next probe.

// clockVersion is the version of the clock payload; decoders refuse others.
const clockVersion = 1

// clockPayloadLen is the payload: the version byte, then the answering
// member's wall clock in unix nanoseconds, big endian.
const clockPayloadLen = 1 + 8

// Estimator window: at most skewSamples recent samples, none older than
// skewWindow (memberlist probes one member a second, so with few members a
// member is probed every few seconds).
const (
	skewSamples = 8
	skewWindow  = time.Minute
	// skewClearRatio: a member over the bound is back under it below this
	// fraction of the bound, so an estimate that hovers at the bound does
	// not log a line at every probe.
	skewClearRatio = 0.9
	// skewStepMargin is added to the error bounds of two samples before
	// they are taken to disagree: the local time of an answer is read a
	// moment after memberlist received it.
	skewStepMargin = 25 * time.Millisecond
)

// DefaultMaxClockSkew is the default bound on the clock skew between members.
const DefaultMaxClockSkew = time.Second

// encodeClock is the payload of an answer to a probe at local time now.
func encodeClock(now time.Time) []byte {
	b := make([]byte, clockPayloadLen)
	b[0] = clockVersion
	binary.BigEndian.PutUint64(b[1:], uint64(now.UnixNano()))
	return b
}

// decodeClock reads a member's clock payload; anything malformed is an
// error, never a panic.
func decodeClock(b []byte) (time.Time, error) {
	switch {
	case len(b) == 0:
		return time.Time{}, errors.New("no clock payload")
	case b[0] != clockVersion:
		return time.Time{}, fmt.Errorf("clock payload version %d is not %d", b[0], clockVersion)
	case len(b) != clockPayloadLen:
		return time.Time{}, fmt.Errorf("clock payload of %d bytes, want %d", len(b), clockPayloadLen)
	}
	ns := int64(binary.BigEndian.Uint64(b[1:]))
	if ns <= 0 {
		return time.Time{}, fmt.Errorf("clock payload time %d is not after 1970", ns)
	}
	return time.Unix(0, ns), nil
}

// clockSample is one probe's estimate of a member's clock offset.
type clockSample struct {
	At     time.Time     // local time the answer arrived
	Offset time.Duration // the member's clock minus ours
	RTT    time.Duration // the probe's round trip: the error is at most RTT/2
}

// sampleClock makes a sample from a probe answered with the member's time
// remote, rtt after it was sent, arriving at local time now.
func sampleClock(remote, now time.Time, rtt time.Duration) clockSample {
	return clockSample{At: now, Offset: remote.Sub(now.Add(-rtt / 2)), RTT: rtt}
}

// skewEstimator keeps the recent samples of one member's clock and whether
// its skew is over the bound. Not safe for concurrent use (gossip's mutex).
type skewEstimator struct {
	samples []clockSample // oldest first
	over    bool
}

// add records a sample, dropping the older samples that disagree with it
// (a clock step) and the oldest beyond skewSamples.
func (e *skewEstimator) add(s clockSample) {
	kept := e.samples[:0]
	for _, old := range e.samples {
		if (old.Offset - s.Offset).Abs() <= (old.RTT+s.RTT)/2+skewStepMargin {
			kept = append(kept, old)
		}
	}
	e.samples = kept
	if len(e.samples) == skewSamples {
		e.samples = append(e.samples[:0], e.samples[1:]...)
	}
	e.samples = append(e.samples, s)
}

// estimate is the sample with the smallest round trip among those not
// older than skewWindow at now; ok is false without one.
func (e *skewEstimator) estimate(now time.Time) (best clockSample, ok bool) {
	for _, s := range e.samples {
		if now.Sub(s.At) > skewWindow {
			continue
		}
		if !ok || s.RTT < best.RTT {
			best, ok = s, true
		}
	}
	return best, ok
}

// check updates the over-the-bound state with the estimate; changed reports
// a crossing (over or back under) to log.
func (e *skewEstimator) check(est clockSample, bound time.Duration) (changed bool) {
	skew := est.Offset.Abs()
	switch {
	case !e.over && skew > bound:
		e.over = true
		return true
	case e.over && float64(skew) < skewClearRatio*float64(bound):
		e.over = false
		return true
	}
	return false
}

// clockSkew is what gossip knows of a member's clock.
type clockSkew struct {
	Offset time.Duration // the member's clock minus this node's
	RTT    time.Duration // of the sample: the error is at most RTT/2
	Over   bool          // over the bound (until back under 90% of it)
}
