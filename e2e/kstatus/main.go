// kstatus prints the kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux and
// kpt wait on) of AgentShards read through a kubeconfig: one JSON object per line,
// {"name": "<namespace>/<name>", "status": "Current|InProgress|Failed|...", "message": "..."}.
//
// With --stdin it reads one object (JSON, as `kubectl get -o json` or a server-side dry
// run prints it) from standard input instead, and prints its line.
//
// The scale-agent end-to-end tests build it (cached outside the repository, keyed by
// go.sum and this file) and run it on live shards in each state the operator reports.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster holding the AgentShards")
	namespace := flag.String("namespace", "", "only the AgentShards of this namespace (all when empty)")
	stdin := flag.Bool("stdin", false, "compute the kstatus of the one object on standard input (JSON) instead")
	flag.Parse()
	var err error
	if *stdin {
		err = fromStdin()
	} else {
		err = run(*kubeconfig, *namespace)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("reading the kubeconfig %q: %w", kubeconfig, err)
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	shards := schema.GroupVersionResource{Group: "scaleagent.dev", Version: "v1alpha1", Resource: "agentshards"}
	list, err := client.Resource(shards).Namespace(namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing AgentShards: %w", err)
	}
	out := json.NewEncoder(os.Stdout)
	for i := range list.Items {
		if err := out.Encode(compute(&list.Items[i])); err != nil {
			return err
		}
	}
	return nil
}

func fromStdin() error {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fmt.Errorf("reading standard input: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("reading the object on standard input: %w", err)
	}
	return json.NewEncoder(os.Stdout).Encode(compute(obj))
}

func compute(item *unstructured.Unstructured) line {
	res, err := status.Compute(item)
	l := line{Name: item.GetNamespace() + "/" + item.GetName()}
	if err != nil {
		l.Status, l.Message = "Error", err.Error()
	} else {
		l.Status, l.Message = res.Status.String(), res.Message
	}
	return l
}
