package main

import (
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A fake API server stands in for the kube-apiserver: it checks what a pod
// patch must carry and records the counts written.
func TestReportAnnotationPatchesTheOwnPod(t *testing.T) {
	var mu sync.Mutex
	var counts []string
	var problems []string
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodPatch || r.URL.Path != "/api/v1/namespaces/faas/pods/fn-0" ||
			r.Header.Get("Content-Type") != "application/merge-patch+json" ||
			r.Header.Get("Authorization") != "Bearer sa-token" {
			problems = append(problems, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type")+" "+r.Header.Get("Authorization"))
			http.Error(w, "no", http.StatusForbidden)
			return
		}
		var patch struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &patch); err != nil {
			problems = append(problems, string(body))
		}
		counts = append(counts, patch.Metadata.Annotations[InFlightAnnotation])
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"kind":"Pod"}`)
	}))
	defer api.Close()

	sa := t.TempDir()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	for name, content := range map[string]string{"token": "sa-token\n", "namespace": "faas", "ca.crt": string(ca)} {
		if err := os.WriteFile(filepath.Join(sa, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := net.SplitHostPort(api.Listener.Addr().String())
	t.Setenv("KUBERNETES_SERVICE_HOST", host)
	t.Setenv("KUBERNETES_SERVICE_PORT", port)

	cfg := testConfig(t)
	cfg.ReportAnnotation = true
	cfg.ServiceAccountDir = sa
	f := start(t, cfg)
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(counts) == 0 {
			return ""
		}
		return counts[len(counts)-1]
	}
	waitFor(t, "the first write (0)", func() bool { return last() == "0" })
	done := make(chan answer)
	go func() { done <- get("http://" + f.ServeAddr() + "/?ms=300") }()
	waitFor(t, "the count 1 written", func() bool { return last() == "1" })
	if a := <-done; !a.complete {
		t.Fatalf("%+v", a)
	}
	waitFor(t, "the count back to 0", func() bool { return last() == "0" })
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("bad patches: %v", problems)
	}
	if len(counts) != 3 || f.patches.Load() != 3 {
		t.Errorf("patches %v (counted %d), want [0 1 0]", counts, f.patches.Load())
	}
}

func TestReportAnnotationNeedsACluster(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReportAnnotation = true
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	f := New(cfg, slog.New(slog.DiscardHandler))
	if f.Start() == nil {
		t.Error("started without a cluster to report to")
	}
}
