// kubectl with its client-side rate limit raised, for the drain benchmark's tuned
// peer (bench/peers.py builds it against the same k8s.io/kubectl release as the
// server; nothing of it is committed but this file).
//
// kubectl has no QPS flag: its REST clients use client-go's defaults, 5 requests/s
// with a burst of 10 (only discovery gets 50/300). This is the kubectl command of
// k8s.io/kubectl, built the way cmd/kubectl builds it, except that its REST config
// takes QPS and Burst from BENCH_KUBECTL_QPS and BENCH_KUBECTL_BURST. Every
// subcommand, flag and default (drain's eviction, 5 s retry after a 429, 1 s
// deletion poll) is kubectl's own.
package main

import (
	"os"
	"strconv"

	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/plugin"
	"k8s.io/kubectl/pkg/cmd/util"
)

func fromEnv(name string, fallback float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return v
	}
	return fallback
}

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck // as cmd/kubectl does
	qps := float32(fromEnv("BENCH_KUBECTL_QPS", 5))
	burst := int(fromEnv("BENCH_KUBECTL_BURST", 10))
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	flags := genericclioptions.NewConfigFlags(true).
		WithDeprecatedPasswordFlag().
		WithDiscoveryBurst(300).
		WithDiscoveryQPS(50.0).
		WithWarningPrinter(streams).
		WithWrapConfigFn(func(c *rest.Config) *rest.Config {
			c.QPS, c.Burst = qps, burst
			return c
		})
	command := cmd.NewDefaultKubectlCommandWithArgs(cmd.KubectlOptions{
		PluginHandler: cmd.NewDefaultPluginHandler(plugin.ValidPluginFilenamePrefixes),
		Arguments:     os.Args,
		ConfigFlags:   flags,
		IOStreams:     streams,
	})
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
