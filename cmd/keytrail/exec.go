package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/keytrail/keytrail/broker/client"
)

// envSpec is one --env: set Name to Field of Grant's credential.
type envSpec struct {
	Name  string
	Grant string
	Field string
}

var (
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	envFieldRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

// parseEnvSpec parses NAME, NAME=FIELD or NAME=GRANT:FIELD. Without a
// field the access token is meant; without a grant the only grant is.
func parseEnvSpec(s string, grants []string) (envSpec, error) {
	name, val, hasVal := strings.Cut(s, "=")
	if !envNameRE.MatchString(name) {
		return envSpec{}, fmt.Errorf("--env %q: %q is not an environment variable name", s, name)
	}
	sp := envSpec{Name: name, Field: "access_token"}
	if hasVal {
		g, f, hasGrant := strings.Cut(val, ":")
		if hasGrant {
			sp.Grant = g
		} else {
			f = val
		}
		if !envFieldRE.MatchString(f) {
			return envSpec{}, fmt.Errorf("--env %q: want NAME, NAME=FIELD or NAME=GRANT:FIELD", s)
		}
		sp.Field = f
	}
	switch {
	case sp.Grant == "" && len(grants) == 1:
		sp.Grant = grants[0]
	case sp.Grant == "":
		return envSpec{}, fmt.Errorf("--env %q: several grants are fetched: name one, as NAME=GRANT:FIELD", s)
	case !slices.Contains(grants, sp.Grant):
		return envSpec{}, fmt.Errorf("--env %q: grant %q is not one of the --grant values", s, sp.Grant)
	}
	return sp, nil
}

// renewAction is what exec does to the child when a credential is renewed.
type renewAction struct {
	restart bool
	sig     syscall.Signal
}

var renewSignals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "QUIT": syscall.SIGQUIT,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH,
}

// parseOnRenew parses "restart" or "signal:NAME" (HUP, SIGHUP, USR1, ...).
func parseOnRenew(s string) (renewAction, error) {
	if s == "restart" {
		return renewAction{restart: true}, nil
	}
	if name, ok := strings.CutPrefix(s, "signal:"); ok {
		name = strings.TrimPrefix(strings.ToUpper(name), "SIG")
		if sig, ok := renewSignals[name]; ok {
			return renewAction{sig: sig}, nil
		}
	}
	return renewAction{}, fmt.Errorf("--on-renew %q: want restart or signal:NAME (HUP, INT, TERM, QUIT, USR1, USR2, WINCH)", s)
}

// credentialEnv is the child's environment: base without the names set
// here, plus one NAME=value per spec.
func credentialEnv(base []string, specs []envSpec, creds map[string]*client.Credential) ([]string, error) {
	set := map[string]string{}
	for _, sp := range specs {
		c := creds[sp.Grant]
		if c == nil {
			return nil, fmt.Errorf("--env %s: no credential for grant %s", sp.Name, sp.Grant)
		}
		v, ok := c.Field(sp.Field)
		if !ok {
			names := make([]string, 0, len(c.Fields))
			for k := range c.Fields {
				names = append(names, k)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("--env %s: grant %s (kind %s) has no field %q; it has access_token, issuance_id, session_id, expires_in and %s",
				sp.Name, sp.Grant, c.Kind, sp.Field, strings.Join(names, ", "))
		}
		set[sp.Name] = v
	}
	out := make([]string, 0, len(base)+len(set))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, over := set[k]; !over {
			out = append(out, kv)
		}
	}
	names := make([]string, 0, len(set))
	for k := range set {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		out = append(out, k+"="+set[k])
	}
	return out, nil
}

// withoutEnv is environ without the variable name ("" drops nothing).
func withoutEnv(environ []string, name string) []string {
	if name == "" {
		return environ
	}
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); k != name {
			out = append(out, kv)
		}
	}
	return out
}

func newExecCmd(e *env) *cobra.Command {
	var (
		wf       workloadFlags
		of       outputFlags
		envs     []string
		onRenew  string
		grace    time.Duration
		noStatus bool
	)
	c := &cobra.Command{
		Use:   "exec --grant G [--identity-token-file F | --identity-token-env VAR | --github-actions] --env NAME[=[GRANT:]FIELD] [...] [--watch [--on-renew restart|signal:HUP]] -- CMD [ARGS...]",
		Short: "Run a command with credentials in its environment",
		Long: `Fetch credentials, then run CMD with them in its environment. keytrail stays
the parent: it forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
to CMD and exits with CMD's exit status (128+N when CMD was killed by signal
N; 127 when CMD is not found, 126 when it cannot be run). A Ctrl-C (or
Ctrl-\) in a terminal reaches CMD once, from the terminal: keytrail does not
send it again. On Linux, as PID 1 (a container's entrypoint) or a child
subreaper, it also reaps the orphaned processes given to it, as an init
does.

--env NAME               sets NAME to the access token of the (only) grant
--env NAME=FIELD         sets NAME to a credential field (username, password,
                         lease_id, accessor...) or a response field
                         (issuance_id, session_id, expires_in)
--env NAME=GRANT:FIELD   the same, naming the grant when several are fetched
A NAME given twice is a usage error. CMD inherits keytrail's environment
but for the --identity-token-env variable: CMD gets the credential, not the
identity token it was exchanged for. With --github-actions, CMD keeps
ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN: every step
of the job has them anyway, and tools CMD runs may need them (npm publish
--provenance, cosign's keyless signing).

--out FILE or --out-dir DIR also writes the credentials to files, as keytrail
fetch does (rewritten at each renewal with --watch), in --format (raw, json,
env or pem); --format applies only with them, and --out - (stdout) is
refused: it would mix the credential into CMD's output.

With --watch keytrail renews the credentials at about 2/3 of their TTL and
then, as --on-renew says, restarts CMD with the new environment (SIGTERM,
then SIGKILL after --restart-grace) or sends it a signal (signal:HUP): the
latter suits a program that re-reads a file written with --out/--out-dir,
since a running process's environment cannot change, and is refused
(usage) without them. A renewal the broker refuses for good is reported on
stderr and CMD keeps running. Restarted CMDs run in a process group of their
own when keytrail has no controlling terminal (a container, a service, CI):
a restart then stops the whole group, and waits for it, so that what CMD
started (a shell script's children) does not run on with the old
credential; so do SIGTERM, SIGINT and SIGQUIT keytrail forwards (one sent
to keytrail's group reaches CMD's through keytrail; SIGKILL cannot be
forwarded), while SIGHUP, SIGUSR1 and SIGUSR2 go to CMD alone. With a controlling terminal CMD stays in keytrail's group, for
Ctrl-C and job control, and a restart stops CMD alone.

Identity, server, --ttl and --timeout work as for keytrail fetch, and so does
the exit status before CMD starts: 1 the broker refused for good or its
answer was not a token response, its certificate did not verify, a proxy
refused, the identity token cannot be read,
--out/--out-dir cannot be written (checked before the broker is asked), or
no credential came within --timeout; 2 usage; 130 interrupted.`,
		Example: `  keytrail exec --grant payments-db --env PGUSER=username --env PGPASSWORD=password -- ./server
  keytrail exec --grant payments-vault --env VAULT_TOKEN --watch -- ./worker
  keytrail exec --grant payments-vault --out /run/keytrail/token --watch --on-renew signal:HUP -- nginx -g 'daemon off;'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				// Not the whole Use line: which command to run is what is
				// missing.
				return errors.New("no command to run: give it after --, as in keytrail exec --grant G --env NAME -- CMD [ARGS...]")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := wf.validate(); err != nil {
				return exitError{code: exitUsage, msg: "exec: " + err.Error()}
			}
			if cmd.Flags().Changed("format") && !of.any() {
				// As --on-renew without --watch: a flag that would do
				// nothing is a mistake, not silently ignored.
				return exitError{code: exitUsage, msg: "exec: --format applies only with --out or --out-dir (the format of the files written); --env NAME=FIELD gives CMD a field itself"}
			}
			if of.any() {
				if err := of.validate(wf.grants, false); err != nil {
					return exitError{code: exitUsage, msg: "exec: " + err.Error()}
				}
				if of.out == "-" {
					return exitError{code: exitUsage, msg: "exec: --out - would mix the credential into CMD's output"}
				}
			}
			var specs []envSpec
			given := map[string]string{}
			for _, s := range envs {
				sp, err := parseEnvSpec(s, wf.grants)
				if err != nil {
					return exitError{code: exitUsage, msg: "exec: " + err.Error()}
				}
				if first, twice := given[sp.Name]; twice {
					// The last one would win without a word.
					return exitError{code: exitUsage, msg: fmt.Sprintf("exec: --env %s given twice (%s and %s): one value per variable", sp.Name, first, s)}
				}
				given[sp.Name] = s
				specs = append(specs, sp)
			}
			if len(specs) == 0 && !of.any() {
				return exitError{code: exitUsage, msg: "exec: give --env (or --out/--out-dir): otherwise CMD gets no credential"}
			}
			action, err := parseOnRenew(onRenew)
			if err != nil {
				return exitError{code: exitUsage, msg: "exec: " + err.Error()}
			}
			if grace <= 0 {
				return exitError{code: exitUsage, msg: "exec: --restart-grace must be positive"}
			}
			// As --audience without --github-actions: a flag that would do
			// nothing is a mistake, not silently ignored.
			for _, name := range []string{"on-renew", "restart-grace"} {
				if cmd.Flags().Changed(name) && !wf.watch {
					return exitError{code: exitUsage, msg: "exec: --" + name + " applies only with --watch (without it nothing is renewed)"}
				}
			}
			if !action.restart && !of.any() {
				// As --format without --out: each renewal would be an
				// issuance CMD never sees, its environment being fixed.
				return exitError{code: exitUsage, msg: "exec: --on-renew " + onRenew +
					" needs --out or --out-dir (the file CMD re-reads when signalled): CMD's environment cannot change; use --on-renew restart to give it the new one"}
			}
			x := &execRun{e: e, specs: specs, dropEnv: wf.tokenEnv, action: action, grace: grace, argv: args, addr: wf.brokerAddr(e), creds: map[string]*client.Credential{}, renewed: make(chan struct{}, 1)}
			if err := of.prepare(wf.grants); err != nil {
				return exitError{code: exitPermanent, msg: "exec: " + err.Error()}
			}
			// Grants renew concurrently: one at a time writes files and lines.
			var outMu sync.Mutex
			srcs, id, err := wf.sources(e, func(grant string, c *client.Credential) error {
				outMu.Lock()
				defer outMu.Unlock()
				dest := ""
				if of.any() {
					var err error
					if dest, err = of.write(e.stdout, grant, c); err != nil {
						return err
					}
				}
				if !noStatus {
					statusLine(e.lineErr(), grant, c, dest)
				}
				x.update(grant, c)
				return nil
			})
			if err != nil {
				return exitError{code: exitPermanent, msg: "exec: " + err.Error()}
			}
			if err := fetchAll(e.ctx, srcs, id, wf.timeout, wf.brokerAddr(e)); err != nil {
				if errors.Is(err, context.Canceled) {
					return exitError{code: 130, msg: "exec: interrupted before CMD started"}
				}
				return err
			}
			return x.run(srcs, id, wf.watch)
		},
	}
	c.Flags().SetInterspersed(false) // everything after CMD belongs to CMD
	wf.register(c)
	of.register(c)
	f := c.Flags()
	f.Lookup("out").Usage = "also write the credential to this file (one grant), e.g. for a CMD that re-reads it on --on-renew signal:HUP"
	f.Lookup("out-dir").Usage = "also write one file per grant to this directory, named after the grant"
	f.Lookup("format").Usage = "with --out or --out-dir: " + f.Lookup("format").Usage
	f.StringArrayVar(&envs, "env", nil, "environment variable for CMD: NAME, NAME=FIELD or NAME=GRANT:FIELD (repeatable)")
	f.StringVar(&onRenew, "on-renew", "restart", "with --watch: restart, or signal:NAME (e.g. signal:HUP) to signal CMD (needs --out or --out-dir)")
	f.DurationVar(&grace, "restart-grace", 10*time.Second, "on restart, time between SIGTERM and SIGKILL")
	f.BoolVar(&noStatus, "quiet", false, "no status lines on stderr")
	return c
}

// execRun is one exec invocation: the child and the latest credentials.
type execRun struct {
	e      *env
	specs  []envSpec
	action renewAction
	grace  time.Duration
	argv   []string
	addr   string // the broker's address, for the messages
	// dropEnv is the variable the identity token came from
	// (--identity-token-env), left out of CMD's environment: CMD gets the
	// short-lived credential, not the identity it was exchanged for.
	dropEnv string
	reaper  *orphanReaper // when keytrail is PID 1 or a subreaper (run sets it)
	// ownGroup: each CMD runs in a process group of its own, which a
	// restart stops as a whole (run sets it: see there).
	ownGroup bool

	mu       sync.Mutex
	creds    map[string]*client.Credential
	gen      uint64 // counts the updates of creds (under mu)
	watching atomic.Bool
	renewed  chan struct{} // coalesced renewal notifications

	lastForward time.Time
}

func (x *execRun) update(grant string, c *client.Credential) {
	x.mu.Lock()
	x.creds[grant] = c
	x.gen++
	x.mu.Unlock()
	if x.watching.Load() {
		select {
		case x.renewed <- struct{}{}:
		default:
		}
	}
}

// child is one running CMD.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	gen  uint64 // the execRun's gen of the credentials in CMD's environment
	// group: CMD leads a process group of its own (its pid), which stop
	// signals and waits for.
	group bool
}

// hasLatest reports whether c was started with every credential renewed so
// far: a renewal that came while the previous CMD was being stopped is in
// c's environment already, and its notification calls for no restart.
func (x *execRun) hasLatest(c *child) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return c.gen == x.gen
}

func (x *execRun) start() (*child, error) {
	x.mu.Lock()
	environ, err := credentialEnv(withoutEnv(os.Environ(), x.dropEnv), x.specs, x.creds)
	gen := x.gen
	x.mu.Unlock()
	if err != nil {
		return nil, exitError{code: exitPermanent, msg: "exec: " + err.Error()}
	}
	cmd := exec.Command(x.argv[0], x.argv[1:]...)
	cmd.Env = environ
	cmd.Stdin = os.Stdin
	cmd.Stdout = x.e.stdout
	cmd.Stderr = x.e.stderr
	if x.ownGroup {
		setOwnGroup(cmd)
	}
	if err := x.reaper.start(cmd); err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		return nil, exitError{code: code, msg: "exec: " + err.Error()}
	}
	if x.e.execStarted != nil {
		x.e.execStarted(environ)
	}
	ch := &child{cmd: cmd, done: make(chan struct{}), gen: gen, group: x.ownGroup}
	go func() {
		ch.err = cmd.Wait()
		x.reaper.waited(cmd.Process.Pid)
		close(ch.done)
	}()
	return ch, nil
}

// status is the exit status keytrail reports for the child: its exit code,
// or 128+N when signal N killed it.
// exitStatus is exec's result once CMD has ended: its status.
func exitStatus(c *child) error {
	if st := c.status(); st != 0 {
		return exitError{code: st}
	}
	return nil
}

func (c *child) status() int {
	ps := c.cmd.ProcessState
	if ps == nil {
		return 1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// forward sends sig to CMD. When CMD leads a process group of its own, a
// stop signal (SIGTERM, SIGINT, SIGQUIT) goes to that group, as a
// restart's do: one sent to keytrail's group (timeout(1), a CI runner
// cancelling the job) no longer reaches what CMD started, which would run
// on, orphaned, with the credential once CMD, a shell script, has gone.
// Others (SIGHUP, SIGUSR1, SIGUSR2: reload, reopen logs) go to CMD alone.
func (x *execRun) forward(c *child, sig os.Signal) {
	x.lastForward = time.Now()
	if s, ok := sig.(syscall.Signal); ok && c.group && (s == syscall.SIGTERM || s == syscall.SIGINT || s == syscall.SIGQUIT) {
		_ = signalGroup(c.cmd.Process.Pid, s)
		return
	}
	_ = c.cmd.Process.Signal(sig)
}

// relay passes on a signal keytrail received, unless CMD has had it from
// the terminal already (Ctrl-C: see terminalSent).
func (x *execRun) relay(c *child, sig os.Signal) {
	if terminalSent(sig) {
		x.lastForward = time.Now() // CMD has it: no SIGTERM for ctx's end
		return
	}
	x.forward(c, sig)
}

// stop ends c for a restart: SIGTERM, then SIGKILL after the grace period,
// and waits. When c leads a process group of its own, both go to the
// group, and what CMD started (a shell script's children) is waited for
// too, until no process of the group is left (a SIGKILLed one that has not
// gone within another grace period is not waited for further): otherwise
// it would run on, with the old credential, beside the next CMD.
func (x *execRun) stop(c *child, sigs <-chan os.Signal) {
	kill := func(sig syscall.Signal) {
		x.lastForward = time.Now()
		if c.group {
			_ = signalGroup(c.cmd.Process.Pid, sig)
			return
		}
		_ = c.cmd.Process.Signal(sig)
	}
	kill(syscall.SIGTERM)
	t := time.NewTimer(x.grace)
	defer t.Stop()
	var poll <-chan time.Time // the group's others, once CMD has ended
	if c.group {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		poll = tk.C
	}
	done, killed := c.done, false
	for {
		select {
		case <-done:
			done = nil
		case s := <-sigs:
			x.relay(c, s)
		case <-t.C:
			if killed {
				// CMD was waited for before the timer was set again.
				return
			}
			killed = true
			kill(syscall.SIGKILL)
			if done != nil {
				<-c.done
				done = nil
			}
			t.Reset(x.grace)
		case <-poll:
		}
		if done == nil && (!c.group || !groupAlive(c.cmd.Process.Pid)) {
			return
		}
	}
}

func (x *execRun) run(srcs []*client.Source, id client.IdentitySource, watch bool) error {
	sigs := make(chan os.Signal, 4)
	// What a supervisor sends keytrail is for CMD: SIGQUIT is a stop
	// signal too (nginx's image's), SIGUSR1 and SIGUSR2 ask many programs
	// to reopen logs or reload. Not caught, Go would ignore the latter and
	// die of SIGQUIT with a goroutine dump, leaving CMD without a parent.
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	// PID 1 (a container's entrypoint) is given the container's orphans:
	// reap them, or their zombies pile up.
	x.reaper = newOrphanReaper()
	defer x.reaper.close()
	// A CMD that is restarted runs in a process group of its own, which a
	// restart stops as a whole, unless keytrail has a controlling
	// terminal: its Ctrl-C, Ctrl-Z and foreground (reading the terminal)
	// need CMD in keytrail's group. Without restarts CMD stays in
	// keytrail's group too: a signal sent to that group (SIGKILL
	// included, which cannot be forwarded) reaches it directly.
	x.ownGroup = watch && x.action.restart && !hasControllingTerminal()

	c, err := x.start()
	if err != nil {
		return err
	}
	ctx := x.e.ctx
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	type watchResult struct {
		i   int
		err error
	}
	var watchDone chan watchResult
	if watch {
		// Each grant renews on its own: one refused for good does not stop
		// the others.
		x.watching.Store(true)
		watchDone = make(chan watchResult, len(srcs))
		for i, s := range srcs {
			go func() { watchDone <- watchResult{i, s.Run(wctx)} }()
		}
	}
	ctxDone := ctx.Done()
	for {
		select {
		case s := <-sigs:
			x.relay(c, s)
		case <-ctxDone:
			// main's signal handling cancels ctx on SIGINT/SIGTERM, which
			// the child has (or is about to have) been sent already; a
			// cancellation without a signal ends the child with SIGTERM.
			ctxDone = nil
			if time.Since(x.lastForward) > time.Second {
				select {
				case s := <-sigs:
					x.relay(c, s)
				case <-time.After(100 * time.Millisecond):
					x.forward(c, syscall.SIGTERM)
				}
			}
		case <-c.done:
			cancelWatch()
			return exitStatus(c)
		case r := <-watchDone:
			if r.err != nil {
				msg := r.err.Error()
				if client.IsPermanent(r.err) {
					var ee exitError
					if errors.As(permanentError(srcs[r.i].Grant(), id, r.err, x.addr), &ee) {
						msg = ee.msg
					}
				}
				fmt.Fprintf(x.e.lineErr(), "keytrail: renewal stopped: %s; CMD keeps running with the last credential\n", msg)
			}
		case <-x.renewed:
			if ctxDone == nil {
				continue // shutting down
			}
			if !x.action.restart {
				x.forward(c, x.action.sig)
				continue
			}
			if x.hasLatest(c) {
				// Renewed while CMD was being restarted: the CMD
				// started then has it.
				continue
			}
			select {
			case <-c.done:
				// CMD ended on its own as the renewal came (select picks
				// either ready case): its exit ends exec, a batch job is
				// not run twice.
				cancelWatch()
				return exitStatus(c)
			default:
			}
			x.stop(c, sigs)
			if ctx.Err() != nil {
				return exitStatus(c)
			}
			if c, err = x.start(); err != nil {
				return err
			}
			fmt.Fprintf(x.e.lineErr(), "keytrail: restarted %s with renewed credentials (pid %d)\n", x.argv[0], c.cmd.Process.Pid)
		}
	}
}
