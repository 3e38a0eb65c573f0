// informer runs a client-go shared informer (client-go's own reflector: since 0.35 it
// lists with a streaming watch, sendInitialEvents=true) on the ConfigMaps of one
// namespace, through a kubeconfig, and prints what it sees, one JSON object per line:
//
//	{"event":"start","watchListClient":true}
//	{"event":"synced","names":["a","b"]}      once the informer has synced
//	{"event":"added|updated|deleted","name":"x","resourceVersion":"123"}
//	{"event":"request","verb":"list|watch|watchlist","resourceVersion":"12","code":200}
//
// (one "request" line per HTTP request the informer made, once its answer began or
// failed, code 0 for no answer: a "list" or a "watchlist" is a relist).
//
// It runs until its standard input closes or -for passes. The scale-agent end-to-end
// tests build it (cached outside the repository, keyed by go.sum) and run it through
// the hub's Kubernetes API.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

type line struct {
	Event           string   `json:"event"`
	Name            string   `json:"name,omitempty"`
	ResourceVersion string   `json:"resourceVersion,omitempty"`
	Names           []string `json:"names,omitempty"`
	WatchList       *bool    `json:"watchListClient,omitempty"`
	Verb            string   `json:"verb,omitempty"`
	Code            *int     `json:"code,omitempty"`
}

// requests prints a "request" line for every request it carries.
type requests struct {
	next  http.RoundTripper
	print func(line)
}

func (p requests) RoundTrip(r *http.Request) (*http.Response, error) {
	q := r.URL.Query()
	verb := "list"
	if w := q.Get("watch"); w == "true" || w == "1" {
		verb = "watch"
		if q.Get("sendInitialEvents") == "true" {
			verb = "watchlist"
		}
	}
	resp, err := p.next.RoundTrip(r)
	code := 0
	if err == nil {
		code = resp.StatusCode
	}
	p.print(line{Event: "request", Verb: verb, ResourceVersion: q.Get("resourceVersion"), Code: &code})
	return resp, err
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig to reach the API through")
	kubeContext := flag.String("context", "", "the kubeconfig's context (its current one when empty)")
	namespace := flag.String("namespace", "default", "the namespace whose ConfigMaps are watched")
	runFor := flag.Duration("for", 2*time.Minute, "how long to run at most")
	flag.Parse()
	if err := run(*kubeconfig, *kubeContext, *namespace, *runFor); err != nil {
		fmt.Fprintln(os.Stderr, "informer:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, kubeContext, namespace string, runFor time.Duration) error {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: kubeContext}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return fmt.Errorf("reading the kubeconfig %q: %w", kubeconfig, err)
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	print := func(l line) {
		mu.Lock()
		defer mu.Unlock()
		_ = out.Encode(l)
	}
	cfg.Wrap(func(next http.RoundTripper) http.RoundTripper { return requests{next, print} })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	watchList := clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient)
	print(line{Event: "start", WatchList: &watchList})

	ctx, cancel := context.WithTimeout(context.Background(), runFor)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	informer := factory.Core().V1().ConfigMaps().Informer()
	var synced atomic.Bool
	report := func(event string, obj interface{}) {
		if cm, ok := obj.(*corev1.ConfigMap); ok && synced.Load() {
			print(line{Event: event, Name: cm.Name, ResourceVersion: cm.ResourceVersion})
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { report("added", obj) },
		UpdateFunc: func(_, obj interface{}) { report("updated", obj) },
		DeleteFunc: func(obj interface{}) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			report("deleted", obj)
		},
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("the informer did not sync within %s", runFor)
	}
	var names []string
	for _, obj := range informer.GetStore().List() {
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			names = append(names, cm.Name)
		}
	}
	sort.Strings(names)
	// Events delivered before this point belong to the initial sync; later ones are
	// changes.
	synced.Store(true)
	print(line{Event: "synced", Names: names})
	<-ctx.Done()
	factory.Shutdown()
	return nil
}
