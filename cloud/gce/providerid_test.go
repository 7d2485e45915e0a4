package gce_test

import (
	"testing"

	"github.com/aliasip/aliasip/cloud"
	"github.com/aliasip/aliasip/cloud/gce"
)

func TestParseProviderID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want cloud.InstanceRef
		ok   bool
	}{
		{"gce://proj/us-central1-a/vm-1", cloud.InstanceRef{Project: "proj", Zone: "us-central1-a", Name: "vm-1"}, true},
		{"gce://proj/zone", cloud.InstanceRef{}, false},
		{"gce://proj//vm", cloud.InstanceRef{}, false},
		{"aws:///us-east-1a/i-123", cloud.InstanceRef{}, false},
		{"", cloud.InstanceRef{}, false},
	} {
		got, err := gce.ParseProviderID(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseProviderID(%q) = %v, %v", tc.in, got, err)
		}
	}
}
