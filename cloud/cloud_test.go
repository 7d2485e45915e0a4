package cloud

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestCode(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                      "ok",
		fmt.Errorf("x: %w", ErrRateLimited):      "rate_limited",
		fmt.Errorf("x: %w", ErrUnavailable):      "unavailable",
		fmt.Errorf("x: %w", ErrRangeConflict):    "conflict",
		fmt.Errorf("x: %w", ErrNoSecondaryRange): "no_secondary_range",
		context.Canceled:                         "canceled",
		errors.New("boom"):                       "error",
	} {
		if got := Code(err); got != want {
			t.Errorf("Code(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestSubprefix(t *testing.T) {
	for _, tc := range []struct {
		parent string
		bits   int
		i      uint64
		want   string // "" for an error
	}{
		{"fd20:1:2:3::/64", 96, 0, "fd20:1:2:3::/96"},
		{"fd20:1:2:3::/64", 96, 1, "fd20:1:2:3:0:1::/96"},
		{"fd20:1:2:3::/64", 96, 0xffffffff, "fd20:1:2:3:ffff:ffff::/96"},
		{"fd20:1:2:3::/64", 96, 1 << 32, ""},
		{"fd20:1:2:3:0:5::/96", 112, 2, "fd20:1:2:3:0:5:2:0/112"},
		{"fd20:1:2:3::1/64", 96, 2, "fd20:1:2:3:0:2::/96"}, // parent masked first
		{"fd20::/20", 48, 1, "fd20:0:1::/48"},
		{"10.64.0.0/14", 24, 3, "10.64.3.0/24"},
		{"fd20:1:2:3::/64", 48, 0, ""},
		{"fd20:1:2:3::/64", 129, 0, ""},
		{"10.64.0.0/14", 33, 0, ""},
	} {
		got, err := Subprefix(netip.MustParsePrefix(tc.parent), tc.bits, tc.i)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("Subprefix(%s, %d, %d) = %v, want an error", tc.parent, tc.bits, tc.i, got)
		case tc.want != "" && (err != nil || got != netip.MustParsePrefix(tc.want)):
			t.Errorf("Subprefix(%s, %d, %d) = %v, %v, want %s", tc.parent, tc.bits, tc.i, got, err, tc.want)
		}
	}
}
