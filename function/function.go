package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// EndMarker is the last line of every complete answer: a client that has not
// read it when the connection ends knows the request was cut.
const EndMarker = "END\n"

// DrainingAnnotation is pitstop's drain signal on the pod (RFC 3339 time).
const DrainingAnnotation = "pitstop.dev/draining"

// Function is one instance of the runtime: a serving port, an admin port, an
// exact in-flight count and the drain state.
type Function struct {
	cfg Config
	log *slog.Logger

	inflight atomic.Int64 // requests inside the function handler, exact
	served   atomic.Int64 // requests answered in full
	refused  atomic.Int64 // requests refused with 503 while draining (DRAINING_REQUESTS=refuse)
	seq      atomic.Int64 // request ids

	drainHTTP    atomic.Bool // POST /drain (POST /undrain withdraws it)
	drainNote    atomic.Bool // pitstop.dev/draining in the annotations file
	shuttingDown atomic.Bool // SIGTERM received

	patches atomic.Int64  // pitstop.dev/inflight-tasks patches written (REPORT_ANNOTATION)
	changed chan struct{} // in-flight count changed (capacity 1: coalesces)

	serve, admin     *http.Server
	serveLn, adminLn net.Listener
	errs             chan error
	ctx              context.Context
	cancel           context.CancelFunc
	background       sync.WaitGroup
}

// New makes an instance; Start binds it.
func New(cfg Config, log *slog.Logger) *Function {
	f := &Function{cfg: cfg, log: log, changed: make(chan struct{}, 1), errs: make(chan error, 2)}
	f.ctx, f.cancel = context.WithCancel(context.Background())

	mux := http.NewServeMux()
	mux.HandleFunc("/", f.invoke)
	mux.HandleFunc("/invoke", f.invoke)
	mux.HandleFunc("/healthz", f.healthz)
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	f.serve = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "function_requests_in_flight",
			Help: "Function requests being served now (exact, read at scrape time).",
		}, func() float64 { return float64(f.inflight.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "function_requests_served_total",
			Help: "Function requests answered in full.",
		}, func() float64 { return float64(f.served.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "function_requests_refused_total",
			Help: "Function requests refused with 503 while draining (DRAINING_REQUESTS=refuse).",
		}, func() float64 { return float64(f.refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "function_draining",
			Help: "1 while the instance has been told to drain.",
		}, func() float64 { return b2f(f.Draining()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "function_annotation_patches_total",
			Help: "Patches of the pod's pitstop.dev/inflight-tasks annotation (REPORT_ANNOTATION=1).",
		}, func() float64 { return float64(f.patches.Load()) }),
	)
	amux := http.NewServeMux()
	amux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	amux.HandleFunc("/inflight", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d\n", f.inflight.Load())
	})
	amux.HandleFunc("/stats", f.stats)
	amux.HandleFunc("/drain", f.drainEndpoint(true))
	amux.HandleFunc("/undrain", f.drainEndpoint(false))
	amux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	f.admin = &http.Server{Handler: amux, ReadHeaderTimeout: 10 * time.Second}
	return f
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Start binds both ports and serves in the background.
func (f *Function) Start() error {
	var api *inClusterAPI
	var err error
	if f.cfg.ReportAnnotation {
		if api, err = newInClusterAPI(f.cfg, os.Getenv); err != nil {
			return fmt.Errorf("report-annotation: %w", err)
		}
	}
	if f.serveLn, err = net.Listen("tcp", net.JoinHostPort(f.cfg.Bind, strconv.Itoa(f.cfg.Port))); err != nil {
		return err
	}
	if f.adminLn, err = net.Listen("tcp", net.JoinHostPort(f.cfg.Bind, strconv.Itoa(f.cfg.AdminPort))); err != nil {
		f.serveLn.Close()
		return err
	}
	for srv, ln := range map[*http.Server]net.Listener{f.serve: f.serveLn, f.admin: f.adminLn} {
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				f.errs <- err
			}
		}()
	}
	if f.cfg.AnnotationsFile != "" {
		f.goBackground(f.watchAnnotations)
	}
	if api != nil {
		f.goBackground(func() { f.report(api) })
	}
	f.log.Info("listening", "serve", f.ServeAddr(), "admin", f.AdminAddr(), "pod", f.cfg.PodName,
		"draining_requests", f.cfg.DrainingRequests, "annotations_file", f.cfg.AnnotationsFile,
		"report_annotation", f.cfg.ReportAnnotation)
	if f.cfg.AddrFile != "" {
		data, _ := json.Marshal(map[string]string{"serve": f.ServeAddr(), "admin": f.AdminAddr()})
		tmp := f.cfg.AddrFile + ".tmp"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, f.cfg.AddrFile); err != nil {
			return err
		}
	}
	return nil
}

func (f *Function) goBackground(run func()) {
	f.background.Add(1)
	go func() {
		defer f.background.Done()
		run()
	}()
}

// Errors reports a server that stopped by itself (a bug or a lost listener).
func (f *Function) Errors() <-chan error { return f.errs }

func (f *Function) ServeAddr() string { return f.serveLn.Addr().String() }
func (f *Function) AdminAddr() string { return f.adminLn.Addr().String() }

// InFlight is the exact number of requests inside the function now.
func (f *Function) InFlight() int64 { return f.inflight.Load() }

// Draining tells whether the instance was told to drain, by either signal.
func (f *Function) Draining() bool { return f.drainHTTP.Load() || f.drainNote.Load() }

func (f *Function) notify() {
	select {
	case f.changed <- struct{}{}:
	default: // a notification is pending already: the reader takes the latest count
	}
}

// invoke is a function request: ?ms=N (or DEFAULT_MS) of work. The answer is
// streamed: a start line at once, then after the work an end line and the end
// marker, so a client can tell an answer cut mid-flight from a complete one.
func (f *Function) invoke(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" && r.URL.Path != "/invoke" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
		return
	}
	ms := f.cfg.DefaultMS
	if v := r.URL.Query().Get("ms"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > f.cfg.MaxMS {
			http.Error(w, fmt.Sprintf("ms: want an integer in 0..%d", f.cfg.MaxMS), http.StatusBadRequest)
			return
		}
		ms = n
	}
	// Count first, then look at the drain state: a drain signal read after this
	// increment always finds this request in the count (see README: the race).
	f.inflight.Add(1)
	f.notify()
	defer func() {
		f.inflight.Add(-1)
		f.notify()
	}()
	draining := f.Draining()
	if draining && f.cfg.DrainingRequests == RefuseDraining {
		f.refused.Add(1)
		w.Header().Set("Retry-After", "1")
		w.Header().Set("X-Pod", f.cfg.PodName)
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	id := f.seq.Add(1)
	if r.Body != nil {
		io.Copy(io.Discard, r.Body) // a payload is read in full before the answer starts
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Pod", f.cfg.PodName)
	h.Set("X-Request-Id", strconv.FormatInt(id, 10))
	h.Set("X-Draining", strconv.FormatBool(draining))
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "start pod=%s id=%d ms=%d draining=%t\n", f.cfg.PodName, id, ms, draining)
	rc := http.NewResponseController(w)
	rc.Flush()

	start := time.Now()
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-r.Context().Done(): // the client went away: nobody to answer
		f.log.Info("client gone mid-request", "id", id, "after_ms", time.Since(start).Milliseconds())
		return
	}
	fmt.Fprintf(w, "end pod=%s id=%d took_ms=%d\n%s", f.cfg.PodName, id, time.Since(start).Milliseconds(), EndMarker)
	if rc.Flush() == nil {
		f.served.Add(1)
	}
}

// healthz is the readiness probe: 503 once SIGTERM arrived, and while draining
// unless READY_WHILE_DRAINING (so a pod without pitstop's serving gate also
// leaves routing when told to drain).
func (f *Function) healthz(w http.ResponseWriter, _ *http.Request) {
	switch {
	case f.shuttingDown.Load():
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
	case f.Draining() && !f.cfg.ReadyWhileDraining:
		http.Error(w, "draining", http.StatusServiceUnavailable)
	default:
		io.WriteString(w, "ok\n")
	}
}

// Stats is the JSON form of the instance's state (GET /stats).
type Stats struct {
	Pod          string `json:"pod"`
	InFlight     int64  `json:"inflight"`
	Served       int64  `json:"served"`
	Refused      int64  `json:"refused"`
	Draining     bool   `json:"draining"`
	DrainHTTP    bool   `json:"drainHttp"`
	DrainNote    bool   `json:"drainAnnotation"`
	ShuttingDown bool   `json:"shuttingDown"`
	Patches      int64  `json:"annotationPatches"`
}

func (f *Function) Stats() Stats {
	return Stats{
		Pod: f.cfg.PodName, InFlight: f.inflight.Load(), Served: f.served.Load(), Refused: f.refused.Load(),
		Draining: f.Draining(), DrainHTTP: f.drainHTTP.Load(), DrainNote: f.drainNote.Load(),
		ShuttingDown: f.shuttingDown.Load(), Patches: f.patches.Load(),
	}
}

func (f *Function) stats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(f.Stats())
}

// drainEndpoint is POST /drain (on) and POST /undrain (off), both idempotent.
func (f *Function) drainEndpoint(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "POST", http.StatusMethodNotAllowed)
			return
		}
		if was := f.drainHTTP.Swap(on); was != on {
			f.log.Info("drain signal (HTTP)", "draining", on, "inflight", f.inflight.Load(), "from", r.RemoteAddr)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(f.Stats())
	}
}

// Shutdown is what SIGTERM does: readiness turns 503; connections are still
// accepted for ShutdownDelay; then the serving port stops accepting (new
// connections are refused) while the requests in flight run to their end. It
// returns true when every request ended; false when ShutdownMaxWait (counted
// from the call) passed first: those requests are cut by the exit.
func (f *Function) Shutdown() bool {
	start := time.Now()
	deadline := start.Add(f.cfg.ShutdownMaxWait)
	f.shuttingDown.Store(true)
	f.log.Info("shutdown: started", "inflight", f.inflight.Load(), "draining", f.Draining(),
		"delay_ms", f.cfg.ShutdownDelay.Milliseconds(), "max_wait_ms", f.cfg.ShutdownMaxWait.Milliseconds())
	if f.cfg.ShutdownDelay > 0 {
		time.Sleep(f.cfg.ShutdownDelay)
		f.log.Info("shutdown: delay over, no new connections", "inflight", f.inflight.Load())
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	err := f.serve.Shutdown(ctx) // closes the listener, then waits for active connections
	left := f.inflight.Load()
	clean := err == nil && left == 0
	if clean {
		f.log.Info("shutdown: every request ended", "served", f.served.Load(), "took_ms", time.Since(start).Milliseconds())
	} else {
		f.log.Warn("shutdown: max wait passed with requests in flight; they are cut", "inflight", left,
			"took_ms", time.Since(start).Milliseconds())
		f.serve.Close()
	}
	// The admin port stays up to here, so /inflight and /metrics answer during the drain.
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	f.admin.Shutdown(actx)
	f.cancel()
	f.background.Wait()
	return clean
}

// Close stops everything at once (tests, failed starts).
func (f *Function) Close() {
	f.cancel()
	if f.serveLn != nil {
		f.serve.Close()
	}
	if f.adminLn != nil {
		f.admin.Close()
	}
	f.background.Wait()
}
