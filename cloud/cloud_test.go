package cloud

import (
	"context"
	"errors"
	"fmt"
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
