package egress

import (
	"testing"
	"time"
)

// TestParseResyncIntervalFloor: a resyncInterval of a nanosecond is a
// positive duration, but the agent's loop would then re-read the table
// without pause (a core spent on netlink dumps); it is raised to
// MinResyncInterval.
func TestParseResyncIntervalFloor(t *testing.T) {
	for data, want := range map[string]time.Duration{
		"resyncInterval: 1ns\n":   MinResyncInterval,
		"resyncInterval: 999ms\n": MinResyncInterval,
		"resyncInterval: 1s\n":    time.Second,
		"resyncInterval: 90s\n":   90 * time.Second,
	} {
		c, err := Parse([]byte(data), FakeDefaults())
		if err != nil {
			t.Fatalf("Parse(%q): %v", data, err)
		}
		if c.ResyncInterval != want {
			t.Errorf("Parse(%q).ResyncInterval = %v, want %v", data, c.ResyncInterval, want)
		}
	}
}
