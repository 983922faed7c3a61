package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The embedded default.yaml and DefaultConfig must say the same thing:
// operators read one, the code documents the other.
func TestDefaultYAMLMatchesDefaultConfig(t *testing.T) {
	got, err := Load(Sources{})
	if err != nil {
		t.Fatalf("load embedded defaults: %v", err)
	}
	want := DefaultConfig()
	if err := want.Validate(); err != nil { // fills node.name from the host name
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("configs/default.yaml and DefaultConfig differ:\nyaml: %+v\ngo:   %+v", got, want)
	}
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadLayers(t *testing.T) {
	yml := writeFile(t, "n.yaml", `
node: {name: n1}
mqtt:
  listeners: [{type: tcp, address: "127.0.0.1:1999"}]
  max_packet_size: 2048
  connect_timeout: 3s
`)
	toml := writeFile(t, "n.toml", `
[node]
name = "t1"
[mqtt]
max_packet_size = 4096
`)
	tests := []struct {
		name  string
		src   Sources
		check func(t *testing.T, c Config)
	}{
		{"yaml file", Sources{File: yml}, func(t *testing.T, c Config) {
			if c.Node.Name != "n1" || c.MQTT.MaxPacketSize != 2048 || c.MQTT.ConnectTimeout != 3*time.Second ||
				c.MQTT.Listeners[0].Address != "127.0.0.1:1999" {
				t.Fatalf("file not applied: %+v", c)
			}
			if c.Admin.Address != "127.0.0.1:8080" {
				t.Fatalf("default lost: admin.address=%q", c.Admin.Address)
			}
		}},
		{"toml file", Sources{File: toml}, func(t *testing.T, c Config) {
			if c.Node.Name != "t1" || c.MQTT.MaxPacketSize != 4096 {
				t.Fatalf("toml not applied: %+v", c)
			}
		}},
		{"env over file", Sources{File: yml, Environ: []string{
			"MENDMQ_MQTT__MAX_PACKET_SIZE=65536", "MENDMQ_NODE__NAME=fromenv", "MENDMQ_AUTH__ALLOW_ANONYMOUS=false",
			"UNRELATED=1",
		}}, func(t *testing.T, c Config) {
			if c.MQTT.MaxPacketSize != 65536 || c.Node.Name != "fromenv" || c.Auth.AllowAnonymous {
				t.Fatalf("env not applied: %+v", c)
			}
			if c.MQTT.ConnectTimeout != 3*time.Second {
				t.Fatalf("file value lost under env: %v", c.MQTT.ConnectTimeout)
			}
		}},
		{"ctl's variables are not keys", Sources{Environ: []string{"MENDMQ_ADMIN=http://127.0.0.1:8080", "MENDMQ_ADMIN_TOKEN_FILE=/x",
			"MENDMQ_ADMIN_CA_FILE=/x", "MENDMQ_ADMIN_CERT_FILE=/x", "MENDMQ_ADMIN_KEY_FILE=/x", "MENDMQ_ADMIN__ADDRESS=127.0.0.1:9"}},
			func(t *testing.T, c Config) {
				if c.Admin.Address != "127.0.0.1:9" || c.Admin.TokenFile != "" {
					t.Fatalf("admin: %+v", c.Admin)
				}
			}},
		{"set over env", Sources{Environ: []string{"MENDMQ_NODE__NAME=fromenv"}, Sets: []string{"node.name=fromflag", "mqtt.sys_interval=2s"}},
			func(t *testing.T, c Config) {
				if c.Node.Name != "fromflag" || c.MQTT.SysInterval != 2*time.Second {
					t.Fatalf("--set not applied: %+v", c)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoadErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name string
		src  Sources
		want []string // substrings the error must contain
	}{
		{"unknown key in file", Sources{File: writeFile(t, "a.yaml", "mqtt:\n  max_pakcet_size: 10\n")},
			[]string{"a.yaml", "mqtt", "max_pakcet_size"}},
		{"unknown top-level key", Sources{File: writeFile(t, "b.yaml", "clusterr: {}\n")}, []string{"clusterr"}},
		{"wrong type", Sources{File: writeFile(t, "c.yaml", "mqtt:\n  max_packet_size: lots\n")},
			[]string{"mqtt.max_packet_size"}},
		{"list where string", Sources{File: writeFile(t, "d.yaml", "node:\n  name: [a, b]\n")}, []string{"node.name"}},
		{"bad duration", Sources{Environ: []string{"MENDMQ_MQTT__CONNECT_TIMEOUT=soon"}}, []string{"mqtt.connect_timeout", "MENDMQ_"}},
		{"unknown env key", Sources{Environ: []string{"MENDMQ_MQTT__NOPE=1"}}, []string{"nope"}},
		{"bad --set", Sources{Sets: []string{"novalue"}}, []string{"key=value"}},
		{"missing cert file", Sources{File: writeFile(t, "e.yaml",
			"mqtt:\n  listeners:\n    - {type: tls, address: \":8883\", cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n")},
			[]string{"mqtt.listeners[0].cert_file", "/nonexistent/c.pem", "mqtt.listeners[0].key_file"}},
		{"tls without cert", Sources{File: writeFile(t, "f.yaml", "mqtt:\n  listeners:\n    - {type: tls, address: \":8883\"}\n")},
			[]string{"mqtt.listeners[0].cert_file", "required"}},
		{"bad listener type", Sources{File: writeFile(t, "g.yaml", "mqtt:\n  listeners:\n    - {type: quic, address: \":1\"}\n")},
			[]string{"mqtt.listeners[0].type", "quic"}},
		{"bad address", Sources{Sets: []string{"admin.address=localhost"}}, []string{"admin.address"}},
		{"server keep-alive not whole seconds", Sources{Sets: []string{"mqtt.server_keep_alive=1500ms"}}, []string{"mqtt.server_keep_alive", "whole seconds"}},
		{"server keep-alive too long", Sources{Sets: []string{"mqtt.server_keep_alive=20h"}}, []string{"mqtt.server_keep_alive", "65535s"}},
		{"server keep-alive negative", Sources{Sets: []string{"mqtt.server_keep_alive=-1s"}}, []string{"mqtt.server_keep_alive"}},
		{"server keep-alive without a unit", Sources{File: writeFile(t, "k.yaml", "mqtt:\n  server_keep_alive: 60\n")}, []string{"mqtt.server_keep_alive", "60s"}},
		{"bad log level", Sources{Sets: []string{"log.level=loud"}}, []string{"log.level", "loud"}},
		{"map without the cluster", Sources{Sets: []string{"maps.orders.merge_policy=discard"}}, []string{"maps.orders", "cluster.enabled"}},
		{"bad acl", Sources{File: writeFile(t, "h.yaml", "auth:\n  acl:\n    - {filter: \"a/#/b\", access: all}\n")},
			[]string{"auth.acl[0].access", "auth.acl[0].filter"}},
		{"plaintext password", Sources{File: writeFile(t, "i.yaml", "auth:\n  users:\n    - {username: u, password_hash: secret}\n")},
			[]string{"auth.users[0].password_hash", "bcrypt"}},
		{"cluster without secret", Sources{Sets: []string{"cluster.enabled=true"}}, []string{"cluster.secret_key", "required"}},
		{"short cluster secret", Sources{Sets: []string{"cluster.enabled=true", "cluster.secret_key=short"}}, []string{"cluster.secret_key", "16 bytes"}},
		{"missing file", Sources{File: "/nonexistent/mendmq.yaml"}, []string{"/nonexistent/mendmq.yaml"}},
		{"admin on all interfaces without auth", Sources{Sets: []string{"admin.address=0.0.0.0:8080"}},
			[]string{"admin.address", "not a loopback address", "admin.token_file", "admin.tls.client_ca_file", "127.0.0.1"}},
		{"admin on an empty host without auth", Sources{Sets: []string{"admin.address=:8080"}}, []string{"admin.address", "admin.token_file"}},
		{"admin on a LAN address without auth", Sources{Sets: []string{"admin.address=10.1.2.3:8080"}}, []string{"admin.address", "admin.token_file"}},
		{"admin on a host name without auth", Sources{Sets: []string{"admin.address=mendmq-0.mendmq:8080"}}, []string{"admin.address"}},
		{"admin TLS without client CA is not auth", Sources{Sets: []string{"admin.address=0.0.0.0:8080",
			"admin.tls.cert_file=" + writeFile(t, "c.pem", "x"), "admin.tls.key_file=" + writeFile(t, "k.pem", "x")}}, []string{"admin.address"}},
		{"missing token file", Sources{Sets: []string{"admin.token_file=/nonexistent/token"}}, []string{"admin.token_file", "/nonexistent/token"}},
		{"short token", Sources{Sets: []string{"admin.token_file=" + writeFile(t, "short", "abc\n")}}, []string{"admin.token_file", "16 bytes"}},
		{"cert without key", Sources{Sets: []string{"admin.tls.cert_file=" + writeFile(t, "c2.pem", "x")}}, []string{"admin.tls.cert_file", "both"}},
		{"client CA without cert", Sources{Sets: []string{"admin.tls.client_ca_file=" + writeFile(t, "ca.pem", "x")}}, []string{"admin.tls.client_ca_file"}},
		{"syntax error", Sources{File: writeFile(t, "j.yaml", "mqtt: [unclosed\n")}, []string{"j.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.src)
			if err == nil {
				t.Fatal("Load accepted bad input")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestValidFilter(t *testing.T) {
	for f, ok := range map[string]bool{
		"a/b": true, "a/+/c": true, "#": true, "a/#": true, "+": true, "/": true,
		"": false, "a/#/b": false, "a/b#": false, "a+/b": false, "#/a": false,
	} {
		if err := ValidFilter(f); (err == nil) != ok {
			t.Errorf("ValidFilter(%q) = %v, want ok=%v", f, err, ok)
		}
	}
}

// configs/reference.yaml documents every key with its default: loading it
// must give exactly the defaults, so it cannot drift from the code.
func TestReferenceYAMLIsTheDefaults(t *testing.T) {
	got, err := Load(Sources{File: "../../configs/reference.yaml"})
	if err != nil {
		t.Fatalf("reference.yaml does not load: %v", err)
	}
	want, err := Load(Sources{})
	if err != nil {
		t.Fatal(err)
	}
	got.Plugins.BaseDir = ""
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("configs/reference.yaml differs from the defaults:\nref:      %+v\ndefaults: %+v", got, want)
	}
}

// An admin server off loopback starts when a token or mutual TLS
// authenticates its requests; on loopback it needs neither.
func TestAdminAuthAllowsNonLoopback(t *testing.T) {
	tok := writeFile(t, "token", "0123456789abcdef0123\n")
	ca := writeFile(t, "ca.pem", "x")
	cert, key := writeFile(t, "c.pem", "x"), writeFile(t, "k.pem", "x")
	for name, sets := range map[string][]string{
		"loopback":           {"admin.address=127.0.0.1:8080"},
		"localhost":          {"admin.address=localhost:8080"},
		"ipv6 loopback":      {"admin.address=[::1]:8080"},
		"disabled":           {"admin.address="},
		"token":              {"admin.address=0.0.0.0:8080", "admin.token_file=" + tok},
		"mutual TLS":         {"admin.address=0.0.0.0:8080", "admin.tls.cert_file=" + cert, "admin.tls.key_file=" + key, "admin.tls.client_ca_file=" + ca},
		"token over TLS too": {"admin.address=:8080", "admin.token_file=" + tok, "admin.tls.cert_file=" + cert, "admin.tls.key_file=" + key},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Load(Sources{Sets: sets}); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}
