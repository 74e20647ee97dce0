package breaker_test

import (
	"cmp"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// trialTracker counts, per generation, the trial tickets workers hold at once. Workers
// count a ticket only after Allow returned it and stop counting it just before Done, so
// the tracker can only under-count: any count above the limit is a real violation.
type trialTracker struct {
	mu   sync.Mutex
	held map[uint64]int
	max  int // the most held at once in one generation
}

func (tt *trialTracker) acquire(gen uint64) {
	tt.mu.Lock()
	tt.held[gen]++
	tt.max = max(tt.max, tt.held[gen])
	tt.mu.Unlock()
}

func (tt *trialTracker) release(gen uint64) {
	tt.mu.Lock()
	tt.held[gen]--
	tt.mu.Unlock()
}

func checkSnapshot(t *testing.T, sn breaker.Snapshot, maxTrials int) {
	t.Helper()
	if sn.TrialsInFlight < 0 || sn.TrialsInFlight > maxTrials || sn.Permits < 0 ||
		sn.Consecutive < 0 || sn.Trips < 0 || sn.OpenRemaining < 0 ||
		sn.Counts.Failures > sn.Counts.Requests || sn.Counts.Slow > sn.Counts.Requests ||
		sn.State > breaker.HalfOpen || sn.Mode > breaker.MetricsOnly {
		t.Errorf("inconsistent snapshot: %+v", sn)
	}
}

// Many goroutines Allow and Done with random outcomes while others flip modes, trip,
// close, reset, apply shared state, grant permits, reload settings, move the clock and
// take snapshots. Run it with -race.
func TestConcurrentUse(t *testing.T) {
	clock := &fakeClock{}
	obs := &recorder{}
	s := breaker.Settings{
		ConsecutiveFailures: 4, FailureRate: 50, MinimumRequests: 8,
		SlowCallRate: 80, SlowCallDuration: 5 * time.Millisecond,
		Window: 100 * time.Millisecond, Buckets: 10,
		OpenDuration: 3 * time.Millisecond, BackoffMultiplier: 2, MaxOpenDuration: 20 * time.Millisecond,
		Jitter: 0.2, HalfOpenMaxRequests: 3, SuccessThreshold: 2,
	}
	var wakes atomic.Int64
	b := breaker.New("race", s, breaker.Options{Clock: clock, Observer: obs})
	b.SetWake(func() { wakes.Add(1) })
	tracker := &trialTracker{held: map[uint64]int{}}

	const workers, perWorker = 8, 3000
	var admitted, trials, rejected atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			finish := func(tk breaker.Ticket) {
				o := [...]breaker.Outcome{ // 60 % success, 30 % failure, 10 % cancelled
					breaker.Success, breaker.Success, breaker.Success, breaker.Success, breaker.Success,
					breaker.Success, breaker.Failure, breaker.Failure, breaker.Failure, breaker.Ignored,
				}[rnd.IntN(10)]
				if tk.Trial() {
					tracker.release(tk.Generation())
				}
				b.Done(tk, o, time.Duration(rnd.IntN(8))*time.Millisecond)
			}
			var inFlight []breaker.Ticket // requests this worker has not finished yet
			for range perWorker {
				clock.Advance(time.Duration(rnd.IntN(200)) * time.Microsecond) // time flows with traffic
				if len(inFlight) > 0 && rnd.IntN(2) == 0 {
					i := rnd.IntN(len(inFlight))
					finish(inFlight[i])
					inFlight = slices.Delete(inFlight, i, i+1)
				}
				tk, err := b.Allow()
				if err != nil {
					if !errors.Is(err, breaker.ErrOpen) && !errors.Is(err, breaker.ErrTooManyTrials) {
						t.Errorf("Allow: unexpected error %v", err)
					}
					rejected.Add(1)
					continue
				}
				admitted.Add(1)
				if tk.Trial() {
					trials.Add(1)
					tracker.acquire(tk.Generation())
				}
				if len(inFlight) < 3 && rnd.IntN(2) == 0 {
					inFlight = append(inFlight, tk)
					continue
				}
				finish(tk)
			}
			for _, tk := range inFlight {
				finish(tk)
			}
		}()
	}

	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { // the operator, the store and time
		defer bg.Done()
		rnd := rand.New(rand.NewPCG(99, 1))
		for {
			select {
			case <-stop:
				return
			default:
			}
			clock.Advance(time.Duration(rnd.IntN(100)) * time.Microsecond)
			switch rnd.IntN(200) {
			case 0:
				b.Trip()
			case 1:
				b.Close()
			case 2:
				b.Reset()
			case 3:
				b.SetMode(breaker.Mode(rnd.IntN(4)))
			case 4, 5:
				b.SetMode(breaker.Normal)
			case 6:
				gen := b.Snapshot().Generation
				b.Apply(breaker.SharedState{State: breaker.State(rnd.IntN(3)), Generation: gen + 1 + uint64(rnd.IntN(2)),
					OpenRemaining: time.Millisecond, OpenFor: 3 * time.Millisecond, Trips: rnd.IntN(3)}, false)
			case 7:
				b.SetShared(true)
			case 8, 9:
				b.SetShared(false)
			case 10, 11:
				b.GrantPermits(b.Snapshot().Generation, 1+rnd.IntN(3), time.Minute)
			case 12:
				b.TakeDelta()
				b.TakeTrials()
				b.NeedsPermits()
			case 13:
				s2 := s
				s2.Window, s2.Buckets = time.Duration(50+rnd.IntN(100))*time.Millisecond, 1+rnd.IntN(10)
				b.SetSettings(s2)
			}
		}
	}()
	go func() { // an admin page
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			checkSnapshot(t, b.Snapshot(), s.HalfOpenMaxRequests)
			if d := b.RetryAfter(); d < 0 {
				t.Errorf("RetryAfter %v", d)
			}
			if st, m := b.State(), b.Mode(); st > breaker.HalfOpen || m > breaker.MetricsOnly {
				t.Errorf("State %v, Mode %v", st, m)
			}
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()

	if tracker.max > s.HalfOpenMaxRequests {
		t.Errorf("%d trials in flight at once in one generation, limit %d", tracker.max, s.HalfOpenMaxRequests)
	}
	// The run must have reached what it means to race: rejections and transitions (the
	// workers' own failures trip the breaker). Trials are likely, not certain: under a
	// loaded scheduler the operator goroutine may keep the breaker shared or forced.
	if rejected.Load() == 0 || admitted.Load() == 0 || len(obs.all()) == 0 {
		t.Errorf("the run did not exercise the breaker: admitted %d, trials %d, rejected %d, transitions %d",
			admitted.Load(), trials.Load(), rejected.Load(), len(obs.all()))
	}
	t.Logf("admitted %d (trials %d, at most %d at once), rejected %d, transitions %d, wakes %d",
		admitted.Load(), trials.Load(), tracker.max, rejected.Load(), len(obs.all()), wakes.Load())

	// The reported transitions chain: sorted by generation, each starts where the
	// previous one ended, and the last ends in the current state.
	trs := obs.all()
	slices.SortFunc(trs, func(a, b breaker.Transition) int { return cmp.Compare(a.Generation, b.Generation) })
	prev := breaker.Transition{To: breaker.Closed}
	for _, tr := range trs {
		if tr.Generation == prev.Generation || tr.From != prev.To {
			t.Fatalf("transition %+v does not follow %+v", tr, prev)
		}
		prev = tr
	}
	sn := b.Snapshot()
	checkSnapshot(t, sn, s.HalfOpenMaxRequests)
	if sn.State != prev.To || sn.Generation < prev.Generation {
		t.Fatalf("final snapshot %+v, last transition %+v", sn, prev)
	}

	// The breaker still works as specified afterwards.
	b.SetShared(false)
	b.SetSettings(s)
	b.Reset()
	for i := range s.ConsecutiveFailures {
		if got := b.State(); got != breaker.Closed {
			t.Fatalf("after reset and %d failures: %v", i, got)
		}
		tk, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		b.Done(tk, breaker.Failure, 0)
	}
	if got := b.State(); got != breaker.Open {
		t.Fatalf("after reset and %d failures: %v", s.ConsecutiveFailures, got)
	}
}
