package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/fuseproxy/fuseproxy/internal/app"
	"github.com/fuseproxy/fuseproxy/store"
)

// migrate creates or upgrades the postgres store's schema (store.postgres of the config)
// and, with -grants ROLE, prints the statements that give a runtime role the least
// rights it needs.
func migrate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := configFlag(fs)
	grants := fs.String("grants", "", "also print the GRANT statements a runtime role of this name needs")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := missingConfig(fs, *path); err != nil {
		return err
	}
	cfg, err := app.LoadConfig(*path)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, db, err := app.MigratePostgres(ctx, cfg)
	if err != nil {
		return err
	}
	p := cfg.Store.Postgres.Prefix
	if len(res.Applied) == 0 {
		fmt.Fprintf(stdout, "schema %s, prefix %s: up to date (version %d)\n", res.Schema, p, res.Version)
	} else {
		vs := make([]string, len(res.Applied))
		for i, v := range res.Applied {
			vs[i] = fmt.Sprint(v)
		}
		fmt.Fprintf(stdout, "schema %s, prefix %s: applied version %s; now at version %d\n", res.Schema, p, strings.Join(vs, ", "), res.Version)
	}
	if *grants != "" {
		for _, g := range store.PostgresGrants(p, res.Schema, db, *grants) {
			fmt.Fprintln(stdout, g+";")
		}
	}
	return nil
}
