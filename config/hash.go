package config

import (
	"fmt"
	"hash/fnv"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Hash returns a short stable fingerprint of the breaker settings: 16 hex digits of
// FNV-64a over a canonical "key=value;" encoding of every field, in declaration
// order. Replicas sharing a store compare hashes to detect that they disagree about
// an upstream's breaker. Settings that are equal hash equally; adding a field to
// Breaker changes every hash, which is intended (old and new replicas differ).
func (b *Breaker) Hash() string { return hashFields("", b) }

// outlierRules names the rules Outlier.Settings translates the section into. Change it
// when the translation changes (a setting of the target circuits is added, or a key is
// mapped differently): replicas that translate differently must not hash alike.
const outlierRules = "outlier/1:gateway-run,linear-backoff,trip-decay=interval;"

// Hash identifies the outlier settings the same way, for the targets' circuits; it
// covers the translation into their breaker settings too (outlierRules).
func (o *Outlier) Hash() string { return hashFields(outlierRules, o) }

// hashFields hashes prefix and the yaml-named fields of the struct p points to.
func hashFields(prefix string, p any) string {
	var enc strings.Builder
	enc.WriteString(prefix)
	v := reflect.ValueOf(p).Elem()
	for i := range v.NumField() {
		key, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		enc.WriteString(key + "=" + canonical(v.Field(i).Interface()) + ";")
	}
	h := fnv.New64a()
	h.Write([]byte(enc.String()))
	return fmt.Sprintf("%016x", h.Sum64())
}

// canonical encodes one breaker field unambiguously.
func canonical(x any) string {
	switch x := x.(type) {
	case time.Duration:
		return strconv.FormatInt(int64(x), 10)
	case float64:
		if x == 0 {
			x = 0 // fold -0 into 0
		}
		return strconv.FormatFloat(x, 'g', -1, 64)
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}
