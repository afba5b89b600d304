// Command keytrail is the one keytrail binary: the broker (server), a
// one-command development setup (dev), the workload client (fetch, exec), the
// security team's and auditor's tools (revoke, trace, audit verify, report)
// and policy tooling (policy check, policy explain). It is the only place
// that names concrete adapters and wires them together.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker/audit"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "keytrail:", ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "keytrail:", err)
		os.Exit(1)
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return fmt.Sprintf("exit %d: %s", e.code, e.msg) }

// env is what every command gets from the outside world.
type env struct {
	ctx    context.Context
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
	errMu  sync.Mutex // serializes lines written by concurrent goroutines (lineErr)
	// progressEvery is how often long file reads (audit verify) print a
	// progress line on stderr.
	progressEvery time.Duration
	// afterAuditList, when set, is called by audit verify, trace and
	// report between listing the audit files and identifying them (tests:
	// a rotation in between).
	afterAuditList func()
	// wrapAuditRead, when set, wraps each audit file audit verify, trace
	// and report read (tests: a sink that writes or cuts the file between
	// two reads).
	wrapAuditRead func(path string, f *os.File) audit.File
	// auditWritten, when set, is called by the server's audit sink after
	// each batch it wrote, before the batch's writers are told (tests: an
	// audit disk that hangs).
	auditWritten func()
	// auditClosing, when set, is called by the server just before it
	// closes its audit sink (tests: a Close that hangs on an audit disk).
	auditClosing func()
	// devUnlocked, when set, is called by dev when it fails before Vault,
	// after it released --dir's lock and before it removes the directories
	// it created (tests: another dev taking the lock then).
	devUnlocked func()
	// devListenHeld, when set, is called by dev once it holds --listen,
	// before it binds the demo issuer's port and starts Vault (tests:
	// another process taking --listen then).
	devListenHeld func()
	// execStarted, when set, is called by exec with the environment of
	// each CMD it has started, before anything can stop that CMD (tests:
	// the credential each CMD was given, which a CMD stopped at once has
	// no time to tell). It must not change the slice.
	execStarted func(environ []string)
	// exit, when set, stands for os.Exit where the server exits at once
	// on a second SIGINT/SIGTERM (tests).
	exit func(code int)
	// startupCloseGrace, when set, stands for startupCloseGrace (tests).
	startupCloseGrace time.Duration
	// shutdownCloseGrace, when set, stands for shutdownCloseGrace's
	// (tests).
	shutdownCloseGrace time.Duration
	// listening, when set, is called with the server's listener once
	// bound, before the start-up wires anything (tests: a listener that
	// fails while serving).
	listening func(net.Listener)
	// listener, when set, is the bound listener runServer serves on
	// instead of binding cfg.Listen (dev binds --listen before it starts
	// Vault); runServer closes it.
	listener net.Listener
}

// lineErr is stderr for lines that goroutines running at the same time
// write (fetch and exec renew their grants concurrently): one Write at a
// time. (fmt's Fprint* make one Write per line.)
func (e *env) lineErr() io.Writer { return devserver.LockedWriter(&e.errMu, e.stderr) }

// run executes the CLI with explicit inputs and outputs (testable without a
// process).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := &env{ctx: ctx, getenv: getenv, stdout: stdout, stderr: stderr, progressEvery: 5 * time.Second}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := unknownCommandWithHelp(root, args); err != nil {
		return err
	}
	return root.ExecuteContext(ctx)
}

// unknownCommandWithHelp is the usage error of "keytrail servr --help" (or
// -h, or "keytrail policy chek --help"): cobra answers --help before it
// checks the arguments, so a word that names no subcommand of a command
// that only groups others showed that command's help and exited 0, as if
// the command existed. It is the same exit 2, with the suggestion, as
// without --help. nil for anything else (left to cobra).
func unknownCommandWithHelp(root *cobra.Command, args []string) error {
	// cobra adds the help flag only when it runs a command; without it,
	// Find takes "--help server" for a flag and its value and stops at the
	// group ("keytrail --help server" was 'unknown command "server"').
	// Nor has it added the help command yet: "keytrail help --help" would
	// be an unknown command "help".
	root.InitDefaultHelpCmd()
	initHelpFlags(root)
	cmd, rest, err := root.Find(args)
	if err != nil || cmd.Annotations[groupAnnotation] == "" {
		return nil
	}
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.ParseErrorsAllowlist.UnknownFlags = true
	help := fs.BoolP("help", "h", false, "")
	if fs.Parse(rest) != nil || !*help || fs.NArg() == 0 {
		return nil
	}
	return usageError(cmd, unknownSubcommand(cmd, fs.Args()))
}

// initHelpFlags adds cobra's -h/--help flag to cmd and every command below
// it now, as cobra does to the command it runs, so that Find knows it takes
// no value.
func initHelpFlags(cmd *cobra.Command) {
	cmd.InitDefaultHelpFlag()
	for _, c := range cmd.Commands() {
		initHelpFlags(c)
	}
}

func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "keytrail",
		Short: "Short-lived, attributable credentials for workloads, minted through Vault",
		Long: `keytrail is a secrets broker. Workloads exchange the identity token their
platform gives them (Kubernetes, GitHub Actions OIDC, SPIFFE JWT-SVID, any OIDC
issuer) for short-lived credentials minted through HashiCorp Vault. Every
credential is tagged with workload, owner and session, and every issuance, use
and revocation goes to a tamper-evident audit log.

Exit status: 0 success, 2 usage (a flag or argument is wrong or missing), in
every command; what 1, 3 and 4 mean is in each command's --help.`,
		Example: `  keytrail dev                                        # a first try: Vault dev server, broker, demo workload
  keytrail config check --config /etc/keytrail/config.yaml
  keytrail server --config /etc/keytrail/config.yaml
  keytrail fetch --grant payments-db --out /run/secrets/db.json
  keytrail revoke --workload payments-api --block --reason "INC-4711: key leaked"
  keytrail audit verify --key checkpoint.pub /var/lib/keytrail/audit.jsonl`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServerCmd(e),
		newConfigCmd(e),
		newDevCmd(e),
		newFetchCmd(e),
		newExecCmd(e),
		newRevokeCmd(e),
		newUnblockCmd(e),
		newTraceCmd(e),
		newAuditCmd(e),
		newPolicyCmd(e),
		newReportCmd(e),
		newVersionCmd(e),
		newBenchCmd(e),
	)
	// cobra adds its completion command when it runs; added now, it gets
	// the usage checks below ("completion bogus" exits 2, not 0).
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Example = "  keytrail completion bash > /etc/bash_completion.d/keytrail\n  keytrail completion zsh > \"${fpath[1]}/_keytrail\""
			for _, sh := range c.Commands() {
				sh.Long += "\nExit status: 0 the script is printed; 2 usage.\n"
				sh.Example = completionExamples[sh.Name()]
			}
		}
	}
	usageExits2(root)
	root.SetHelpCommand(newHelpCmd(root))
	return root
}

// completionExamples are the completion shells' examples: where each
// shell's script is usually put.
var completionExamples = map[string]string{
	"bash":       "  keytrail completion bash > /etc/bash_completion.d/keytrail",
	"zsh":        "  keytrail completion zsh > \"${fpath[1]}/_keytrail\"",
	"fish":       "  keytrail completion fish > ~/.config/fish/completions/keytrail.fish",
	"powershell": "  keytrail completion powershell | Out-String | Invoke-Expression",
}

// newHelpCmd is "keytrail help [command]": cobra's own shows the main help
// and exits 0 for a topic it does not know ("keytrail help revok"), which a
// script cannot tell from success. This one exits 2 for it, as for any
// other usage mistake.
func newHelpCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:     "help [command]",
		Short:   "Help about any command",
		Long:    "Help about any command: keytrail help revoke is keytrail revoke --help.\n\nExit status: 0; 2 for a command that does not exist.",
		Example: "  keytrail help revoke\n  keytrail help audit verify",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil || target == nil || len(rest) > 0 {
				return exitError{code: exitUsage, msg: fmt.Sprintf("help: no command %q (see %s --help)", strings.Join(args, " "), root.Name())}
			}
			return target.Help()
		},
	}
}

// exitUsage is the exit status of a usage mistake, for every command.
const exitUsage = 2

// usageError is a usage mistake of cmd: exit status 2, never 1 (which
// fetch, exec and others use for "refused for good").
func usageError(cmd *cobra.Command, err error) error {
	var ee exitError
	if errors.As(err, &ee) {
		return err
	}
	err = flagValueError(err)
	if cmd.Annotations[groupAnnotation] != "" && cmd.Flags().NArg() > 0 {
		// "keytrail servr --config x": the typo left cobra on the command
		// that groups the others, whose flags do not include the
		// subcommand's; the typo is the mistake to name, not the flag.
		err = unknownSubcommand(cmd, cmd.Flags().Args())
	}
	where := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	if cmd == cmd.Root() {
		return exitError{code: exitUsage, msg: fmt.Sprintf("%v (see %s --help)", err, cmd.CommandPath())}
	}
	return exitError{code: exitUsage, msg: fmt.Sprintf("%s: %v (see %s --help)", where, err, cmd.CommandPath())}
}

// flagValueError says what a flag of a built-in type wants instead of
// quoting the Go parser's error ("strconv.ParseInt: parsing \"x\": invalid
// syntax", "time: missing unit in duration \"5\""). Other errors, and flags
// of the commands' own types (which say it themselves), are left as they are.
func flagValueError(err error) error {
	var ive *pflag.InvalidValueError
	if !errors.As(err, &ive) {
		return err
	}
	name, val := "--"+ive.GetFlag().Name, ive.GetValue()
	var ne *strconv.NumError
	outOfRange := errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange)
	switch ive.GetFlag().Value.Type() {
	case "duration":
		return fmt.Errorf("%s: %q is not a duration: a number with a unit, like 90s, 5m or 1h30m", name, val)
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		if outOfRange {
			return fmt.Errorf("%s: %q is out of range", name, val)
		}
		return fmt.Errorf("%s: %q is not a whole number", name, val)
	case "float32", "float64":
		return fmt.Errorf("%s: %q is not a number", name, val)
	case "bool":
		return fmt.Errorf("%s=%s: want true or false (%s alone is true)", name, val, name)
	}
	return err
}

// groupAnnotation marks a command that only groups others (keytrail,
// policy, audit, config, completion).
const groupAnnotation = "keytrail-group"

// unknownSubcommand is the Args check of a command that only groups others:
// a word that names none of them is an unknown command, with cobra's
// suggestions ("keytrail revok": did you mean revoke?), which cobra gives
// only when a command has no Args check of its own.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if strings.TrimSpace(args[0]) == "" {
		// Every name has the empty prefix: cobra would suggest them all.
		return errors.New(msg + ": the command is empty (a shell variable not set?)")
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, which only its own check sets
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		q := make([]string, len(s))
		for i, name := range s {
			q[i] = strconv.Quote(name)
		}
		alt := q[len(q)-1]
		if len(q) > 1 {
			alt = strings.Join(q[:len(q)-1], ", ") + " or " + alt
		}
		msg += "; did you mean " + alt + "?"
	}
	return errors.New(msg)
}

// usageExits2 makes the usage mistakes cobra catches exit 2 in c and every
// command below it: a bad or unknown flag (the flag error function), a
// wrong number of arguments (the Args validators), a missing required flag
// or a flag group broken (checked with the arguments, as cobra checks them
// only after, without a way to tell them from other errors). A stray
// argument to a command that takes none is called that, not an unknown
// command. A command that
// only groups others shows its help when run alone and rejects an argument
// that names no subcommand.
func usageExits2(c *cobra.Command) {
	if !c.HasParent() {
		c.SetFlagErrorFunc(usageError)
	}
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = unknownSubcommand
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		c.Annotations[groupAnnotation] = "true"
	}
	args := c.Args
	if args == nil {
		args = cobra.ArbitraryArgs
	}
	c.Args = func(cmd *cobra.Command, a []string) error {
		if err := args(cmd, a); err != nil {
			if !cmd.HasSubCommands() && len(a) > 0 && strings.HasPrefix(err.Error(), "unknown command ") {
				// cobra.NoArgs calls a stray word a command: in
				// "revoke --reason INC-4711: key leaked" it is the rest
				// of an unquoted value.
				err = fmt.Errorf("unexpected argument %q: takes no arguments; quote a flag value that has spaces", a[0])
			} else if len(a) == 0 && strings.Contains(err.Error(), " arg(s), ") {
				// cobra's "requires at least 1 arg(s), only received 0"
				// names neither the argument nor where it goes.
				err = fmt.Errorf("missing argument: %s", strings.TrimSuffix(cmd.UseLine(), " [flags]"))
			} else if strings.HasPrefix(err.Error(), "accepts ") && strings.Contains(err.Error(), " arg(s), received ") {
				// cobra's "accepts 1 arg(s), received 2", as trace says it.
				if w := strings.Fields(cmd.Use); len(w) == 2 {
					err = fmt.Errorf("takes one %s, got %d arguments; quote a %s that has spaces", w[1], len(a), w[1])
				}
			}
			return usageError(cmd, err)
		}
		if err := cmd.ValidateRequiredFlags(); err != nil {
			return usageError(cmd, err)
		}
		if err := cmd.ValidateFlagGroups(); err != nil {
			return usageError(cmd, exclusiveFlagsError(err))
		}
		return nil
	}
	for _, sub := range c.Commands() {
		usageExits2(sub)
	}
}

// cobraExclusive is cobra's error for flags marked mutually exclusive that
// were given together: the group, then the ones set (sorted), both without
// dashes.
var cobraExclusive = regexp.MustCompile(`^if any flags in the group \[([^\]]*)\] are set none of the others can be; \[([^\]]*)\] were all set$`)

// exclusiveFlagsError says cobra's "if any flags in the group [out out-dir]
// are set none of the others can be; [out out-dir] were all set" as the
// other usage errors do: "--out and --out-dir cannot be used together:
// give one of --out or --out-dir". Other errors are left as they are.
func exclusiveFlagsError(err error) error {
	m := cobraExclusive.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	group, set := strings.Fields(m[1]), strings.Fields(m[2])
	var given []string
	for i, name := range group {
		group[i] = "--" + name
		if slices.Contains(set, name) {
			given = append(given, group[i])
		}
	}
	if len(given) < 2 || len(group) < 2 {
		return err
	}
	return fmt.Errorf("%s cannot be used together: give one of %s", orList(given, "and"), orList(group, "or"))
}

// orList joins words as "a, b or c" (with "and": "a, b and c").
func orList(words []string, conj string) string {
	if len(words) == 1 {
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " " + conj + " " + words[len(words)-1]
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the keytrail version",
		Long:    "Print the keytrail version.\n\nExit status: 0; 2 usage.",
		Example: "  keytrail version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(e.stdout, "keytrail", version)
			return nil
		},
	}
}

// notYet is the honest answer of a command whose issue has not landed.
func notYet(what string, issue int) error {
	return exitError{code: 2, msg: fmt.Sprintf("%s is not implemented yet (tracked in issue #%d)", what, issue)}
}
