package policies

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"
)

// CAExpiryWarning is how long before a certificate of a CA bundle expires
// it is warned about (the policy's ca_files here, the server
// configuration's by keytrail config check): CA certificates live for
// years and are replaced by hand, so a month's notice.
const CAExpiryWarning = 30 * 24 * time.Hour

// CABundleDates judges the dates of the certificates of a CA bundle (data,
// read from path, already known to hold a certificate) at now. One that has
// expired or is not yet valid verifies nothing: it is in unusable when no
// certificate of the bundle is valid (every TLS connection the bundle
// verifies would fail), else in warnings (another may be the one that
// signs); one that expires within CAExpiryWarning is in warnings. Each
// names the file (quoted when not printable) and the certificate; the
// caller decides what is a problem.
func CABundleDates(path string, data []byte, now time.Time) (unusable, warnings []string) {
	path = Printable(path) // one message, one line
	var bad []string
	valid := 0
	for rest := data; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			continue // the pool skips it too
		}
		name := cert.Subject.CommonName
		if name == "" {
			name = cert.Subject.String()
		}
		switch {
		case now.After(cert.NotAfter):
			bad = append(bad, fmt.Sprintf("%s: certificate %q expired at %s", path, name, cert.NotAfter.UTC().Format(time.RFC3339)))
		case now.Before(cert.NotBefore):
			bad = append(bad, fmt.Sprintf("%s: certificate %q not valid before %s", path, name, cert.NotBefore.UTC().Format(time.RFC3339)))
		default:
			valid++
			if cert.NotAfter.Sub(now) < CAExpiryWarning {
				warnings = append(warnings, fmt.Sprintf("%s: certificate %q expires at %s, in less than %d days", path, name,
					cert.NotAfter.UTC().Format(time.RFC3339), CAExpiryWarning/(24*time.Hour)))
			}
		}
	}
	for _, u := range bad {
		if valid == 0 {
			unusable = append(unusable, u+": no certificate of the bundle is valid now")
		} else {
			warnings = append(warnings, u+": it verifies nothing (remove it)")
		}
	}
	return unusable, warnings
}
