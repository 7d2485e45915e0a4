package allocator

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestAllocateAll(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		mask    int
		first   string
		last    string
	}{
		{"10.0.0.0/8", 24, "10.0.0.0/24", "10.255.255.0/24"},
		{"10.64.0.0/14", 26, "10.64.0.0/26", "10.67.255.192/26"},
		{"192.168.0.0/30", 32, "192.168.0.0/32", "192.168.0.3/32"},
		{"10.1.0.0/16", 16, "10.1.0.0/16", "10.1.0.0/16"},
		{"fd00:10::/48", 64, "fd00:10::/64", "fd00:10:0:ffff::/64"},
		{"fd00::/100", 112, "fd00::/112", "fd00::fff:0/112"},
	} {
		t.Run(fmt.Sprintf("%s_%d", tc.cluster, tc.mask), func(t *testing.T) {
			a, err := New(netip.MustParsePrefix(tc.cluster), tc.mask)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[netip.Prefix]bool{}
			var first, last netip.Prefix
			for i := 0; i < a.Size(); i++ {
				p, err := a.Allocate()
				if err != nil {
					t.Fatalf("allocation %d of %d: %v", i, a.Size(), err)
				}
				if seen[p] {
					t.Fatalf("%v handed out twice", p)
				}
				if !a.cluster.Contains(p.Addr()) || p.Bits() != tc.mask {
					t.Fatalf("%v not a /%d inside %v", p, tc.mask, tc.cluster)
				}
				seen[p] = true
				if i == 0 {
					first = p
				}
				last = p
			}
			if first.String() != tc.first || last.String() != tc.last {
				t.Errorf("first %v last %v, want %s %s", first, last, tc.first, tc.last)
			}
			if _, err := a.Allocate(); !errors.Is(err, ErrRangeExhausted) {
				t.Fatalf("full pool: got %v, want ErrRangeExhausted", err)
			}
			if a.Free() != 0 || a.Used() != a.Size() {
				t.Fatalf("used %d free %d size %d", a.Used(), a.Free(), a.Size())
			}
		})
	}
}

func TestNextFitReusesReleasedLast(t *testing.T) {
	a, _ := New(netip.MustParsePrefix("10.0.0.0/22"), 24)
	p0, _ := a.Allocate()
	p1, _ := a.Allocate()
	if err := a.Release(p0); err != nil {
		t.Fatal(err)
	}
	p2, _ := a.Allocate()
	p3, _ := a.Allocate()
	if p2 == p0 || p3 == p0 {
		t.Fatalf("released %v reused before the free blocks after it (%v %v)", p0, p2, p3)
	}
	p4, err := a.Allocate()
	if err != nil || p4 != p0 {
		t.Fatalf("wrap-around: got %v %v, want %v", p4, err, p0)
	}
	_ = p1
}

func TestOccupyAndRelease(t *testing.T) {
	a, _ := New(netip.MustParsePrefix("10.0.0.0/16"), 24)
	for _, tc := range []struct {
		p     string
		newly int
		err   error
	}{
		{"10.0.5.0/24", 1, nil},
		{"10.0.5.0/24", 0, nil},
		{"10.0.6.64/26", 1, nil}, // smaller than a block: the holding block
		{"10.0.8.0/22", 4, nil},  // larger: every block inside
		{"10.1.0.0/24", 0, ErrOutOfRange},
		{"10.0.0.0/8", 0, ErrOutOfRange},
		{"fd00::/64", 0, ErrOutOfRange},
	} {
		n, err := a.Occupy(netip.MustParsePrefix(tc.p))
		if !errors.Is(err, tc.err) || n != tc.newly {
			t.Errorf("Occupy(%s) = %d, %v; want %d, %v", tc.p, n, err, tc.newly, tc.err)
		}
	}
	if a.Used() != 6 {
		t.Fatalf("used = %d, want 6", a.Used())
	}
	if !a.InUse(netip.MustParsePrefix("10.0.10.0/24")) || a.InUse(netip.MustParsePrefix("10.0.12.0/24")) {
		t.Fatal("InUse wrong")
	}
	if err := a.Release(netip.MustParsePrefix("10.0.8.0/22")); err != nil {
		t.Fatal(err)
	}
	if a.Used() != 2 {
		t.Fatalf("used after release = %d, want 2", a.Used())
	}
	for i := 0; i < a.Size()-2; i++ {
		p, err := a.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		if p.String() == "10.0.5.0/24" || p.String() == "10.0.6.0/24" {
			t.Fatalf("occupied block %v handed out", p)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		mask    int
	}{
		{"10.0.0.0/16", 8},
		{"10.0.0.0/16", 33},
		{"10.0.0.0/4", 30},
		{"fd00::/32", 64},
	} {
		if _, err := New(netip.MustParsePrefix(tc.cluster), tc.mask); err == nil {
			t.Errorf("New(%s, %d): no error", tc.cluster, tc.mask)
		}
	}
}

// FuzzAllocator drives random allocate/occupy/release sequences and checks
// that no block is ever handed out while in use and the counts stay right.
func FuzzAllocator(f *testing.F) {
	f.Add(uint8(20), uint8(24), []byte{0, 1, 2, 3, 0, 0, 5, 9, 200, 1})
	f.Add(uint8(0), uint8(6), []byte{1, 1, 1, 1, 255, 255})
	f.Fuzz(func(t *testing.T, clusterBits, extra uint8, ops []byte) {
		cb := 8 + int(clusterBits)%20
		mask := cb + int(extra)%13
		a, err := New(netip.PrefixFrom(netip.MustParseAddr("10.0.0.0"), cb).Masked(), mask)
		if err != nil {
			return
		}
		model := map[netip.Prefix]bool{}
		var held []netip.Prefix
		for i := 0; i+1 < len(ops); i += 2 {
			switch ops[i] % 3 {
			case 0:
				p, err := a.Allocate()
				if errors.Is(err, ErrRangeExhausted) {
					if len(model) != a.Size() {
						t.Fatalf("exhausted with %d of %d used", len(model), a.Size())
					}
					continue
				}
				if model[p] {
					t.Fatalf("%v handed out twice", p)
				}
				model[p] = true
				held = append(held, p)
			case 1:
				if len(held) == 0 {
					continue
				}
				k := int(ops[i+1]) % len(held)
				p := held[k]
				held = append(held[:k], held[k+1:]...)
				if err := a.Release(p); err != nil {
					t.Fatal(err)
				}
				delete(model, p)
			case 2:
				idx := int(ops[i+1]) % a.Size()
				p := a.prefix(idx)
				if _, err := a.Occupy(p); err != nil {
					t.Fatal(err)
				}
				if !model[p] {
					model[p] = true
					held = append(held, p)
				}
			}
			if a.Used() != len(model) {
				t.Fatalf("used %d, model %d", a.Used(), len(model))
			}
		}
	})
}

// BenchmarkAllocateRelease measures one Allocate plus one Release of a /24
// in a /8 (65,536 blocks) as the pool fills.
func BenchmarkAllocateRelease(b *testing.B) {
	for _, fill := range []float64{0, 0.5, 0.9, 0.99, 0.9999} {
		b.Run(fmt.Sprintf("fill=%v%%", fill*100), func(b *testing.B) {
			a, _ := New(netip.MustParsePrefix("10.0.0.0/8"), 24)
			// Fill pseudo-randomly so free blocks are scattered.
			target := int(float64(a.Size()) * fill)
			for i := 0; a.Used() < target; i++ {
				a.Occupy(a.prefix((i * 40503) % a.Size()))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p, err := a.Allocate()
				if err != nil {
					b.Fatal(err)
				}
				a.Release(p)
			}
		})
	}
}

// After a restart the cursor resumes past the highest block in use: a block
// freed below it is not the first one handed out again.
func TestSeekAfterLastUsed(t *testing.T) {
	a, err := New(netip.MustParsePrefix("10.0.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.0.0.0/24", "10.0.2.0/24", "10.0.70.0/24"} {
		a.Occupy(netip.MustParsePrefix(p))
	}
	a.SeekAfterLastUsed()
	if got, _ := a.Allocate(); got.String() != "10.0.71.0/24" {
		t.Errorf("first block after the seek: %v, want 10.0.71.0/24", got)
	}
	a.Occupy(netip.MustParsePrefix("10.0.255.0/24"))
	a.SeekAfterLastUsed()
	if got, _ := a.Allocate(); got.String() != "10.0.1.0/24" {
		t.Errorf("after the top block the cursor wraps: %v, want 10.0.1.0/24", got)
	}
	empty, _ := New(netip.MustParsePrefix("10.0.0.0/16"), 24)
	empty.SeekAfterLastUsed()
	if got, _ := empty.Allocate(); got.String() != "10.0.0.0/24" {
		t.Errorf("empty: %v", got)
	}
}

func TestBlocksOf(t *testing.T) {
	a, err := New(netip.MustParsePrefix("10.0.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		p    string
		want []string
	}{
		{"10.0.3.0/24", []string{"10.0.3.0/24"}},
		{"10.0.3.128/25", []string{"10.0.3.0/24"}},
		{"10.0.4.0/22", []string{"10.0.4.0/24", "10.0.5.0/24", "10.0.6.0/24", "10.0.7.0/24"}},
	} {
		got, err := a.BlocksOf(netip.MustParsePrefix(c.p))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("BlocksOf(%s) = %v, want %v", c.p, got, c.want)
		}
	}
	if _, err := a.BlocksOf(netip.MustParsePrefix("10.1.0.0/24")); err == nil {
		t.Error("BlocksOf outside the range: no error")
	}
}
