package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// ParseAnnotations reads the downward-API format the kubelet writes for
// metadata.annotations: one `key="value"` line per annotation, the value a Go
// quoted string (escapes for newlines and quotes). Lines that do not parse are
// returned as an error; the others are still in the map.
func ParseAnnotations(data []byte) (map[string]string, error) {
	out := map[string]string{}
	var errs []error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		key, quoted, ok := strings.Cut(line, "=")
		if !ok || key == "" {
			errs = append(errs, fmt.Errorf("line %d: no key=value", i+1))
			continue
		}
		value, err := strconv.Unquote(quoted)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d (%s): value is not a quoted string", i+1, key))
			continue
		}
		out[key] = value
	}
	return out, errors.Join(errs...)
}

// watchAnnotations polls the annotations file and follows pitstop.dev/draining:
// present (any value) means draining, gone means the drain was withdrawn (an
// aborted repair). A missing file means no annotation signal; another read
// error keeps the last state.
func (f *Function) watchAnnotations() {
	tick := time.NewTicker(f.cfg.AnnotationsPoll)
	defer tick.Stop()
	var lastErr, lastValue string
	for {
		data, err := os.ReadFile(f.cfg.AnnotationsFile)
		var notes map[string]string
		switch {
		case errors.Is(err, fs.ErrNotExist):
			notes, err = map[string]string{}, errNoFile
		case err == nil:
			notes, err = ParseAnnotations(data)
		}
		if msg := errString(err); msg != lastErr {
			if msg != "" {
				f.log.Warn("annotations file", "path", f.cfg.AnnotationsFile, "error", msg)
			}
			lastErr = msg
		}
		if notes != nil {
			value, draining := notes[DrainingAnnotation]
			if was := f.drainNote.Swap(draining); was != draining || value != lastValue {
				f.log.Info("drain signal (annotation)", "draining", draining, "value", value,
					"inflight", f.inflight.Load())
			}
			lastValue = value
		}
		select {
		case <-f.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

var errNoFile = errors.New("absent: no annotation drain signal until it appears")

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
