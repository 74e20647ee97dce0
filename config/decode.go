package config

import (
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

const (
	// maxAliasVisits bounds the nodes one decode may visit beyond those written in the
	// file: aliases let a small file describe a huge tree ("billion laughs"). Real
	// configs use a tiny fraction. (The file's own nodes are bounded by MaxFileSize.)
	maxAliasVisits = 1 << 18
	// maxMergeDepth bounds merge keys nested inside merged mappings.
	maxMergeDepth = 32
	// maxErrors bounds the problems reported for one file.
	maxErrors = 100
)

// decoder fills Go values from a yaml.Node tree by reflection, driven by the yaml
// struct tags. It never stops at the first problem: each becomes a FieldError with
// the file, the node's line and the dotted field path, and decoding moves on. It
// also records the line of every key it sees, so validation can point at the file.
type decoder struct {
	file    string
	lookup  func(string) (string, bool) // environment for ${VAR}
	lines   map[string]int              // field path -> line of its key or list item
	failed  map[string]bool             // field paths whose value could not be decoded
	errs    Errors
	dropped int // problems beyond maxErrors
	visits  int
	// maxVisits is the nodes written in the file plus maxAliasVisits (set by document).
	maxVisits int
}

func newDecoder(file string, lookup func(string) (string, bool)) *decoder {
	return &decoder{file: file, lookup: lookup, lines: make(map[string]int), failed: make(map[string]bool)}
}

// errorf records a problem at node n.
func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		d.dropped++
		return
	}
	d.errs = append(d.errs, FieldError{File: d.file, Line: n.Line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// fail records that the value at path could not be decoded: it keeps its default.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.failed[path] = true
	d.errorf(n, path, format, args...)
}

// errors returns the recorded problems, noting any that were dropped.
func (d *decoder) errors() Errors {
	if d.dropped > 0 {
		return append(d.errs, FieldError{File: d.file, Msg: fmt.Sprintf("%d more problems not shown", d.dropped)})
	}
	return d.errs
}

// visit follows an alias to the node it names and counts the visit against maxVisits.
// It returns false when decoding must stop.
func (d *decoder) visit(n *yaml.Node) (*yaml.Node, bool) {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n == nil {
		return nil, false
	}
	d.visits++
	if d.visits == d.maxVisits {
		d.fail(n, "", "document too large once aliases are expanded (more than %d values beyond the file's own)", maxAliasVisits)
	}
	return n, d.visits < d.maxVisits
}

// document decodes a parsed file onto cfg.
func (d *decoder) document(doc *yaml.Node, cfg *Config) {
	d.maxVisits = countNodes(doc) + maxAliasVisits
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		d.decode(doc.Content[0], reflect.ValueOf(cfg).Elem(), "")
	}
}

// countNodes counts the nodes written in a parsed file, not following aliases.
func countNodes(n *yaml.Node) int {
	c := 1
	for _, child := range n.Content {
		c += countNodes(child)
	}
	return c
}

// decode fills v from n. A null node leaves v as it is, that is at its default.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	n, ok := d.visit(n)
	if !ok || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return
	}
	switch {
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case v.Kind() == reflect.Struct:
		d.decodeStruct(n, v, path)
	case v.Kind() == reflect.Map:
		d.decodeMap(n, v, path)
	case v.Kind() == reflect.Slice:
		d.decodeSlice(n, v, path)
	default:
		d.decodeScalar(n, v, path)
	}
}

// decodeStruct decodes a mapping onto the struct's fields, keyed by yaml tag.
func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	fields := yamlFields(v.Type())
	for _, p := range d.pairs(n, path, 0) {
		key := p.key.Value
		i, ok := fields[key]
		switch {
		case ok:
			d.field(p, v.Field(i), joinPath(path, key))
		case path == "" && strings.HasPrefix(key, "x-"):
			// An extension key: free-form, e.g. a home for YAML anchors.
		default:
			d.errorf(p.key, joinPath(path, key), "unknown key%s", suggest(key, v.Type()))
		}
	}
}

// decodeMap decodes a mapping into a new map, replacing the default one. Each value
// starts from elementDefault (DefaultUpstream for upstreams).
func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	m := reflect.MakeMap(v.Type())
	for _, p := range d.pairs(n, path, 0) {
		elem := elementDefault(v.Type().Elem())
		d.field(p, elem, joinPath(path, p.key.Value))
		m.SetMapIndex(reflect.ValueOf(p.key.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

// decodeSlice decodes a sequence into a new slice, replacing the default one. Each
// item starts from elementDefault (DefaultRoute for routes).
func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "expected a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		elem := elementDefault(v.Type().Elem())
		d.lines[p] = item.Line
		d.decode(item, elem, p)
		s = reflect.Append(s, elem)
	}
	v.Set(s)
}

// field records where a key is and decodes its value.
func (d *decoder) field(p pair, v reflect.Value, path string) {
	d.lines[path] = p.key.Line
	d.decode(p.val, v, path)
}

// decodeScalar parses a scalar, after ${VAR} expansion, by the target's type.
func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "expected %s, got %s", typeName(v.Type()), describe(n))
		return
	}
	s, err := expand(n.Value, d.lookup)
	if err != nil {
		d.fail(n, path, "%v", err)
		return
	}
	got := quote(s)
	if s != n.Value {
		got += " (from " + quote(n.Value) + ")"
	}
	switch {
	case v.Type() == durationType:
		dur, err := time.ParseDuration(s)
		if err != nil {
			hint := ""
			if _, err := strconv.ParseFloat(s, 64); err == nil {
				hint = ` (missing unit, e.g. "30s")`
			}
			d.fail(n, path, "invalid duration %s%s", got, hint)
			return
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, ok := parseBool(s)
		if !ok {
			d.fail(n, path, "expected true or false, got %s", got)
			return
		}
		v.SetBool(b)
	case v.CanInt():
		i, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			d.fail(n, path, "expected an integer, got %s", got)
			return
		}
		v.SetInt(i)
	case v.CanFloat():
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(n, path, "expected a number, got %s", got)
			return
		}
		v.SetFloat(f)
	default:
		panic("config: no decoder for field type " + v.Type().String())
	}
}

// pair is one "key: value" entry of a YAML mapping.
type pair struct{ key, val *yaml.Node }

// pairs returns the entries of mapping n in the order they apply. Merge keys
// ("<<: *anchor" or "<<: [*a, *b]") come first, so the mapping's own keys override
// merged ones. A key written twice is reported and its second value ignored.
func (d *decoder) pairs(n *yaml.Node, path string, depth int) []pair {
	var merged, own []pair
	seen := make(map[string]int) // key -> line
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, ok := d.visit(n.Content[i])
		if !ok {
			break
		}
		val := n.Content[i+1]
		if key.Kind != yaml.ScalarNode {
			d.errorf(key, path, "mapping keys must be strings, got %s", describe(key))
			continue
		}
		if first, dup := seen[key.Value]; dup {
			d.errorf(key, joinPath(path, key.Value), "duplicate key (first defined on line %d)", first)
			continue
		}
		seen[key.Value] = key.Line
		if key.ShortTag() == "!!merge" {
			merged = d.mergePairs(val, path, depth)
			continue
		}
		own = append(own, pair{key, val})
	}
	return append(merged, own...)
}

// mergePairs returns the entries a merge key brings in: those of one mapping, or of
// a list of mappings where earlier mappings win.
func (d *decoder) mergePairs(val *yaml.Node, path string, depth int) []pair {
	val, ok := d.visit(val)
	if !ok {
		return nil
	}
	if depth >= maxMergeDepth {
		d.errorf(val, path, "merge keys nested too deeply")
		return nil
	}
	sources := []*yaml.Node{val}
	if val.Kind == yaml.SequenceNode {
		sources = val.Content
	}
	var out []pair
	for _, src := range slices.Backward(sources) { // later first, so earlier override
		src, ok := d.visit(src)
		if !ok {
			break
		}
		if src.Kind != yaml.MappingNode {
			d.errorf(src, path, `merge key "<<" needs a mapping or a list of mappings, got %s`, describe(src))
			continue
		}
		out = append(out, d.pairs(src, path, depth+1)...)
	}
	return out
}

// durationType is the one named scalar type decoded specially.
var durationType = reflect.TypeFor[time.Duration]()

// yamlFields maps a struct's yaml keys to field indexes. Fields tagged "-" and
// untagged fields are not keys.
func yamlFields(t reflect.Type) map[string]int {
	fields := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && t.Field(i).IsExported() {
			fields[name] = i
		}
	}
	return fields
}

// typeName names what a value of type t looks like in YAML, for messages.
func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return `a duration such as "30s"`
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "an integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	}
	return t.String()
}

// describe names what node n is, for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return quote(n.Value)
}

// parseBool accepts YAML 1.2's core booleans.
func parseBool(s string) (value, ok bool) {
	switch s {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	return false, false
}

// suggest returns " (did you mean X?)" for an unknown key of struct t, or "". X is a
// key of t that is a near-miss spelling of key, or "section.key" when key belongs one
// level down (e.g. failure_rate written directly under an upstream).
func suggest(key string, t reflect.Type) string {
	fields := yamlFields(t)
	names := slices.Sorted(maps.Keys(fields))
	norm := normalizeKey(key)
	best, bestDist := "", max(1, len(norm)/3)+1 // allow about one typo per three letters
	for _, name := range names {
		if dist := editDistance(norm, normalizeKey(name)); dist < bestDist {
			best, bestDist = name, dist
		}
	}
	if best == "" {
		for _, name := range names {
			ft := t.Field(fields[name]).Type
			if ft.Kind() == reflect.Struct {
				if _, ok := yamlFields(ft)[key]; ok {
					best = name + "." + key
					break
				}
			}
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// normalizeKey folds case and drops separators, so failureRate ~ failure_rate.
func normalizeKey(s string) string {
	return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
