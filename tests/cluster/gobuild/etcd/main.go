// etcd v3.7.3: the upstream server's own entry point (the go.etcd.io/etcd/v3 root module is not
// installable: it has replace directives; server/v3 is a plain library).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
