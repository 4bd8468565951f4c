package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run this very binary as the function (a real process
// to send SIGTERM to) without building it first.
func TestMain(m *testing.M) {
	if os.Getenv("FUNCTION_TEST_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
	}
	os.Exit(m.Run())
}

func testConfig(t *testing.T) Config {
	t.Helper()
	cfg, err := ParseConfig([]string{"-bind", "127.0.0.1", "-port", "0", "-admin-port", "0",
		"-pod-name", "fn-0", "-annotations-file", "", "-default-ms", "0"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func start(t *testing.T, cfg Config) *Function {
	t.Helper()
	f := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// answer is what a client got: status, body, and whether the end marker came.
type answer struct {
	status   int
	body     string
	complete bool
	err      error
}

func get(url string) answer {
	resp, err := http.Get(url)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(body), complete: strings.HasSuffix(string(body), EndMarker), err: err}
}

func post(t *testing.T, url string) answer {
	t.Helper()
	resp, err := http.Post(url, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(body)}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrape reads one sample of the Prometheus text format.
func scrape(t *testing.T, f *Function, metric string) string {
	t.Helper()
	a := get("http://" + f.AdminAddr() + "/metrics")
	if a.err != nil || a.status != 200 {
		t.Fatalf("scrape: %v %d", a.err, a.status)
	}
	for _, line := range strings.Split(a.body, "\n") {
		if name, value, ok := strings.Cut(line, " "); ok && name == metric {
			return value
		}
	}
	t.Fatalf("%s not in /metrics:\n%s", metric, a.body)
	return ""
}

func stats(t *testing.T, f *Function) Stats {
	t.Helper()
	a := get("http://" + f.AdminAddr() + "/stats")
	var s Stats
	if err := json.Unmarshal([]byte(a.body), &s); err != nil {
		t.Fatalf("stats %q: %v", a.body, err)
	}
	return s
}

func TestInFlightIsExactUnderConcurrentRequests(t *testing.T) {
	f := start(t, testConfig(t))
	const n = 40
	answers := make([]answer, n)
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = get(fmt.Sprintf("http://%s/?ms=%d", f.ServeAddr(), 400+i*5))
		}()
	}
	go func() { wg.Wait(); close(release) }()
	waitFor(t, "40 requests in flight", func() bool { return f.InFlight() == n })
	if got := scrape(t, f, "function_requests_in_flight"); got != "40" {
		t.Errorf("gauge = %s, want 40", got)
	}
	if got := strings.TrimSpace(get("http://" + f.AdminAddr() + "/inflight").body); got != "40" {
		t.Errorf("/inflight = %q, want 40", got)
	}
	if s := stats(t, f); s.InFlight != n || s.Draining {
		t.Errorf("/stats = %+v", s)
	}
	<-release
	for i, a := range answers {
		if a.err != nil || a.status != 200 || !a.complete {
			t.Errorf("request %d: %+v", i, a)
		}
	}
	if f.InFlight() != 0 || scrape(t, f, "function_requests_in_flight") != "0" {
		t.Errorf("in flight after all ended: %d", f.InFlight())
	}
	if got := scrape(t, f, "function_requests_served_total"); got != "40" {
		t.Errorf("served = %s", got)
	}
}

func TestAnswerNamesThePodAndEndsWithTheMarker(t *testing.T) {
	f := start(t, testConfig(t))
	resp, err := http.Post("http://"+f.ServeAddr()+"/invoke?ms=20", "application/json", strings.NewReader(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	lines := strings.Split(string(body), "\n")
	if resp.StatusCode != 200 || resp.Header.Get("X-Pod") != "fn-0" || resp.Header.Get("X-Draining") != "false" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "start pod=fn-0 id=1 ms=20") ||
		!strings.HasPrefix(lines[1], "end pod=fn-0 id=1 took_ms=") || lines[2] != "END" || lines[3] != "" {
		t.Fatalf("body %q", body)
	}
}

func TestBadRequestsAreNotCounted(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxMS = 1000
	f := start(t, cfg)
	for url, want := range map[string]int{
		"/?ms=abc": 400, "/?ms=-1": 400, "/?ms=1001": 400, "/nope": 404,
	} {
		if a := get("http://" + f.ServeAddr() + url); a.status != want {
			t.Errorf("%s: %d, want %d", url, a.status, want)
		}
	}
	req, _ := http.NewRequest(http.MethodPut, "http://"+f.ServeAddr()+"/", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 405 {
		t.Errorf("PUT: %v %v", resp, err)
	}
	if s := stats(t, f); s.Served != 0 || s.InFlight != 0 {
		t.Errorf("%+v", s)
	}
}

func TestDrainByHTTPPost(t *testing.T) {
	f := start(t, testConfig(t))
	admin := "http://" + f.AdminAddr()
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 200 {
		t.Fatalf("ready before the drain: %d", a.status)
	}
	if a := get(admin + "/drain"); a.status != 405 {
		t.Errorf("GET /drain: %d, want 405", a.status)
	}
	a := post(t, admin+"/drain")
	var s Stats
	if a.status != 200 || json.Unmarshal([]byte(a.body), &s) != nil || !s.Draining || !s.DrainHTTP {
		t.Fatalf("POST /drain: %d %s", a.status, a.body)
	}
	if post(t, admin+"/drain").status != 200 {
		t.Error("a second POST /drain is not idempotent")
	}
	if got := scrape(t, f, "function_draining"); got != "1" {
		t.Errorf("function_draining = %s", got)
	}
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 503 {
		t.Errorf("readiness while draining: %d, want 503", a.status)
	}
	// Routing was withdrawn before the drain: a late request is still served.
	if a := get("http://" + f.ServeAddr() + "/?ms=10"); a.status != 200 || !a.complete || !strings.Contains(a.body, "draining=true") {
		t.Errorf("request while draining: %+v", a)
	}
	post(t, admin+"/undrain")
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 200 || f.Draining() {
		t.Errorf("after /undrain: %d draining=%t", a.status, f.Draining())
	}
}

func TestReadyWhileDrainingKeepsReadiness(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReadyWhileDraining = true
	f := start(t, cfg)
	post(t, "http://"+f.AdminAddr()+"/drain")
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 200 {
		t.Errorf("readiness: %d", a.status)
	}
}

func TestRefuseWhileDraining(t *testing.T) {
	cfg := testConfig(t)
	cfg.DrainingRequests = RefuseDraining
	f := start(t, cfg)
	post(t, "http://"+f.AdminAddr()+"/drain")
	resp, err := http.Get("http://" + f.ServeAddr() + "/?ms=10")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("%d %v", resp.StatusCode, resp.Header)
	}
	if got := scrape(t, f, "function_requests_refused_total"); got != "1" {
		t.Errorf("refused = %s", got)
	}
	if f.InFlight() != 0 {
		t.Errorf("in flight %d", f.InFlight())
	}
}

// writeAtomically swaps the file in as the kubelet's atomic writer does.
func writeAtomically(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDrainByTheAnnotationsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "annotations")
	cfg := testConfig(t)
	cfg.AnnotationsFile = path
	cfg.AnnotationsPoll = 20 * time.Millisecond
	writeAtomically(t, path, "kubernetes.io/config.seen=\"2026-12-02T10:00:00Z\"\n")
	f := start(t, cfg)
	time.Sleep(60 * time.Millisecond)
	if f.Draining() {
		t.Fatal("draining without the annotation")
	}
	writeAtomically(t, path, "kubernetes.io/config.seen=\"2026-12-02T10:00:00Z\"\n"+
		"pitstop.dev/draining=\"2026-12-02T10:05:00Z\"\npitstop.dev/inflight-tasks=\"0\"\n")
	waitFor(t, "the annotation drain", f.Draining)
	if s := stats(t, f); !s.DrainNote || s.DrainHTTP {
		t.Errorf("%+v", s)
	}
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 503 {
		t.Errorf("readiness while draining: %d", a.status)
	}
	// An aborted repair removes the annotation: the instance takes work again.
	writeAtomically(t, path, "kubernetes.io/config.seen=\"2026-12-02T10:00:00Z\"\n")
	waitFor(t, "the drain withdrawn", func() bool { return !f.Draining() })
	// A missing file is no signal.
	writeAtomically(t, path, "pitstop.dev/draining=\"x\"\n")
	waitFor(t, "the annotation drain again", f.Draining)
	os.Remove(path)
	waitFor(t, "no file, no drain", func() bool { return !f.Draining() })
}

func TestParseAnnotationsKubeletFormat(t *testing.T) {
	data := "a.io/multi=\"line one\\nline \\\"two\\\"\"\n" +
		"pitstop.dev/draining=\"2026-12-02T10:05:00Z\"\n" +
		"empty=\"\"\n" +
		"broken=unquoted\n" +
		"\n"
	got, err := ParseAnnotations([]byte(data))
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("error = %v, want one about the broken line", err)
	}
	want := map[string]string{
		"a.io/multi":           "line one\nline \"two\"",
		"pitstop.dev/draining": "2026-12-02T10:05:00Z",
		"empty":                "",
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestShutdownWaitsForRequestsInFlight(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownMaxWait = 5 * time.Second
	f := start(t, cfg)
	const n = 5
	answers := make(chan answer, n)
	for range n {
		go func() { answers <- get("http://" + f.ServeAddr() + "/?ms=700") }()
	}
	waitFor(t, "requests in flight", func() bool { return f.InFlight() == n })
	began := time.Now()
	done := make(chan bool)
	go func() { done <- f.Shutdown() }()
	waitFor(t, "readiness off", func() bool { return get("http://"+f.ServeAddr()+"/healthz").err != nil })
	if _, err := net.DialTimeout("tcp", f.ServeAddr(), time.Second); err == nil {
		t.Error("a new connection was accepted after the shutdown began")
	}
	// The admin port still answers during the drain.
	if got := strings.TrimSpace(get("http://" + f.AdminAddr() + "/inflight").body); got != "5" {
		t.Errorf("/inflight during shutdown = %q", got)
	}
	if clean := <-done; !clean {
		t.Error("shutdown was not clean")
	}
	if took := time.Since(began); took < 500*time.Millisecond {
		t.Errorf("shutdown returned after %v, before its requests could end", took)
	}
	for range n {
		if a := <-answers; a.err != nil || !a.complete {
			t.Errorf("a request was cut: %+v", a)
		}
	}
}

func TestShutdownDelayKeepsAccepting(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownDelay = 400 * time.Millisecond
	cfg.ShutdownMaxWait = 5 * time.Second
	f := start(t, cfg)
	done := make(chan bool)
	go func() { done <- f.Shutdown() }()
	waitFor(t, "the shutdown", f.shuttingDown.Load)
	if a := get("http://" + f.ServeAddr() + "/healthz"); a.status != 503 {
		t.Errorf("readiness during the delay: %d", a.status)
	}
	if a := get("http://" + f.ServeAddr() + "/?ms=600"); a.err != nil || !a.complete {
		t.Errorf("request during the delay: %+v", a)
	}
	if !<-done {
		t.Error("not clean")
	}
}

func TestShutdownMaxWaitCutsAndSaysSo(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownMaxWait = 300 * time.Millisecond
	f := start(t, cfg)
	answers := make(chan answer, 1)
	go func() { answers <- get("http://" + f.ServeAddr() + "/?ms=5000") }()
	waitFor(t, "the request", func() bool { return f.InFlight() == 1 })
	began := time.Now()
	if f.Shutdown() {
		t.Error("shutdown said clean with a request still running")
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("max wait not honoured: %v", took)
	}
	a := <-answers
	if a.complete || !strings.HasPrefix(a.body, "start ") {
		t.Errorf("the cut request looks complete or never started: %+v", a)
	}
}

// The real process: SIGTERM with requests in flight exits 0 after they ended.
func TestSIGTERMProcessExitsAfterItsRequests(t *testing.T) {
	dir := t.TempDir()
	addrFile := filepath.Join(dir, "addr.json")
	cmd := exec.Command(os.Args[0], "-bind", "127.0.0.1", "-port", "0", "-admin-port", "0",
		"-annotations-file", "", "-addr-file", addrFile, "-pod-name", "proc-0")
	cmd.Env = append(os.Environ(), "FUNCTION_TEST_AS_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	logDone := make(chan struct{})
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			logs.WriteString(s.Text() + "\n")
		}
		close(logDone)
	}()
	defer cmd.Process.Kill()
	var addrs map[string]string
	waitFor(t, "the addr file", func() bool {
		data, err := os.ReadFile(addrFile)
		return err == nil && json.Unmarshal(data, &addrs) == nil
	})
	answers := make(chan answer, 3)
	for range 3 {
		go func() { answers <- get("http://" + addrs["serve"] + "/?ms=800") }()
	}
	waitFor(t, "3 in flight", func() bool {
		return strings.TrimSpace(get("http://"+addrs["admin"]+"/inflight").body) == "3"
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if a := <-answers; a.err != nil || !a.complete {
			t.Errorf("cut by SIGTERM: %+v", a)
		}
	}
	err := cmd.Wait()
	<-logDone
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d\n%s", code, logs.String())
	}
	if !strings.Contains(logs.String(), "shutdown: every request ended") {
		t.Errorf("the log does not say what happened:\n%s", logs.String())
	}
}

func TestConfigFromEnvironmentAndFlags(t *testing.T) {
	env := map[string]string{"PORT": "8181", "DRAINING_REQUESTS": "refuse", "SHUTDOWN_MAX_WAIT_MS": "1000",
		"READY_WHILE_DRAINING": "true", "POD_NAME": "from-env"}
	cfg, err := ParseConfig([]string{"-port", "8282"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 8282 || cfg.AdminPort != 9100 || cfg.DrainingRequests != RefuseDraining ||
		cfg.ShutdownMaxWait != time.Second || !cfg.ReadyWhileDraining || cfg.PodName != "from-env" ||
		cfg.AnnotationsFile != "/etc/podinfo/annotations" || cfg.AnnotationsPoll != 200*time.Millisecond {
		t.Errorf("%+v", cfg)
	}
	for _, bad := range []map[string]string{
		{"PORT": "x"}, {"DRAINING_REQUESTS": "maybe"}, {"SHUTDOWN_DELAY_MS": "30000"}, {"REPORT_ANNOTATION": "yes please"},
	} {
		if _, err := ParseConfig(nil, func(k string) string { return bad[k] }, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
