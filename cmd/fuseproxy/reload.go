package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/fuseproxy/fuseproxy/internal/admin"
)

// reloadCmd asks the replica to re-read and apply its config file (POST /reload).
func reloadCmd(args []string, stdout, stderr io.Writer) error {
	fs, f := newAdminFlagSet("reload", stderr, 10*time.Second)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	_, data, err := c.Call(http.MethodPost, "/reload", nil)
	if f.json && data != nil {
		printJSON(stdout, data)
	}
	var r admin.ReloadResult
	if data != nil {
		_ = json.Unmarshal(data, &r)
	}
	if err != nil {
		if r.Error != "" {
			return fmt.Errorf("reload failed; the old config keeps serving: %s", r.Error)
		}
		return err
	}
	if !f.json {
		fmt.Fprintf(stdout, "reloaded %s: %d upstreams\n", r.Path, r.Upstreams)
	}
	return nil
}
