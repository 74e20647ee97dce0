package config

import (
	"reflect"
	"regexp"
	"testing"
	"time"
)

func TestBreakerHash(t *testing.T) {
	base := DefaultUpstream().Breaker
	h := base.Hash()
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(h) {
		t.Fatalf("Hash() = %q, want 16 hex digits", h)
	}
	// Pinned so an accidental change of the encoding is noticed: replicas running
	// different versions would disagree. Update deliberately if Breaker changes.
	if h != "ca5646bad237b05e" { // honor_retry_after added (issue #15)
		t.Errorf("default breaker hash = %s; if Breaker's fields changed on purpose, update this", h)
	}
	same := DefaultUpstream().Breaker
	if same.Hash() != h {
		t.Error("equal breakers hash differently")
	}

	// Changing any single field changes the hash.
	v := reflect.ValueOf(&base).Elem()
	for i := range v.NumField() {
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Int, reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Float64:
			f.SetFloat(f.Float() + 0.5)
		default:
			t.Fatalf("field %s: kind %s not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
		if changed.Hash() == h {
			t.Errorf("changing %s does not change the hash", v.Type().Field(i).Name)
		}
	}

	a, b := base, base
	a.Window, b.Window = time.Second, time.Second+time.Nanosecond
	if a.Hash() == b.Hash() {
		t.Error("a 1ns difference must change the hash")
	}
	a, b = base, base
	a.Jitter, b.Jitter = 0, negZero()
	if a.Hash() != b.Hash() {
		t.Error("0 and -0 must hash the same")
	}
}

func negZero() float64 {
	z := 0.0
	return -z
}

// TestOutlierHash: the target circuits' settings hash changes with every key of the
// outlier_detection section, and with the translation's version (outlierRules).
func TestOutlierHash(t *testing.T) {
	base := DefaultUpstream().Outlier
	h := base.Hash()
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(h) {
		t.Fatalf("Hash() = %q, want 16 hex digits", h)
	}
	if hashFields("", &base) == h {
		t.Error("the translation's version does not change the hash")
	}
	v := reflect.ValueOf(&base).Elem()
	for i := range v.NumField() {
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Int, reflect.Int64:
			f.SetInt(f.Int() + 1)
		case reflect.Float64:
			f.SetFloat(f.Float() + 0.5)
		default:
			t.Fatalf("field %s: kind %s not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
		if changed.Hash() == h {
			t.Errorf("changing %s does not change the hash", v.Type().Field(i).Name)
		}
	}
}
