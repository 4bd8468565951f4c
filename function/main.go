// Command function is pitstop's own FaaS function runtime: it serves requests
// that take time, keeps an exact in-flight count (a Prometheus gauge, a plain
// integer and JSON), honours pitstop's drain signal (POST /drain or the
// pitstop.dev/draining annotation through the downward API) and exits on
// SIGTERM only after its requests ended. See README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// run is main without the exit: 0 after a clean shutdown, 1 when the max wait
// cut requests, 2 for bad configuration or a server that failed.
func run(args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := ParseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "function:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	// Signals are caught before the ports open: a SIGTERM right after start is
	// still a graceful shutdown, not the default exit.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	f := New(cfg, log)
	if err := f.Start(); err != nil {
		log.Error("start", "error", err.Error())
		return 2
	}
	select {
	case sig := <-signals:
		log.Info("signal", "signal", sig.String(), "inflight", f.InFlight())
	case err := <-f.Errors():
		log.Error("server failed", "error", err.Error())
		f.Close()
		return 2
	}
	if f.Shutdown() {
		log.Info("exit", "code", 0)
		return 0
	}
	log.Warn("exit", "code", 1)
	return 1
}
