package relay

import (
	"sync"
	"time"
)

// refusalLogsPerSecond bounds the relay's own refusal lines: anyone can
// send it bad credentials, and the counters in Stats say how many there
// were.
const refusalLogsPerSecond = 10

// logLimiter allows a fixed number of log lines per wall-clock second.
type logLimiter struct {
	mu     sync.Mutex // guards second, n
	second int64
	n      int
}

func (l *logLimiter) allow() bool {
	sec := time.Now().Unix()
	l.mu.Lock()
	defer l.mu.Unlock()
	if sec != l.second {
		l.second, l.n = sec, 0
	}
	l.n++
	return l.n <= refusalLogsPerSecond
}
