package bench

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// prober pings every target once per interval from a raw ICMP socket in
// one network namespace (a burst of one echo per target each round, sent
// with sendmmsg), and keeps per target the time of its last reply, the
// longest time between two replies and the replies to the rounds of the
// current window.
type prober struct {
	conn    *net.IPConn
	pc      *ipv4.PacketConn
	targets []netip.Addr
	index   map[netip.Addr]int
	id      uint16
	done    chan struct{}
	rate    chan time.Duration
	wg      sync.WaitGroup

	mu        sync.Mutex
	round     uint64 // the next round to send
	winStart  time.Time
	winRound  uint64 // first round of the window
	winEnd    uint64 // first round after it (max while it is open)
	last      []time.Time
	longest   []time.Duration
	inWindow  []int // replies to rounds of the window
	sendErr   error
	sendFails int
}

// gapResult is a prober's window.
type gapResult struct {
	longest  time.Duration // the longest time any target went without a reply
	worst    netip.Addr
	lostPods int // targets that missed a reply to a round of the window
	pods     int
	rounds   int // rounds sent in the window
}

func startProber(from ns.NetNS, targets []netip.Addr, interval time.Duration) (*prober, error) {
	var conn *net.IPConn
	if err := from.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.ListenIP("ip4:icmp", &net.IPAddr{IP: net.IPv4zero})
		return err
	}); err != nil {
		return nil, err
	}
	// One round's replies arrive in a burst: room for several rounds,
	// past net.core.rmem_max (root may force it).
	if rc, err := conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		})
	}
	p := &prober{conn: conn, pc: ipv4.NewPacketConn(conn), targets: targets, index: map[netip.Addr]int{},
		id: uint16(os.Getpid()), done: make(chan struct{}), rate: make(chan time.Duration),
		last: make([]time.Time, len(targets)), longest: make([]time.Duration, len(targets)), inWindow: make([]int, len(targets))}
	now := time.Now()
	for i, t := range targets {
		p.index[t] = i
		p.last[i] = now
	}
	p.winStart, p.winEnd = now, math.MaxUint64
	p.wg.Go(p.receive)
	p.wg.Go(func() { p.send(interval) })
	return p, nil
}

// echo writes an ICMP echo request carrying round into buf (16 bytes).
func echo(buf []byte, id uint16, round uint64) {
	buf[0], buf[1], buf[2], buf[3] = 8, 0, 0, 0 // type echo, code 0, checksum
	binary.BigEndian.PutUint16(buf[4:], id)
	binary.BigEndian.PutUint16(buf[6:], uint16(round))
	binary.BigEndian.PutUint64(buf[8:], round)
	var sum uint32
	for i := 0; i < len(buf); i += 2 {
		sum += uint32(buf[i])<<8 | uint32(buf[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(buf[2:], ^uint16(sum))
}

func (p *prober) send(interval time.Duration) {
	msgs := make([]ipv4.Message, len(p.targets))
	for i, t := range p.targets {
		msgs[i] = ipv4.Message{Buffers: [][]byte{make([]byte, 16)}, Addr: &net.IPAddr{IP: t.AsSlice()}}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return
		case d := <-p.rate:
			tick.Reset(d)
			continue
		case <-tick.C:
		}
		p.mu.Lock()
		round := p.round
		p.round++
		p.mu.Unlock()
		for i := range msgs {
			echo(msgs[i].Buffers[0], p.id, round)
		}
		for sent := 0; sent < len(msgs); {
			n, err := p.pc.WriteBatch(msgs[sent:], 0)
			if err != nil {
				p.mu.Lock()
				p.sendErr, p.sendFails = err, p.sendFails+1
				p.mu.Unlock()
				break
			}
			sent += n
		}
	}
}

func (p *prober) receive() {
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 256)}
	}
	for {
		n, err := p.pc.ReadBatch(msgs, 0)
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		p.mu.Lock()
		for _, m := range msgs[:n] {
			b := m.Buffers[0][:m.N]
			// A raw socket's datagram starts with the IPv4 header.
			if len(b) < 20 || b[0]>>4 != 4 {
				continue
			}
			src, _ := netip.AddrFromSlice(b[12:16])
			b = b[int(b[0]&0x0f)*4:]
			if len(b) < 16 || b[0] != 0 || binary.BigEndian.Uint16(b[4:]) != p.id {
				continue // not an echo reply of ours
			}
			i, ok := p.index[src]
			if !ok {
				continue
			}
			if gap := now.Sub(p.last[i]); now.After(p.winStart) && gap > p.longest[i] {
				p.longest[i] = gap
			}
			p.last[i] = now
			if r := binary.BigEndian.Uint64(b[8:]); r >= p.winRound && r < p.winEnd {
				p.inWindow[i]++
			}
		}
		p.mu.Unlock()
	}
}

// SetInterval changes how often each target is pinged.
func (p *prober) SetInterval(d time.Duration) { p.rate <- d }

// Reset starts a new window.
func (p *prober) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.winStart, p.winRound, p.winEnd = time.Now(), p.round, math.MaxUint64
	for i := range p.targets {
		p.longest[i], p.inWindow[i] = 0, 0
	}
}

// Result closes the window: the rounds sent in it are given 200 ms for
// their replies (later rounds do not count), then it reports the longest
// gap, counting a target still silent as silent until now.
func (p *prober) Result() gapResult {
	p.mu.Lock()
	end, endRound := time.Now(), p.round
	p.winEnd = endRound
	p.mu.Unlock()
	time.Sleep(200 * time.Millisecond) // the reply timeout: a later reply is a loss

	p.mu.Lock()
	defer p.mu.Unlock()
	r := gapResult{pods: len(p.targets), rounds: int(endRound - p.winRound)}
	for i, t := range p.targets {
		g := p.longest[i]
		if open := end.Sub(p.last[i]); p.last[i].Before(end) && open > g {
			g = open
		}
		if g > r.longest {
			r.longest, r.worst = g, t
		}
		if uint64(p.inWindow[i]) < endRound-p.winRound {
			r.lostPods++
		}
	}
	return r
}

// Close stops the prober.
func (p *prober) Close() {
	close(p.done)
	p.conn.Close()
	p.wg.Wait()
}
