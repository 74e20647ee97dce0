package servertls

import (
	"crypto/tls"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fuseproxy/fuseproxy/config"
	"github.com/fuseproxy/fuseproxy/internal/testutil/testca"
)

// A certificate file that becomes unreadable (removed, or rewritten with garbage) keeps
// the last good pair in use, says so at warn once per change, and the pair written
// next is picked up at the next look.
func TestUnreadableFileKeepsTheLastGoodPair(t *testing.T) {
	ca := testca.New(t, "CA")
	dir := t.TempDir()
	crt, key := ca.IssueFiles(t, dir, "site", "a.test", []string{"a.test"})
	core, logs := observer.New(zap.WarnLevel)
	s, err := New("server.tls", config.ListenerTLS{Certificates: []config.Certificate{{CertFile: crt, KeyFile: key}}}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.now = func() time.Time { return now }
	hello := &tls.ClientHelloInfo{ServerName: "a.test"}
	first, _ := s.GetCertificate(hello)

	for _, step := range []struct {
		name  string
		write func()
	}{
		{"removed", func() { _ = os.Remove(crt) }},
		{"garbage", func() { testca.WriteFile(t, crt, []byte("not a certificate")) }},
	} {
		step.write()
		now = now.Add(CheckEvery)
		got, err := s.GetCertificate(hello)
		if err != nil || got != first {
			t.Fatalf("%s: got another certificate (%v); want the last good one", step.name, err)
		}
		now = now.Add(CheckEvery) // looked at again: no second warning for the same change
		_, _ = s.GetCertificate(hello)
	}
	if n := logs.FilterMessage("listener TLS certificate not reloaded; the last good one stays in use").Len(); n != 2 {
		t.Errorf("%d warnings, want 2 (one per change): %v", n, logs.All())
	}
	ca.IssueFiles(t, dir, "site", "a.test", []string{"a.test"}) // the same paths
	now = now.Add(CheckEvery)
	got, _ := s.GetCertificate(hello)
	if got == first {
		t.Error("the pair written after the failures was not loaded")
	}
	// Between looks, nothing is read.
	_ = os.Remove(crt)
	now = now.Add(CheckEvery / 2)
	if again, _ := s.GetCertificate(hello); again != got {
		t.Error("the files were looked at before CheckEvery passed")
	}
}
