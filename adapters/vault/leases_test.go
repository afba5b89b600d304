package vault

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

// TestPKIMinterNotesBrokerLease: a certificate that comes with a lease (a
// role with generate_lease=true) is noted in Leases, whose Login then
// leaves the tokens its re-logins replace valid: the lease belongs to the
// broker's token, and revoking that token revokes the certificate. One
// without a lease notes nothing.
func TestPKIMinterNotesBrokerLease(t *testing.T) {
	ca := newTestCA(t)
	const spiffe = "spiffe://keytrail/payments-api"
	good := ca.leaf(t, pkiSerial, spiffe, t0.Add(15*time.Minute))
	for _, tc := range []struct {
		name    string
		leaseID string
		want    bool
	}{
		{"ok/lease-noted", "pki/issue/workloads/abc", true},
		{"ok/no-lease-not-noted", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeVault(t, map[string]http.HandlerFunc{pkiIssue: func(w http.ResponseWriter, r *http.Request) {
				reply(w, 200, map[string]any{"lease_id": tc.leaseID, "lease_duration": 900, "data": map[string]any{
					"certificate": good, "private_key": pkiKeyPEM, "private_key_type": "ec",
					"issuing_ca": ca.pem, "ca_chain": []string{ca.pem}, "serial_number": pkiSerial, "expiration": 1,
				}})
			}})
			var logs bytes.Buffer
			leases := new(TokenLeases)
			m, err := NewPKIMinter(PKIMinterOptions{Client: f.client(t), Leases: leases, Log: slog.New(slog.NewJSONHandler(&logs, nil)),
				Grant: func(string) (*policies.Grant, bool) { return nil, false }, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Mint(context.Background(), pkiReq(nil)); err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			if got := leases.Held(); got != tc.want {
				t.Errorf("Leases.Held() = %v, want %v", got, tc.want)
			}
			if warned := strings.Contains(logs.String(), "generate_lease=false"); warned != tc.want {
				t.Errorf("warned = %v, want %v:\n%s", warned, tc.want, logs.String())
			}
		})
	}
}
