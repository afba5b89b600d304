// Package proxy is keytrail's credential-injecting reverse proxy: workloads
// call an upstream API through ANY /v1/proxy/{grant}/{path...} with a
// short-lived proxy credential, and the broker injects the upstream's shared
// secret on the way out, so the workload never holds it and every call is
// attributed to one issuance.
//
// It owns:
//
//   - Minter: the broker.Minter and broker.Revoker of grant kind "proxy". A
//     proxy credential is "ktp_" + 256 random bits (base64url); the broker
//     stores only its fingerprint. Revocation is the issuance's RevokedAt in
//     the store (and blocks), checked on every request: nothing to do at a
//     backend.
//   - Proxy: the handler, mounted by Register through httpapi.Options.Extra.
//
// What every request goes through, in order (the first failure answers,
// through httpapi's one error renderer):
//
//  1. CONNECT is refused (400).
//  2. The credential is taken from "Authorization: Bearer" or
//     "Proxy-Authorization: Bearer" (Authorization's when it is a broker
//     credential, ktp_..., or the only Bearer token: a client may send a
//     placeholder Authorization of its own beside the credential in
//     Proxy-Authorization); missing or unknown: 401 invalid_token.
//  3. The issuance found by its fingerprint must be of kind proxy and for the
//     {grant} of the URL (403), unexpired (401), unrevoked (403), its workload
//     unblocked (403), and the grant must still exist in the policy in force
//     with the workload still allowed it (403).
//  4. The request target must be exactly what a well-behaved client sends:
//     origin-form (no absolute URI), a Host the broker answers on, no Upgrade
//     or HTTP2-Settings (h2c), and a path free of "..", ".", "//", encoded
//     slashes or backslashes, NUL and control bytes, double encoding, escapes
//     that do not decode to valid UTF-8 (overlong "%c0%ae", Latin-1), and
//     segments that are one of these once NFKC-folded (fullwidth "．．")
//     (400).
//     The path is checked on the raw request target, not on a decoded copy.
//  5. The method (403 access_denied, reason method_not_allowed: the grant's
//     policy denies it, like a path it does not list) and the path must be
//     allowed by the grant (403).
//  6. A request body over MaxRequestBytes is refused with 413 before anything
//     goes upstream when its length is declared; a streamed body that grows
//     past the cap is cut off (the upstream sees an incomplete request) and
//     the caller gets 413.
//  7. The workload's rate limit applies (429 with Retry-After): the bucket
//     of its proxy_rate when the policy sets one, else the one its token
//     exchanges take from (rate). Last, as for a token exchange: a request
//     refused by a check above takes nothing from it. Its 429s' deny events
//     are bounded per workload as its exchanges' are (the broker's
//     RefusalLimits.PerIdentity): past them a summary counts the rest.
//  8. The secret is read (503 when it cannot be, and 503 secret_unusable,
//     naming the grant in the log, when it holds a control character other
//     than a tab: no HTTP header can carry one, so the request could never
//     be sent).
//  9. A "use" audit event is made durable; if it cannot be, or is not
//     within the Service's AuditTimeout (a write that hangs), the caller
//     gets 503 and nothing is sent upstream.
//  10. The request goes upstream through httputil.ReverseProxy with Rewrite
//     only (never Director): the caller's Authorization,
//     Proxy-Authorization, Cookie, X-Keytrail-*, X-Request-Id, Forwarded,
//     X-Forwarded-* and X-Real-Ip headers and its trailers (names
//     and values) are removed, the method and URL
//     overrides (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override,
//     X-Original-URL, X-Rewrite-URL) too, Range, If-Range and Request-Range
//     (a ranged response could carry the secret in pieces the response scan
//     cannot recognise), and so is every header whose name
//     contains an underscore (CGI, WSGI and Rack upstreams read X_Request_Id
//     as X-Request-Id; nginx drops such headers by default too). The secret
//     is injected as the grant says, and X-Request-Id: <use id> and
//     X-Keytrail-Issuance: <issuance id> are set. Because this happens in
//     Rewrite, after ReverseProxy removed the hop-by-hop headers, a caller's
//     "Connection: X-Keytrail-Issuance" cannot strip them. Right before
//     the Transport sends it, the instance's in-memory revocation state
//     (broker.Service.KnownRevoked: no store round trip) is asked again: a
//     credential revoked, or its workload blocked, since step 3 (the secret
//     read and the use event take time) is refused with step 3's 403
//     (credential_revoked, workload_blocked) and deny event, nothing is
//     sent, and the use_result event says details.not_sent: true. A
//     request already upstream is cut when the instance's revocation state
//     learns that its credential was revoked or its workload blocked
//     (Proxy.cutRevoked, called by the revocation cache): its upstream
//     context is cancelled, a response under way is aborted (connection
//     cut, as at the response cap), one not answered yet (or whose
//     response had not started to reach the caller: a body being
//     screened) gets step 3's 403, and the use_result event has reason
//     revoked_in_flight.
//  11. A "use_result" audit event records the upstream's status and the
//     bytes of its body relayed (0 included; neither when the upstream sent
//     no response, and never the broker's own error body), the duration, and
//     the upstream's own request id from the well-known response headers
//     (upstreamRequestIDHeaders; bounded, printable, never a value carrying
//     the secret) in details.upstream_request_ids (best effort: the
//     response has been sent; a failure is logged). A caller that goes away
//     before the upstream answers is recorded with status 499 and reason
//     client_gone (and logged at INFO): not an upstream error.
//
// The upstream connection: a Transport per grant (built from the grant's
// ca_file, resolved once per grant and policy: a failure to build it is
// answered 503 upstream_config to every request of that policy without
// reading the file again, until a reload; the first request of a reloaded
// policy drops the transports of the grants it removed), never a proxy from
// the environment, never following redirects (a 3xx goes back to the caller
// unfollowed), with dial, TLS handshake, response header and overall
// timeouts. Its dialer only ever dials the grant's upstream host and port,
// resolves the name itself and refuses loopback, private, link-local,
// unspecified, multicast and other non-public addresses unless the grant says
// allow_private: true; the address checked is the address dialled (no
// re-resolution in between).
//
// Every proxied response is made Cache-Control: private
// (keepOutOfSharedCaches): a shared cache in front of the broker storing
// it would answer later requests with no credential check and no use event.
//
// The secret never reaches the caller through the broker: response headers
// whose value contains it are dropped, upstream trailers
// are dropped (neither announced nor sent, whatever the upstream declared),
// 1xx interim responses are not relayed, and the response body
// is scanned while it streams and every occurrence of the secret is
// overwritten with '*' of the same length (Content-Length stays right).
// An occurrence is the secret with each of its bytes raw, percent-escaped,
// JSON- or JavaScript-escaped (\u00HH, \xHH) or an HTML character reference
// (numeric or named), in any mix (see formSet). The upstream is asked for
// identity encoding so the scan sees plain bytes; a body the upstream
// compresses anyway with gzip (x-gzip) or deflate (zlib, or raw deflate) is
// decoded by the broker, scanned like any body and relayed decoded, without
// Content-Encoding and Content-Length and with its strong ETags made weak,
// its digests of the encoded bytes dropped (HEAD, 204 and 304 responses
// likewise; see weakenETags, dropDigests). A body whose secret is masked
// loses them too when it is found before the headers go out (a body of
// declared length is read and scanned up to 16 KiB first, and on until a
// secret starting in them ends; a streamed one
// sends its headers with its first bytes), and a 304 without
// Content-Encoding relays a strong ETag weak, without digests, when the
// caller's If-None-Match names it only weak (see weakenRevalidatedETags). The response cap counts the decoded bytes (a decompression
// bomb is cut at the cap) and, separately, the bytes read from the
// upstream. Any other Content-Encoding (br, zstd, compress, an unknown
// token, more than one coding) is refused with 502, reason
// response_encoding_unsupported, and a body that does not decode with 502
// response_undecodable (or, once streaming, cut off): the caller never gets
// bytes the scan did not see plain. Data after the end of a deflate stream,
// as after the last gzip member, does not decode (errDataAfterStream,
// errDataAfterMember): it is not dropped unseen; only whitespace (space,
// tab, CR, LF) and NUL bytes after the last gzip member or the deflate
// stream, to the end of the body (a trailing newline, zero padding), are
// read and dropped, as browsers, curl and gzip -d drop them (see
// trailingPad). A body that is gzip or zlib data
// without Content-Encoding is read whole, decoded to be scanned and relayed
// as it came when clean, refused (502 response_contains_secret, or aborted
// when streamed and its headers went out already, as after a streamed
// first chunk that could start a header, "x", which is relayed at once)
// when the secret is inside, and refused when it does not decode (a zlib stream followed by
// a second gzip or zlib stream, or a gzip member by a zlib stream or by
// anything starting 1f, which gzip -d reads on into, included; the members of a gzip body of several are all decoded and
// scanned; other data after a zlib stream or the last gzip member, where
// decoders stop, is relayed and scanned as plain bytes, the secret masked
// there, and refused when the secret is cut between the decoded bytes and
// it, as zcat -f writes them) or decodes to gzip or zlib data again (502
// response_encoding_unsupported: one layer is decoded, besides the
// Content-Encoding's); zip and brotli are not recognised (see gzipGuard).
// Errors the broker
// writes (502 when the upstream cannot be reached or misbehaves, 504 when a
// timeout runs out, over HTTP/1.1 or HTTP/2) never carry upstream error
// text; of them only upstream_error and upstream_timeout carry Retry-After,
// not those a retry cannot change (response_contains_secret,
// response_too_large, response_encoding_unsupported, response_undecodable,
// upstream_address_refused). Responses over MaxResponseBytes are refused (502) when their length
// is declared (not for HEAD, whose response has no body), and cut off
// (connection aborted) when streamed; a body cut off, at the cap or by an error, ends without the
// bytes the scan was still holding back (the start of the secret when the
// cut falls inside it). A streamed body that fails at its first read,
// before anything of the response was sent (ReverseProxy sends a streamed
// response's headers from a timer, which can come later), gets the error
// answer of a failure before the body instead: a connection cut with
// nothing sent looks to an HTTP client like an idle keep-alive connection
// the server closed, and it would send the request again.
//
// Shared use: a credential used from a source address other than the one it
// was issued to (or, when that is unknown, its first use) is recorded once
// per issuance and new address as a shared_use_suspected audit event and
// counted in keytrail_shared_use_suspected_total{grant}. Nobody waits for
// that event: it is queued ahead of the use event and made durable with it
// (so a disk whose writes hang holds the request one AuditTimeout, the use
// event's, in all). The record is per broker instance (held in memory). A proxy request carries no identity
// token, so the session of the caller cannot be observed here; the address
// is the signal.
package proxy
