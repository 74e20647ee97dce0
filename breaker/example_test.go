package breaker_test

import (
	"fmt"
	"time"

	"github.com/fuseproxy/fuseproxy/breaker"
)

// manualClock is a breaker.Clock that moves only when told to.
type manualClock struct{ now time.Duration }

func (c *manualClock) Now() time.Duration { return c.now }

// The two-step API: Allow admits a request (or rejects it), Done reports its outcome
// with the ticket Allow returned.
func ExampleBreaker() {
	clock := &manualClock{}
	b := breaker.New("payments", breaker.Settings{
		ConsecutiveFailures: 2,
		OpenDuration:        10 * time.Second,
	}, breaker.Options{Clock: clock})

	call := func(upstreamFails bool) {
		ticket, err := b.Allow()
		if err != nil {
			fmt.Printf("rejected (%v), retry after %v\n", err, ticket.RetryAfter())
			return
		}
		outcome, word := breaker.Success, "succeeded"
		if upstreamFails {
			outcome, word = breaker.Failure, "failed"
		}
		b.Done(ticket, outcome, 30*time.Millisecond)
		fmt.Printf("admitted (trial: %v), %s: circuit %v\n", ticket.Trial(), word, b.State())
	}

	call(true)
	call(true) // the second failure in a row trips the circuit
	call(false)
	clock.now += 4 * time.Second
	call(false)
	clock.now += 6 * time.Second // the open period is over: one trial goes through
	call(false)
	// Output:
	// admitted (trial: false), failed: circuit closed
	// admitted (trial: false), failed: circuit open
	// rejected (circuit open), retry after 10s
	// rejected (circuit open), retry after 6s
	// admitted (trial: true), succeeded: circuit closed
}
