// Command aliasip-cni is aliasip's CNI plugin; the node agent installs it.
package main

import "github.com/aliasip/aliasip/node-agent/cni"

func main() { cni.Main() }
