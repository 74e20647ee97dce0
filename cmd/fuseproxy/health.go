package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/admin"
)

// health asks GET /readyz and exits 0 when the replica is ready, 1 otherwise. It is the
// container's HEALTHCHECK, so it needs nothing but this binary.
func health(args []string, stdout, stderr io.Writer) error {
	fs, f := newAdminFlagSet("health", stderr, 2*time.Second)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	status, data, err := c.Call(http.MethodGet, "/readyz", nil)
	if f.json && data != nil {
		printJSON(stdout, data)
	}
	var r admin.Readiness
	var apiErr *admin.APIError
	switch {
	case err == nil || errors.As(err, &apiErr) && status == http.StatusServiceUnavailable:
		if jerr := json.Unmarshal(data, &r); jerr != nil {
			return fmt.Errorf("admin API: unexpected answer to GET /readyz: %w", jerr)
		}
	default:
		return fmt.Errorf("not ready: %w", err)
	}
	if !f.json {
		fmt.Fprintf(stdout, "%s: %s (replica %s, store %s, protection %s)\n",
			readyWord(r.Ready), r.Status, r.Replica, storeSummary(r.Store, r.Degraded, r.StoreError), r.Protection)
	}
	if !r.Ready || status != http.StatusOK {
		return errors.New("not ready")
	}
	return nil
}

func readyWord(ready bool) string {
	if ready {
		return "ready"
	}
	return "not ready"
}
