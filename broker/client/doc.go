// Package client is keytrail's workload client: it exchanges a platform
// identity token for a credential at the broker (POST /v1/token, RFC 8693),
// and keeps that credential fresh.
//
// It owns three things and promises the following about them:
//
//   - Client.Exchange performs exactly one exchange. A broker error comes back
//     as *Error carrying the SPEC's OAuth code, the safe description, the
//     request id, the HTTP status and Retry-After; it wraps the matching
//     category sentinel of package broker (errors.Is(err,
//     broker.ErrRateLimited)). IsTransient and IsPermanent say whether
//     retrying can help: besides the broker's own refusals, a broker
//     certificate that does not verify (IsCertificateError), a TLS alert
//     refusing the client's certificate (IsClientCertificateRefused), a
//     plain-HTTP answer to an https address (IsPlainHTTPAnswer), an https
//     server's answer to an http one (ErrHTTPSPort) and a
//     SOCKS5 proxy's refused login or rules are permanent. An HTTP proxy's
//     own answer (a refused CONNECT; to a plain-http broker, an answer
//     without X-Request-Id) is *ProxyError, and a 5xx without X-Request-Id
//     otherwise an *Error with NotBroker (an ingress's, say). Identity
//     tokens and credentials never appear in an error or a log line.
//   - IdentitySource implementations obtain the workload's identity token: a
//     file (FileIdentity, re-read on every exchange since platforms rotate
//     it; the default is the Kubernetes projected token path), an environment
//     variable (EnvIdentity) or the GitHub Actions OIDC endpoint
//     (GitHubActionsIdentity).
//   - Source keeps one grant's credential fresh: it re-exchanges at about two
//     thirds of the TTL with jitter, backs off with jitter on transient
//     failures, never retries earlier than a Retry-After the broker sent,
//     keeps the last valid credential while it retries, and stops on a
//     permanent error or when its context ends. Time (Now, Sleep) and
//     randomness are injectable, so its schedule is testable without real
//     sleeps.
//
// Typical use by a Go workload:
//
//	c, _ := client.New(client.Options{Addr: os.Getenv("KEYTRAIL_ADDR")})
//	src, _ := client.NewSource(client.SourceOptions{
//		Client: c, Grant: "payments-db",
//		Exchange: client.ExchangeOptions{Identity: client.FileIdentity{}},
//	})
//	go src.Run(ctx)
//	cred, err := src.Credential(ctx) // waits for the first one
package client
