package sleep

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	if err := For(context.Background(), 0); err != nil {
		t.Errorf("For(0) = %v", err)
	}
	if err := For(context.Background(), time.Millisecond); err != nil {
		t.Errorf("For(1ms) = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := For(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("For(an hour) on an ended context = %v, want context.Canceled", err)
	}
}
