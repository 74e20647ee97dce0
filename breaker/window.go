package breaker

import (
	"math"
	"time"
)

// window is a sliding window of time buckets. Bucket k covers [k·width, (k+1)·width) on
// the breaker's clock and lives in slot k mod len(slots); a slot whose index is out of
// date is stale and reads as empty. Adding is O(1); summing is O(buckets). It is not safe
// for concurrent use: the Breaker's mutex guards it. The slots are allocated at the first
// count: an upstream that has had no request (most of 10,000) holds none.
type window struct {
	width int64 // bucket width in ns
	n     int   // number of buckets
	slots []slot
}

type slot struct {
	index int64
	c     Counts
}

func newWindow(span time.Duration, buckets int) window {
	if buckets <= 0 {
		buckets = 10
	}
	if span <= 0 {
		span = 10 * time.Second
	}
	w := window{width: int64(span) / int64(buckets), n: buckets}
	if w.width <= 0 {
		w.width = 1
	}
	return w
}

// alloc gives the window its slots, all empty, unless it has them.
func (w *window) alloc() {
	if w.slots == nil {
		w.slots = make([]slot, w.n)
		w.reset()
	}
}

// empty marks a slot that holds no bucket.
const empty = math.MinInt64

func (w *window) reset() {
	for i := range w.slots {
		w.slots[i] = slot{index: empty}
	}
}

// bucket returns the index of the bucket holding clock reading now and its slot. It
// floors, so negative readings (a clock only promises differences) work too.
// The window must have its slots (alloc) unless only the index is used.
func (w *window) bucket(now time.Duration) (int64, *slot) {
	k := int64(now) / w.width
	if int64(now)%w.width < 0 {
		k--
	}
	if w.slots == nil {
		return k, nil
	}
	n := int64(w.n)
	return k, &w.slots[(k%n+n)%n]
}

func (w *window) add(now time.Duration, failure, slow bool) {
	w.alloc()
	k, s := w.bucket(now)
	if s.index != k {
		*s = slot{index: k}
	}
	s.c.Requests++
	if failure {
		s.c.Failures++
	}
	if slow {
		s.c.Slow++
	}
}

// fail turns one success counted at clock reading at into a failure, if at's bucket is
// still in the window at now; it reports whether it did. A bucket that has left the
// window, or holds no success (its counts moved when the window was resized), is left
// alone.
func (w *window) fail(now, at time.Duration) bool {
	if w.slots == nil {
		return false
	}
	k, _ := w.bucket(now)
	ka, s := w.bucket(at)
	if ka <= k-int64(w.n) || s.index != ka || s.c.Failures >= s.c.Requests {
		return false
	}
	s.c.Failures++
	return true
}

// addCounts puts c into the current bucket (used when the window is resized).
func (w *window) addCounts(now time.Duration, c Counts) {
	if c == (Counts{}) {
		return
	}
	w.alloc()
	k, s := w.bucket(now)
	if s.index != k {
		*s = slot{index: k}
	}
	s.c.Requests += c.Requests
	s.c.Failures += c.Failures
	s.c.Slow += c.Slow
}

func (w *window) sum(now time.Duration) Counts {
	if w.slots == nil {
		return Counts{}
	}
	k, _ := w.bucket(now)
	oldest := k - int64(w.n) + 1
	var c Counts
	for i := range w.slots {
		s := &w.slots[i]
		if s.index >= oldest && s.index <= k {
			c.Requests += s.c.Requests
			c.Failures += s.c.Failures
			c.Slow += s.c.Slow
		}
	}
	return c
}

func (w *window) sameShape(span time.Duration, buckets int) bool {
	return w.n == buckets && w.width == int64(span)/int64(buckets)
}
