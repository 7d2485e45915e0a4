package cni

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConf(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code uint
	}{
		{`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni","socket":"/run/a.sock"}`, 0},
		{`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni"}`, types.ErrInvalidNetworkConfig},
		{`{"socket": 5}`, types.ErrDecodingFailure},
		{`not json`, types.ErrDecodingFailure},
	} {
		conf, err := parseConf([]byte(tc.in))
		var te *types.Error
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.code == 0 && conf.TimeoutSeconds != 10:
			t.Errorf("%s: default timeout %d", tc.in, conf.TimeoutSeconds)
		case tc.code != 0 && (!errors.As(err, &te) || te.Code != tc.code):
			t.Errorf("%s: %v, want CNI code %d", tc.in, err, tc.code)
		}
	}
}

// FuzzParseConf: any bytes give a config with a socket or a CNI error,
// never a panic.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"aliasip","type":"aliasip-cni","socket":"/run/a.sock","prevResult":{"ips":[]}}`))
	f.Add([]byte(`{"socket":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseConf(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("not a CNI error: %v", err)
			}
			return
		}
		if conf.Socket == "" || conf.TimeoutSeconds <= 0 {
			t.Fatalf("accepted %+v", conf)
		}
	})
}
