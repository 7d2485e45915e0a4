package blocksize

import (
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		p  string
		ok bool
	}{
		{"10.0.0.0/24", true}, {"10.0.0.0/30", true}, {"10.0.0.0/31", false}, {"10.0.0.1/32", false},
		{"fd00::/112", true}, {"fd00::/126", true}, {"fd00::/127", false},
	} {
		err := Check(netip.MustParsePrefix(c.p))
		if (err == nil) != c.ok {
			t.Errorf("Check(%s) = %v, want ok=%v", c.p, err, c.ok)
		}
	}
}
