package cloud

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestParseProviderID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want InstanceRef
		ok   bool
	}{
		{"gce://proj/us-central1-a/vm-1", InstanceRef{"proj", "us-central1-a", "vm-1"}, true},
		{"gce://proj/zone", InstanceRef{}, false},
		{"gce://proj//vm", InstanceRef{}, false},
		{"aws:///us-east-1a/i-123", InstanceRef{}, false},
		{"", InstanceRef{}, false},
	} {
		got, err := ParseProviderID(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseProviderID(%q) = %v, %v", tc.in, got, err)
		}
	}
}

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
