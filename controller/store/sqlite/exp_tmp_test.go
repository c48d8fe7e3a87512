package sqlite

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-net/keyhole/internal/api"
)

func BenchmarkExpTmp(b *testing.B) {
	s, devs := openBench(b)
	for _, q := range strings.Split(os.Getenv("EXP_SQL"), ";") {
		if q = strings.TrimSpace(q); q != "" {
			if _, err := s.w.Exec(q); err != nil {
				b.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	now := time.Now().UTC()
	i := 0
	start := time.Now()
	for b.Loop() {
		g := benchGrant(api.GrantID(fmt.Sprint("grt_", i)), devs[i%len(devs)], now)
		if err := s.CreateGrant(ctx, g, benchEvent(g)); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(i)/time.Since(start).Seconds(), "grants/s")
}
