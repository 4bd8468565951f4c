package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// Config is everything the runtime can be told. Each field has a flag and an
// environment variable (the flag wins); a container sets the environment.
type Config struct {
	Bind      string // address both servers bind ("" = all)
	Port      int    // function requests and /healthz
	AdminPort int    // /metrics, /inflight, /stats, /drain, /undrain

	PodName   string
	Namespace string

	DefaultMS int // how long a request takes without ?ms=
	MaxMS     int // the longest ?ms= accepted

	AnnotationsFile string // downward-API annotations file ("" = no annotation drain signal)
	AnnotationsPoll time.Duration

	DrainingRequests   string // what a request arriving while draining gets: serve | refuse
	ReadyWhileDraining bool   // keep /healthz 200 while draining

	ShutdownDelay   time.Duration // after SIGTERM, keep accepting connections this long
	ShutdownMaxWait time.Duration // from SIGTERM to exit at most (below terminationGracePeriodSeconds)

	ReportAnnotation  bool   // patch pitstop.dev/inflight-tasks on the own pod at every change
	ServiceAccountDir string // token, ca.crt, namespace for ReportAnnotation

	AddrFile string // write the bound addresses here as JSON once listening (tests)
}

const (
	ServeDraining  = "serve"
	RefuseDraining = "refuse"
)

// ParseConfig reads the flags in args over the environment read by getenv.
func ParseConfig(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	var c Config
	var errs []error
	str := func(env, def string) string {
		if v := getenv(env); v != "" {
			return v
		}
		return def
	}
	num := func(env string, def int) int {
		v := getenv(env)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative integer", env, v))
			return def
		}
		return n
	}
	boolean := func(env string, def bool) bool {
		v := getenv(env)
		if v == "" {
			return def
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want true/false/1/0", env, v))
			return def
		}
		return b
	}
	hostname, _ := os.Hostname()

	fs := flag.NewFlagSet("function", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.StringVar(&c.Bind, "bind", str("BIND_ADDRESS", ""), "address to bind, empty for all (env BIND_ADDRESS)")
	fs.IntVar(&c.Port, "port", num("PORT", 8080), "port of function requests and /healthz (env PORT)")
	fs.IntVar(&c.AdminPort, "admin-port", num("ADMIN_PORT", 9100), "port of /metrics, /inflight, /stats, /drain (env ADMIN_PORT)")
	fs.StringVar(&c.PodName, "pod-name", str("POD_NAME", hostname), "the pod's name, named in answers (env POD_NAME)")
	fs.StringVar(&c.Namespace, "namespace", str("POD_NAMESPACE", ""), "the pod's namespace; default: the ServiceAccount's (env POD_NAMESPACE)")
	fs.IntVar(&c.DefaultMS, "default-ms", num("DEFAULT_MS", 100), "milliseconds a request takes without ?ms= (env DEFAULT_MS)")
	fs.IntVar(&c.MaxMS, "max-ms", num("MAX_MS", 300000), "largest ?ms= accepted (env MAX_MS)")
	fs.StringVar(&c.AnnotationsFile, "annotations-file", str("ANNOTATIONS_FILE", "/etc/podinfo/annotations"), "downward-API annotations file, empty to ignore (env ANNOTATIONS_FILE)")
	pollMS := fs.Int("annotations-poll-ms", num("ANNOTATIONS_POLL_MS", 200), "how often the annotations file is read (env ANNOTATIONS_POLL_MS)")
	fs.StringVar(&c.DrainingRequests, "draining-requests", str("DRAINING_REQUESTS", ServeDraining), "a request arriving while draining: serve or refuse (503) (env DRAINING_REQUESTS)")
	fs.BoolVar(&c.ReadyWhileDraining, "ready-while-draining", boolean("READY_WHILE_DRAINING", false), "keep /healthz 200 while draining (env READY_WHILE_DRAINING)")
	delayMS := fs.Int("shutdown-delay-ms", num("SHUTDOWN_DELAY_MS", 0), "after SIGTERM keep accepting connections this long (env SHUTDOWN_DELAY_MS)")
	maxWaitMS := fs.Int("shutdown-max-wait-ms", num("SHUTDOWN_MAX_WAIT_MS", 25000), "from SIGTERM to exit at most; keep it below terminationGracePeriodSeconds (env SHUTDOWN_MAX_WAIT_MS)")
	fs.BoolVar(&c.ReportAnnotation, "report-annotation", boolean("REPORT_ANNOTATION", false), "patch pitstop.dev/inflight-tasks on the own pod at every change (env REPORT_ANNOTATION)")
	fs.StringVar(&c.ServiceAccountDir, "serviceaccount-dir", str("SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"), "token, ca.crt and namespace for -report-annotation (env SERVICEACCOUNT_DIR)")
	fs.StringVar(&c.AddrFile, "addr-file", str("ADDR_FILE", ""), "write the bound addresses as JSON here once listening (env ADDR_FILE)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %v", fs.Args()))
	}
	c.AnnotationsPoll = time.Duration(*pollMS) * time.Millisecond
	c.ShutdownDelay = time.Duration(*delayMS) * time.Millisecond
	c.ShutdownMaxWait = time.Duration(*maxWaitMS) * time.Millisecond
	if c.DrainingRequests != ServeDraining && c.DrainingRequests != RefuseDraining {
		errs = append(errs, fmt.Errorf("draining-requests %q: want serve or refuse", c.DrainingRequests))
	}
	if c.AnnotationsFile != "" && c.AnnotationsPoll <= 0 {
		errs = append(errs, errors.New("annotations-poll-ms must be above 0"))
	}
	if c.DefaultMS > c.MaxMS {
		errs = append(errs, fmt.Errorf("default-ms %d is above max-ms %d", c.DefaultMS, c.MaxMS))
	}
	if c.ShutdownDelay > c.ShutdownMaxWait {
		errs = append(errs, fmt.Errorf("shutdown-delay-ms is above shutdown-max-wait-ms"))
	}
	return c, errors.Join(errs...)
}
