package trace

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// Vault audit log entries (Vault's file audit device, one JSON object a
// line). Only requests are counted: every request also has a response entry
// carrying the same auth block.

// MaxVaultLineBytes bounds one Vault audit line read. Longer lines (only
// responses are that long: a LIST of every token accessor, large secrets'
// HMACs) are skipped and counted as malformed.
const MaxVaultLineBytes = 16 << 20

// maxPaths is how many distinct request paths a group keeps as examples.
const maxPaths = 5

// MaxVaultEntries caps Result.Vault (Result.VaultTotal counts them all).
const MaxVaultEntries = 1000

// VaultEntry is the part of a Vault audit entry trace uses. Nothing in it
// is a secret: client tokens are never read, and the accessor is kept only
// when the device logs it in clear (hmac_accessor=false).
type VaultEntry struct {
	Line          int       `json:"line"`
	Time          time.Time `json:"time"`
	Type          string    `json:"type"` // "request" or "response"
	RequestID     string    `json:"request_id,omitempty"`
	Operation     string    `json:"operation,omitempty"`
	Path          string    `json:"path,omitempty"`
	RemoteAddress string    `json:"remote_address,omitempty"`
	DisplayName   string    `json:"display_name,omitempty"`
	Accessor      string    `json:"accessor,omitempty"` // "" when HMAC'd
	// Metadata fields keytrail sets on the tokens it mints.
	IssuanceID string `json:"issuance_id,omitempty"`
	Workload   string `json:"workload,omitempty"`
	Root       bool   `json:"root,omitempty"`     // made with a root token
	NoToken    bool   `json:"no_token,omitempty"` // unauthenticated (sys/health, logins)
}

type vaultLine struct {
	Time string `json:"time"`
	Type string `json:"type"`
	Auth *struct {
		ClientToken string            `json:"client_token"`
		Accessor    string            `json:"accessor"`
		DisplayName string            `json:"display_name"`
		Policies    []string          `json:"policies"`
		Metadata    map[string]string `json:"metadata"`
	} `json:"auth"`
	Request *struct {
		ID                  string `json:"id"`
		Operation           string `json:"operation"`
		Path                string `json:"path"`
		RemoteAddress       string `json:"remote_address"`
		ClientToken         string `json:"client_token"`
		ClientTokenAccessor string `json:"client_token_accessor"`
	} `json:"request"`
}

// ParseVaultLine reads one line of Vault's file audit device. Unknown
// fields are ignored (Vault adds fields between versions); the line must be
// one JSON object with a type.
func ParseVaultLine(b []byte) (*VaultEntry, error) {
	e, _, err := parseVaultLine(b)
	return e, err
}

// parseVaultLine is ParseVaultLine, and also returns the values of the
// entry an auditor may copy from it: the request id and the tokens and
// accessors as the device wrote them (HMAC'd by default). They are only
// compared, never kept or shown.
func parseVaultLine(b []byte) (*VaultEntry, []string, error) {
	var carries []string
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, nil, errors.New("trace: vault audit line: not a JSON object")
	}
	var l vaultLine
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, nil, fmt.Errorf("trace: vault audit line: %w", err)
	}
	if l.Type == "" {
		return nil, nil, errors.New("trace: vault audit line: no type")
	}
	e := &VaultEntry{Type: l.Type}
	if t, err := time.Parse(time.RFC3339Nano, l.Time); err == nil {
		e.Time = t.UTC()
	}
	if r := l.Request; r != nil {
		e.RequestID, e.Operation, e.Path, e.RemoteAddress = r.ID, r.Operation, r.Path, r.RemoteAddress
		if clearAccessor(r.ClientTokenAccessor) {
			e.Accessor = r.ClientTokenAccessor
		}
		carries = append(carries, r.ID, r.ClientToken, r.ClientTokenAccessor)
	}
	a := l.Auth
	if a == nil || (a.ClientToken == "" && a.Accessor == "" && a.DisplayName == "" && len(a.Policies) == 0) {
		e.NoToken = true
		return e, carries, nil
	}
	carries = append(carries, a.ClientToken, a.Accessor)
	if clearAccessor(a.Accessor) {
		e.Accessor = a.Accessor
	}
	e.DisplayName = a.DisplayName
	e.IssuanceID = a.Metadata["issuance_id"]
	e.Workload = a.Metadata["workload"]
	e.Root = slices.Contains(a.Policies, "root")
	return e, carries, nil
}

// clearAccessor reports whether a is an accessor in clear (not the HMAC the
// audit device writes by default).
func clearAccessor(a string) bool {
	return a != "" && !strings.HasPrefix(a, "hmac-sha256:")
}

// Resolver finds issuances for Vault audit entries. Index implements it.
type Resolver interface {
	// ByIssuanceID returns the issuance with this id, or nil.
	ByIssuanceID(id string) *broker.Issuance
	// ByAccessor returns the issuance of the Vault token with this
	// accessor, or nil.
	ByAccessor(accessor string) *broker.Issuance
}

// ByIssuanceID implements Resolver: only issuances whose issue event the
// index holds.
func (x *Index) ByIssuanceID(id string) *broker.Issuance {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, r := range x.live(x.keys[id]) {
		if ev := x.ev(r); ev.Type == "issue" && ev.IssuanceID == id {
			return issuanceOf(ev)
		}
	}
	return nil
}

// ByAccessor implements Resolver.
func (x *Index) ByAccessor(accessor string) *broker.Issuance {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, r := range x.live(x.keys[accessor]) {
		if ev := x.ev(r); r.kind == KindAccessor && ev.Type == "issue" {
			return issuanceOf(ev)
		}
	}
	return nil
}

// Attribution is one issuance and the Vault requests made with its token.
type Attribution struct {
	IssuanceID string    `json:"issuance_id"`
	Workload   string    `json:"workload"`
	Owner      string    `json:"owner"`
	SessionID  string    `json:"session_id"`
	Grant      string    `json:"grant"`
	By         string    `json:"by"` // "metadata", "accessor" or "metadata+accessor"
	Requests   int       `json:"requests"`
	First      time.Time `json:"first"`
	Last       time.Time `json:"last"`
	Paths      []string  `json:"paths"` // up to 5 distinct "operation path"
}

// Gap is a group of Vault requests no keytrail issuance explains, by token
// display name and accessor.
type Gap struct {
	DisplayName string `json:"display_name"`
	Accessor    string `json:"accessor,omitempty"`
	// Reason: "not_keytrail" (a token keytrail did not mint),
	// "unknown_issuance" (the token claims a keytrail issuance that no
	// audit record shows), "accessor_mismatch" (the metadata names an
	// issuance recorded with another accessor).
	Reason     string    `json:"reason"`
	IssuanceID string    `json:"issuance_id,omitempty"` // the claimed one
	Requests   int       `json:"requests"`
	First      time.Time `json:"first"`
	Last       time.Time `json:"last"`
	Paths      []string  `json:"paths"`
}

// Gap reasons.
const (
	GapNotKeytrail      = "not_keytrail"
	GapUnknownIssuance  = "unknown_issuance"
	GapAccessorMismatch = "accessor_mismatch"
)

// VaultReport is the resolution of a whole Vault audit log.
type VaultReport struct {
	Lines        int           `json:"lines"`
	Malformed    int           `json:"malformed"`
	Requests     int           `json:"requests"`   // request entries
	Attributed   int           `json:"attributed"` // requests explained by an issuance
	Root         int           `json:"root"`       // requests made with a root token (not gaps)
	NoToken      int           `json:"no_token"`   // unauthenticated requests (not gaps)
	Attributions []Attribution `json:"attributions"`
	Gaps         []Gap         `json:"gaps"`
}

// GapRequests counts the requests in gaps.
func (r *VaultReport) GapRequests() int {
	n := 0
	for _, g := range r.Gaps {
		n += g.Requests
	}
	return n
}

// ResolveVaultLog reads Vault's audit log and attributes every request made
// with a token to its keytrail issuance: through the token metadata
// (issuance_id) and, where the device logs accessors in clear, the
// accessor. Requests made with a root token and unauthenticated requests
// are counted but are not gaps; every other request no issuance explains is
// a gap, grouped by display name and accessor.
func ResolveVaultLog(r io.Reader, res Resolver) (*VaultReport, error) {
	rep := &VaultReport{Attributions: []Attribution{}, Gaps: []Gap{}}
	attr := map[string]*Attribution{}
	gaps := map[string]*Gap{}
	err := eachVaultEntry(r, rep, func(e *VaultEntry, _ []string) {
		if e.Type != "request" {
			return
		}
		rep.Requests++
		switch {
		case e.NoToken:
			rep.NoToken++
			return
		case e.Root:
			rep.Root++
			return
		}
		is, by, reason := resolveEntry(e, res)
		if is != nil {
			rep.Attributed++
			a := attr[is.ID]
			if a == nil {
				a = &Attribution{IssuanceID: is.ID, Workload: is.Workload, Owner: is.Owner, SessionID: is.SessionID, Grant: is.Grant, By: by}
				attr[is.ID] = a
			} else if a.By != by && !strings.Contains(a.By, "+") {
				a.By = "metadata+accessor"
			}
			a.Requests++
			a.First, a.Last = span(a.First, a.Last, e.Time)
			a.Paths = addPath(a.Paths, e)
			return
		}
		key := e.DisplayName + "\x00" + e.Accessor + "\x00" + reason
		g := gaps[key]
		if g == nil {
			g = &Gap{DisplayName: e.DisplayName, Accessor: e.Accessor, Reason: reason, IssuanceID: e.IssuanceID}
			gaps[key] = g
		}
		g.Requests++
		g.First, g.Last = span(g.First, g.Last, e.Time)
		g.Paths = addPath(g.Paths, e)
	})
	for _, a := range attr {
		rep.Attributions = append(rep.Attributions, *a)
	}
	sort.Slice(rep.Attributions, func(i, j int) bool {
		a, b := rep.Attributions[i], rep.Attributions[j]
		if !a.First.Equal(b.First) {
			return a.First.Before(b.First)
		}
		return a.IssuanceID < b.IssuanceID
	})
	for _, g := range gaps {
		rep.Gaps = append(rep.Gaps, *g)
	}
	sort.Slice(rep.Gaps, func(i, j int) bool {
		a, b := rep.Gaps[i], rep.Gaps[j]
		if a.Requests != b.Requests {
			return a.Requests > b.Requests
		}
		return a.DisplayName+a.Accessor < b.DisplayName+b.Accessor
	})
	return rep, err
}

// resolveEntry finds the issuance of one entry, or says why there is none.
func resolveEntry(e *VaultEntry, res Resolver) (is *broker.Issuance, by, reason string) {
	if e.IssuanceID != "" {
		is = res.ByIssuanceID(e.IssuanceID)
		switch {
		case is == nil:
			// The accessor may still name a known issuance (metadata
			// edited on a copied token cannot happen, but be exact).
		case e.Accessor != "" && is.Refs.Accessor != "" && e.Accessor != is.Refs.Accessor:
			return nil, "", GapAccessorMismatch
		default:
			return is, "metadata", ""
		}
	}
	if e.Accessor != "" {
		if is = res.ByAccessor(e.Accessor); is != nil {
			if e.IssuanceID != "" && e.IssuanceID != is.ID {
				return nil, "", GapAccessorMismatch
			}
			return is, "accessor", ""
		}
	}
	if e.IssuanceID != "" || strings.HasPrefix(e.DisplayName, "keytrail-") || strings.HasPrefix(e.DisplayName, "token-keytrail-") {
		return nil, "", GapUnknownIssuance
	}
	return nil, "", GapNotKeytrail
}

// VaultEntriesFor lists the request entries of Vault's audit log made with
// the credential of is (by metadata issuance_id or clear accessor), the
// first MaxVaultEntries of them, and counts them all (total): a caller
// says so when total is more than it lists.
func VaultEntriesFor(r io.Reader, is *broker.Issuance) (entries []VaultEntry, total int, err error) {
	rep := &VaultReport{}
	err = eachVaultEntry(r, rep, func(e *VaultEntry, _ []string) {
		if e.Type != "request" {
			return
		}
		if e.IssuanceID == is.ID || (e.Accessor != "" && e.Accessor == is.Refs.Accessor) {
			total++
			if len(entries) < MaxVaultEntries {
				entries = append(entries, *e)
			}
		}
	})
	return entries, total, err
}

// VaultRefs reads Vault's audit log for the entries that carry value (a
// request id, or a token or accessor as the device wrote it: HMAC'd by
// default, "hmac-sha256:...") and returns what names their token's
// issuance, in order of first appearance, each once: the token metadata's
// issuance_id, else the accessor when it is in clear. Both the request and
// the response entries are read: the response of auth/token/create carries
// the new token, so the request id of a token's creation names it too. An
// entry made with a token keytrail did not mint names nothing.
func VaultRefs(r io.Reader, value string) ([]string, error) {
	value = Unwrap(value)
	var out []string
	rep := &VaultReport{}
	err := eachVaultEntry(r, rep, func(e *VaultEntry, carries []string) {
		if value == "" || !slices.Contains(carries, value) {
			return
		}
		ref := e.IssuanceID
		if ref == "" && !e.Root {
			ref = e.Accessor
		}
		if ref != "" && !slices.Contains(out, ref) {
			out = append(out, ref)
		}
	})
	return out, err
}

// eachVaultEntry calls fn with each entry of Vault's audit log. A line
// longer than MaxVaultLineBytes is skipped and counted as malformed without
// being held in memory: only request entries are used, and such a line is
// a response (a LIST of every token accessor, say).
func eachVaultEntry(r io.Reader, rep *VaultReport, fn func(*VaultEntry, []string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte // the current line, when longer than br's buffer
	n := 0         // bytes of the current line read so far
	for {
		frag, err := br.ReadSlice('\n')
		n += len(frag)
		if errors.Is(err, bufio.ErrBufferFull) {
			if n <= MaxVaultLineBytes {
				buf = appendLine(buf, frag)
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("trace: read vault audit log (line %d): %w", rep.Lines+1, err)
		}
		if n == 0 {
			return nil // the end, after a newline
		}
		rep.Lines++
		size := n
		if err == nil {
			size-- // the newline
		}
		line := frag
		if size <= MaxVaultLineBytes && len(buf) > 0 {
			buf = appendLine(buf, frag)
			line = buf
		}
		switch {
		case size > MaxVaultLineBytes:
			rep.Malformed++
		case len(bytes.TrimSpace(line)) == 0:
		default:
			if e, carries, perr := parseVaultLine(line); perr != nil {
				rep.Malformed++
			} else {
				e.Line = rep.Lines
				fn(e, carries)
			}
		}
		buf, n = buf[:0], 0
		if err != nil {
			return nil // the end, after a last line without its newline
		}
	}
}

// appendLine appends frag to the line in buf, doubling buf's capacity as
// needed up to the longest line with its newline (MaxVaultLineBytes+1).
func appendLine(buf, frag []byte) []byte {
	if need := len(buf) + len(frag); need > cap(buf) {
		nb := make([]byte, len(buf), min(max(2*cap(buf), need), max(MaxVaultLineBytes+1, need)))
		copy(nb, buf)
		buf = nb
	}
	return append(buf, frag...)
}

func span(first, last, t time.Time) (time.Time, time.Time) {
	if t.IsZero() {
		return first, last
	}
	if first.IsZero() || t.Before(first) {
		first = t
	}
	if t.After(last) {
		last = t
	}
	return first, last
}

func addPath(paths []string, e *VaultEntry) []string {
	p := strings.TrimSpace(e.Operation + " " + e.Path)
	if p == "" || len(paths) >= maxPaths || slices.Contains(paths, p) {
		return paths
	}
	return append(paths, p)
}
