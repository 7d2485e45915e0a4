// Package allocator hands out fixed-size blocks (for example /24s) of a
// cluster range (for example a /8), each at most once.
//
// The blocks are tracked in a two-level bitmap: one bit per block, plus a
// summary bit per 64-block word that is set when the word is full. Finding a
// free block scans summary words (64 words each), so at 65,536 blocks an
// allocation touches at most 17 words however full the pool is. Allocation is
// next-fit: it continues after the last block handed out, so a block that was
// just released is reused as late as possible.
//
// Addresses are computed in 128 bits, so IPv6 ranges work the same way as
// IPv4 ones.
package allocator

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
)

// ErrRangeExhausted is returned by Allocate when no block is free.
var ErrRangeExhausted = errors.New("cluster range exhausted: no free block")

// ErrOutOfRange is returned for a block that is not inside the cluster range.
var ErrOutOfRange = errors.New("prefix outside the cluster range")

// MaxBlocks bounds the bitmap (2 MiB at this size).
const MaxBlocks = 1 << 24

// Allocator is a set of blocks of one size. It is not safe for concurrent
// use; callers serialize access.
type Allocator struct {
	cluster   netip.Prefix
	blockBits int // mask size of a block, e.g. 24
	hostBits  int // address bits below the block, e.g. 8
	n         int // number of blocks
	words     []uint64
	full      []uint64 // bit i set: words[i] has no free bit
	used      int
	next      int // next-fit cursor
	base      uint128
}

// New returns an allocator of /maskSize blocks in cluster.
func New(cluster netip.Prefix, maskSize int) (*Allocator, error) {
	if !cluster.IsValid() {
		return nil, errors.New("invalid cluster range")
	}
	cluster = cluster.Masked()
	addrBits := cluster.Addr().BitLen()
	if maskSize < cluster.Bits() || maskSize > addrBits {
		return nil, fmt.Errorf("block mask /%d must be between the cluster range's /%d and /%d", maskSize, cluster.Bits(), addrBits)
	}
	if maskSize-cluster.Bits() > 24 {
		return nil, fmt.Errorf("%v holds 2^%d /%d blocks, more than the %d supported", cluster, maskSize-cluster.Bits(), maskSize, MaxBlocks)
	}
	n := 1 << (maskSize - cluster.Bits())
	nw := (n + 63) / 64
	a := &Allocator{
		cluster:   cluster,
		blockBits: maskSize,
		hostBits:  addrBits - maskSize,
		n:         n,
		words:     make([]uint64, nw),
		full:      make([]uint64, (nw+63)/64),
		base:      fromAddr(cluster.Addr()),
	}
	// Bits past n in the last word are permanently "used" so the scan never
	// returns them.
	if rem := n % 64; rem != 0 {
		a.words[nw-1] = ^uint64(0) << rem
	}
	for w := range a.words {
		a.updateFull(w)
	}
	return a, nil
}

// Size returns the number of blocks.
func (a *Allocator) Size() int { return a.n }

// Used returns the number of blocks in use.
func (a *Allocator) Used() int { return a.used }

// Free returns the number of free blocks.
func (a *Allocator) Free() int { return a.n - a.used }

// Allocate reserves and returns a free block, or ErrRangeExhausted.
func (a *Allocator) Allocate() (netip.Prefix, error) {
	i, ok := a.findFree(a.next)
	if !ok {
		i, ok = a.findFree(0)
	}
	if !ok {
		return netip.Prefix{}, ErrRangeExhausted
	}
	a.set(i)
	a.next = i + 1
	if a.next >= a.n {
		a.next = 0
	}
	return a.prefix(i), nil
}

// SeekAfterLastUsed moves the next-fit cursor past the highest block in
// use. Next-fit hands blocks out in rising order, so after a restart this is
// where the previous process stood: a block freed below it (whose cooldown
// may have been lost) is the last to be handed out again, not the first.
func (a *Allocator) SeekAfterLastUsed() {
	for w := len(a.words) - 1; w >= 0; w-- {
		if a.words[w] != 0 {
			a.next = w*64 + 63 - bits.LeadingZeros64(a.words[w]) + 1
			if a.next >= a.n {
				a.next = 0
			}
			return
		}
	}
	a.next = 0
}

// Occupy marks every block overlapping p as used. p may be a block, a
// larger prefix or a smaller one inside a block. It reports how many blocks
// were newly marked.
func (a *Allocator) Occupy(p netip.Prefix) (int, error) {
	first, last, err := a.span(p)
	if err != nil {
		return 0, err
	}
	newly := 0
	for i := first; i <= last; i++ {
		if !a.isSet(i) {
			a.set(i)
			newly++
		}
	}
	return newly, nil
}

// Release frees every block overlapping p. Releasing a free block is a no-op.
func (a *Allocator) Release(p netip.Prefix) error {
	first, last, err := a.span(p)
	if err != nil {
		return err
	}
	for i := first; i <= last; i++ {
		if a.isSet(i) {
			a.clear(i)
		}
	}
	return nil
}

// InUse reports whether the block holding p's address is used.
func (a *Allocator) InUse(p netip.Prefix) bool {
	first, _, err := a.span(p)
	return err == nil && a.isSet(first)
}

// Contains reports whether p lies inside the cluster range.
func (a *Allocator) Contains(p netip.Prefix) bool {
	_, _, err := a.span(p)
	return err == nil
}

// BlocksOf returns the blocks p covers: p's own block when p is a block or
// smaller, every block inside it when p is larger.
func (a *Allocator) BlocksOf(p netip.Prefix) ([]netip.Prefix, error) {
	first, last, err := a.span(p)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, last-first+1)
	for i := first; i <= last; i++ {
		out = append(out, a.prefix(i))
	}
	return out, nil
}

func (a *Allocator) span(p netip.Prefix) (int, int, error) {
	if !p.IsValid() || p.Addr().BitLen() != a.cluster.Addr().BitLen() ||
		p.Bits() < a.cluster.Bits() || !a.cluster.Contains(p.Addr()) {
		return 0, 0, fmt.Errorf("%v: %w %v", p, ErrOutOfRange, a.cluster)
	}
	p = p.Masked()
	off := fromAddr(p.Addr()).sub(a.base).rsh(uint(a.hostBits))
	first := int(off.lo)
	count := 1
	if p.Bits() < a.blockBits {
		count = 1 << (a.blockBits - p.Bits())
	}
	return first, first + count - 1, nil
}

func (a *Allocator) prefix(i int) netip.Prefix {
	addr := a.base.add(uint128{lo: uint64(i)}.lsh(uint(a.hostBits)))
	return netip.PrefixFrom(addr.toAddr(a.cluster.Addr().Is4()), a.blockBits)
}

// findFree returns the first free block at index >= from.
func (a *Allocator) findFree(from int) (int, bool) {
	if from >= a.n {
		return 0, false
	}
	w := from / 64
	// The rest of the starting word.
	if free := ^a.words[w] &^ (uint64(1)<<(from%64) - 1); free != 0 {
		return w*64 + bits.TrailingZeros64(free), true
	}
	// Then whole words, 64 at a time through the summary.
	w++
	for s := w / 64; s < len(a.full); s++ {
		notFull := ^a.full[s]
		if s == w/64 {
			notFull &^= uint64(1)<<(w%64) - 1
		}
		if notFull == 0 {
			continue
		}
		wi := s*64 + bits.TrailingZeros64(notFull)
		if wi >= len(a.words) {
			return 0, false
		}
		return wi*64 + bits.TrailingZeros64(^a.words[wi]), true
	}
	return 0, false
}

func (a *Allocator) isSet(i int) bool { return a.words[i/64]&(1<<(i%64)) != 0 }

func (a *Allocator) set(i int) {
	a.words[i/64] |= 1 << (i % 64)
	a.used++
	a.updateFull(i / 64)
}

func (a *Allocator) clear(i int) {
	a.words[i/64] &^= 1 << (i % 64)
	a.used--
	a.updateFull(i / 64)
}

func (a *Allocator) updateFull(w int) {
	if a.words[w] == ^uint64(0) {
		a.full[w/64] |= 1 << (w % 64)
	} else {
		a.full[w/64] &^= 1 << (w % 64)
	}
}

// uint128 is the minimal 128-bit arithmetic addresses need.
type uint128 struct{ hi, lo uint64 }

func fromAddr(a netip.Addr) uint128 {
	b := a.As16()
	var u uint128
	for i := 0; i < 8; i++ {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[i+8])
	}
	return u
}

func (u uint128) toAddr(is4 bool) netip.Addr {
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

func (u uint128) add(v uint128) uint128 {
	lo, carry := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, carry)
	return uint128{hi, lo}
}

func (u uint128) sub(v uint128) uint128 {
	lo, borrow := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, borrow)
	return uint128{hi, lo}
}

func (u uint128) lsh(n uint) uint128 {
	switch {
	case n == 0:
		return u
	case n >= 64:
		return uint128{hi: u.lo << (n - 64)}
	default:
		return uint128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
	}
}

func (u uint128) rsh(n uint) uint128 {
	switch {
	case n == 0:
		return u
	case n >= 64:
		return uint128{lo: u.hi >> (n - 64)}
	default:
		return uint128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
	}
}
