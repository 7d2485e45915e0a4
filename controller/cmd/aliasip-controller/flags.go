package main

import "flag"

// flagSet holds klog's flags apart from the command line.
type flagSet struct{ flag.FlagSet }
