package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// InFlightAnnotation is the annotation contract's task count on the pod.
const InFlightAnnotation = "pitstop.dev/inflight-tasks"

// inClusterAPI is the least needed to patch the own pod: plain HTTPS with the
// pod's ServiceAccount token (re-read at every request: projected tokens rotate).
type inClusterAPI struct {
	podURL    string
	tokenFile string
	client    *http.Client
}

func newInClusterAPI(cfg Config, getenv func(string) string) (*inClusterAPI, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST/PORT not set: not in a cluster")
	}
	if cfg.PodName == "" {
		return nil, errors.New("no pod name (set POD_NAME from the downward API)")
	}
	ns := cfg.Namespace
	if ns == "" {
		data, err := os.ReadFile(filepath.Join(cfg.ServiceAccountDir, "namespace"))
		if err != nil {
			return nil, fmt.Errorf("no namespace (POD_NAMESPACE or the ServiceAccount's): %w", err)
		}
		ns = strings.TrimSpace(string(data))
	}
	caPEM, err := os.ReadFile(filepath.Join(cfg.ServiceAccountDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("ca.crt holds no certificate")
	}
	tokenFile := filepath.Join(cfg.ServiceAccountDir, "token")
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, err
	}
	u := url.URL{
		Scheme: "https",
		Host:   net.JoinHostPort(host, port),
		Path:   "/api/v1/namespaces/" + url.PathEscape(ns) + "/pods/" + url.PathEscape(cfg.PodName),
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return &inClusterAPI{podURL: u.String(), tokenFile: tokenFile,
		client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}, nil
}

// patchInFlight merge-patches the own pod's pitstop.dev/inflight-tasks.
func (a *inClusterAPI) patchInFlight(ctx context.Context, n int64) error {
	token, err := os.ReadFile(a.tokenFile)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{InFlightAnnotation: strconv.FormatInt(n, 10)}}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, a.podURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("PATCH %s: %s: %s", a.podURL, resp.Status, bytes.TrimSpace(answer))
	}
	return nil
}

// report writes the in-flight count to the pod whenever it changed. Changes that
// happen while a patch is on its way are folded into the next patch (the latest
// count), so under load there are fewer writes than requests, never a stale end
// value. A failed patch is retried with backoff.
func (f *Function) report(api *inClusterAPI) {
	written := int64(-1)
	backoff := 100 * time.Millisecond
	f.notify() // the first write: the pod says it keeps a count (0)
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-f.changed:
		}
		n := f.inflight.Load()
		if n == written {
			continue
		}
		if err := api.patchInFlight(f.ctx, n); err != nil {
			if f.ctx.Err() != nil {
				return
			}
			f.log.Warn("patch of "+InFlightAnnotation+" failed; retrying", "count", n, "error", err.Error(),
				"retry_in_ms", backoff.Milliseconds())
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			f.notify()
			continue
		}
		backoff = 100 * time.Millisecond
		written = n
		f.patches.Add(1)
	}
}
