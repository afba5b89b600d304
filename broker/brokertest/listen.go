package brokertest

import "net"

// TB is the part of testing.TB that ServeConns and SOCKSProxy use, so that
// this package need not import testing.
type TB interface {
	Helper()
	Fatal(args ...any)
	Cleanup(func())
}

// ServeConns is a fake server or proxy on a loopback port, closed when the
// test ends: every connection it accepts is handed to handle in a goroutine
// of its own and closed when handle returns. It returns the host:port.
func ServeConns(t TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				handle(conn)
			}()
		}
	}()
	return ln.Addr().String()
}

// SOCKSProxy is a fake SOCKS5 proxy (ServeConns) that reads each client's
// greeting and then leaves the connection to reply.
func SOCKSProxy(t TB, reply func(net.Conn)) string {
	t.Helper()
	return ServeConns(t, func(conn net.Conn) {
		_, _ = conn.Read(make([]byte, 300)) // the greeting
		reply(conn)
	})
}
