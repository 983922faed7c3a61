package cluster

import (
	"strings"
	"testing"
)

// TestConfigValidate: bad cluster settings are refused with the key named.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // substring of the error; "" = valid
	}{
		{"loopback defaults", func(*Config) {}, ""},
		{"disabled is not checked", func(c *Config) { c.Enabled, c.SecretKey = false, "" }, ""},
		{"no secret", func(c *Config) { c.SecretKey = "" }, "cluster.secret_key: required"},
		{"short secret", func(c *Config) { c.SecretKey = "short" }, "cluster.secret_key: shorter"},
		{"same ports", func(c *Config) { c.GossipAddress, c.DataAddress = ":7946", ":7946" }, "cluster.data_address"},
		{"queue frames", func(c *Config) { c.DataQueueFrames = 0 }, "cluster.data_queue_frames"},
		{"queue bytes", func(c *Config) { c.DataQueueBytes = 10 }, "cluster.data_queue_bytes"},
		{"tls without key and ca", func(c *Config) { c.DataTLS.CertFile = "node.pem" }, "cluster.data_tls.key_file: required"},
		{"tls without ca", func(c *Config) { c.DataTLS = DataTLS{CertFile: "a", KeyFile: "b"} }, "cluster.data_tls.ca_file: required"},
		{"tls complete", func(c *Config) { c.DataTLS = DataTLS{CertFile: "a", KeyFile: "b", CAFile: "c"} }, ""},
		{"tombstone grace", func(c *Config) { c.TombstoneGrace = 0 }, "cluster.tombstone_grace"},
	} {
		c := LoopbackConfig()
		tc.mutate(&c)
		err := c.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
}

// TestDataTLSLoadErrors: unreadable files name the key.
func TestDataTLSLoadErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := DataTLS{CertFile: dir + "/missing.pem", KeyFile: dir + "/missing-key.pem", CAFile: dir + "/ca.pem"}.Load()
	if err == nil || !strings.Contains(err.Error(), "cluster.data_tls.cert_file") {
		t.Errorf("missing certificate: %v", err)
	}
	c := LoopbackConfig()
	c.DataTLS = DataTLS{CertFile: dir + "/missing.pem", KeyFile: dir + "/k.pem", CAFile: dir + "/ca.pem"}
	if _, err := New("n1", c, nil); err == nil || !strings.Contains(err.Error(), "cluster.data_tls") {
		t.Errorf("New with unreadable data_tls files: %v", err)
	}
}
