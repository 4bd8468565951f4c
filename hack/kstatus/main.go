// kstatus-judge prints how sigs.k8s.io/cli-utils' kstatus (the library Flux and
// kpt use) judges Kubernetes objects: it reads one JSON object per line on stdin
// and writes {"status": ..., "message": ...} per line. The e2e tests use it to
// check pitstop's Ready/Reconciling/Stalled conditions against the real reader.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		// UnmarshalJSON keeps integers as int64, as kstatus reads generations.
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(in.Bytes()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		res, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		_ = out.Encode(map[string]string{"status": res.Status.String(), "message": res.Message})
	}
}
