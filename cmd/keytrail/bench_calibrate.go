package main

// The machine's own speed, measured at the start of every bench run: the
// figures of one run are compared with their baselines, but the absolute
// targets (CPU per operation, latency added by the use event's fsync)
// move with the machine, and these two probes say how fast it was.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/keytrail/keytrail/adapters/auditfile"
)

// calibration is what the probes measured.
type calibration struct {
	// Fsync*: appending 400 bytes to a file in the bench's directory (where
	// the brokers' audit logs are) and fsyncing it, as the audit log does
	// for every batch; CPU is this process's user+system time per sync.
	FsyncSamples int     `json:"fsync_samples"`
	FsyncP50us   float64 `json:"fsync_p50_us"`
	FsyncP99us   float64 `json:"fsync_p99_us"`
	FsyncCPUus   float64 `json:"fsync_cpu_us"`
	// Journal*: the same record made durable the way the brokers' audit
	// sinks do by default (audit.journal): one direct write into a
	// preallocated journal. Zero where direct I/O is not available (the
	// sinks fsync there).
	JournalP50us float64 `json:"journal_p50_us,omitempty"`
	JournalP99us float64 `json:"journal_p99_us,omitempty"`
	JournalCPUus float64 `json:"journal_cpu_us,omitempty"`
	// ECDSAVerifyUs is one P-256 signature check (crypto/ecdsa), the
	// largest part of a new identity token's cost: a CPU-speed yardstick.
	ECDSAVerifyUs float64 `json:"ecdsa_p256_verify_us"`
}

// calibrate runs the probes: about a second on a disk whose fsync takes
// 200 µs.
func calibrate(dir string, fsyncs int) (*calibration, error) {
	c := &calibration{FsyncSamples: fsyncs}
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return nil, fmt.Errorf("bench: fsync probe: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 400)
	for i := range rec {
		rec[i] = 'x'
	}
	rec[len(rec)-1] = '\n'
	lat := make([]time.Duration, 0, fsyncs)
	self := os.Getpid()
	cpu0, _ := procCPU(self)
	for range fsyncs {
		t := time.Now()
		if _, err := f.Write(rec); err != nil {
			return nil, fmt.Errorf("bench: fsync probe: %w", err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("bench: fsync probe: %w", err)
		}
		lat = append(lat, time.Since(t))
	}
	cpu1, _ := procCPU(self)
	slices.Sort(lat)
	c.FsyncP50us, c.FsyncP99us = us(percentile(lat, 0.50)), us(percentile(lat, 0.99))
	if fsyncs > 0 {
		c.FsyncCPUus = round1(float64(cpu1-cpu0) / float64(time.Microsecond) / float64(fsyncs))
	}

	jlat, jcpu, err := auditfile.ProbeJournal(dir, rec, fsyncs) // CPU of the writes, not the preallocation
	switch {
	case errors.Is(err, auditfile.ErrNoDirectIO):
	case err != nil:
		return nil, fmt.Errorf("bench: journal probe: %w", err)
	case len(jlat) > 0:
		slices.Sort(jlat)
		c.JournalP50us, c.JournalP99us = us(percentile(jlat, 0.50)), us(percentile(jlat, 0.99))
		c.JournalCPUus = round1(float64(jcpu) / float64(time.Microsecond) / float64(len(jlat)))
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256([]byte(filepath.Base(f.Name())))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	const verifies = 500
	t := time.Now()
	for range verifies {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return nil, fmt.Errorf("bench: ECDSA probe: a valid signature did not verify")
		}
	}
	c.ECDSAVerifyUs = us(time.Since(t) / verifies)
	return c, nil
}

// line is the report's line for c.
func (c *calibration) line() string {
	journal := "audit journal: no direct I/O in the bench's directory (the brokers fsync)"
	if c.JournalP50us > 0 {
		journal = fmt.Sprintf("audit journal write p50 %s p99 %s (%s of CPU each)", fmtUs(c.JournalP50us), fmtUs(c.JournalP99us), fmtUs(c.JournalCPUus))
	}
	return fmt.Sprintf("machine: fsync after a 400-byte append p50 %s p99 %s (%s of CPU each, %d in the bench's directory); %s; ECDSA P-256 verify %s",
		fmtUs(c.FsyncP50us), fmtUs(c.FsyncP99us), fmtUs(c.FsyncCPUus), c.FsyncSamples, journal, fmtUs(c.ECDSAVerifyUs))
}

// durableWrite names what makes an audit batch durable on this machine, and
// its idle p50 and p99: the floor of the latency a durable event adds.
func (c *calibration) durableWrite() (what string, p50, p99 float64) {
	if c.JournalP50us > 0 {
		return "one audit journal write", c.JournalP50us, c.JournalP99us
	}
	return "one fsync", c.FsyncP50us, c.FsyncP99us
}
