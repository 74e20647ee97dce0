// Command profserve runs a fuseproxy replica exactly as `fuseproxy serve` does (same
// config, same app) with net/http/pprof on a separate loopback listener, for profiling
// the data plane under load. It is a benchmarking tool, not part of the product:
//
//	go build -o /tmp/profserve ./bench/profserve
//	/tmp/profserve -config cfg.yaml -pprof 127.0.0.1:6061 &
//	wrk -c32 -d30s http://127.0.0.1:8080/ &
//	go tool pprof -seconds 20 http://127.0.0.1:6061/debug/pprof/profile
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/app"
)

func main() {
	path := flag.String("config", "config.yaml", "config file")
	pprofAddr := flag.String("pprof", "127.0.0.1:6061", "net/http/pprof listen address")
	flag.Parse()
	gc := app.ApplyGCDefault(os.Getenv) // as fuseproxy serve does
	cfg, err := config.Load(*path)
	if err != nil {
		log.Fatal(err)
	}
	lg, err := zap.NewProduction(zap.IncreaseLevel(zap.WarnLevel))
	if err != nil {
		log.Fatal(err)
	}
	lg.Warn("garbage collector", gc.Fields()...)
	a, err := app.New(cfg, app.Options{Logger: lg, Version: "profserve"})
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Println(http.ListenAndServe(*pprofAddr, nil)) }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
