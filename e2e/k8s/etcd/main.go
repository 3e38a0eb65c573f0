// Command etcd is upstream etcd's server entry point, built at the version the pinned
// Kubernetes release is tested with (chosen by Go's minimal version selection from
// k8s.io/kubernetes' own requirements).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
