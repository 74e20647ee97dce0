package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestWrongTypeEveryKey writes, for every key in Reference, values of the wrong type
// into an otherwise valid file (a mapping where a number belongs, a word where a
// duration belongs, a scalar where a section or a list belongs, a list element or map
// value of the wrong type), and checks that Parse never panics and reports each at the
// file, the line of the value and the key's path, e.g.
// "wrong.yaml:5: upstreams.api.breaker.failure_rate: expected a number, got \"lots\"".
func TestWrongTypeEveryKey(t *testing.T) {
	checked := 0
	for _, doc := range Reference {
		segs := keySegments(doc.Key)
		typ, ok := typeAt(reflect.TypeFor[Config](), segs)
		if !ok {
			t.Errorf("%s: no such field in Config", doc.Key)
			continue
		}
		for _, bad := range wrongValues(typ) {
			name := doc.Key + " = " + bad.yaml
			t.Run(name, func(t *testing.T) {
				checked++
				src, line := documentWith(t, segs, bad)
				want := concretePath(segs) + bad.suffix
				var err error
				func() {
					defer func() {
						if p := recover(); p != nil {
							t.Fatalf("Parse panicked: %v\n%s", p, src)
						}
					}()
					_, err = ParseWithEnv("wrong.yaml", src, nil)
				}()
				var errs *Errors
				if !errors.As(err, &errs) {
					t.Fatalf("got %v (%T), want *Errors for:\n%s", err, err, src)
				}
				for _, fe := range *errs {
					if fe.Path == want && fe.File == "wrong.yaml" && fe.Line == line && fe.Msg != "" {
						prefix := fmt.Sprintf("wrong.yaml:%d: %s: ", line, want)
						if !strings.HasPrefix(fe.Error(), prefix) {
							t.Errorf("error %q does not start with %q", fe.Error(), prefix)
						}
						return
					}
				}
				t.Errorf("no error at wrong.yaml:%d for %s; got:\n%v\nin:\n%s", line, want, err, src)
			})
		}
	}
	if checked < 2*len(Reference) {
		t.Errorf("checked %d wrong values for %d keys", checked, len(Reference))
	}
}

// keySegments splits a Reference key: "routes[].host" → routes, [], host.
func keySegments(key string) []string {
	var out []string
	for s := range strings.SplitSeq(key, ".") {
		if base, ok := strings.CutSuffix(s, "[]"); ok {
			out = append(out, base, "[]")
			continue
		}
		out = append(out, s)
	}
	return out
}

// concretePath is the field path an error names: <name> → api, [] → [0].
func concretePath(segs []string) string {
	var b strings.Builder
	for i, s := range segs {
		switch {
		case s == "[]":
			b.WriteString("[0]")
		case i > 0:
			b.WriteString("." + name(s))
		default:
			b.WriteString(name(s))
		}
	}
	return b.String()
}

func name(seg string) string {
	if seg == "<name>" {
		return "api"
	}
	return seg
}

// typeAt follows segs from t by yaml tags, map values and slice elements.
func typeAt(t reflect.Type, segs []string) (reflect.Type, bool) {
	for _, s := range segs {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case s == "[]" && t.Kind() == reflect.Slice, s == "<name>" && t.Kind() == reflect.Map:
			t = t.Elem()
		case t.Kind() == reflect.Struct:
			i, ok := yamlFields(t)[s]
			if !ok {
				return nil, false
			}
			t = t.Field(i).Type
		default:
			return nil, false
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t, true
}

// badValue is a value of the wrong type, as inline YAML, and where the error lands
// relative to the key ("" or an element such as "[0]").
type badValue struct{ yaml, suffix string }

func wrongValues(t reflect.Type) []badValue {
	mapping, list, word := badValue{"{wrong: type}", ""}, badValue{"[wrong, type]", ""}, badValue{"oops", ""}
	switch {
	case t == durationType:
		return []badValue{{"soon", ""}, {"30", ""}, mapping}
	case t.Kind() == reflect.Struct:
		return []badValue{word, list}
	case t.Kind() == reflect.Map:
		out := []badValue{list, word}
		if t.Elem().Kind() == reflect.String {
			out = append(out, badValue{"{X-Key: [1, 2]}", ".X-Key"})
		}
		return out
	case t.Kind() == reflect.Slice:
		out := []badValue{word, mapping, {"[{a: 1}]", "[0]"}}
		if t.Elem().Kind() == reflect.Struct {
			out[2] = badValue{"[oops]", "[0]"}
		}
		if t.Elem().Kind() == reflect.Int {
			out = append(out, badValue{"[twelve]", "[0]"})
		}
		return out
	case t.Kind() == reflect.String:
		return []badValue{mapping, list}
	case t.Kind() == reflect.Bool:
		return []badValue{{"maybe", ""}, mapping}
	case t.Kind() == reflect.Int:
		return []badValue{{"twelve", ""}, {"1.5", ""}, list}
	case t.Kind() == reflect.Float64:
		return []badValue{{"lots", ""}, mapping}
	}
	panic("no wrong values for " + t.String())
}

// documentWith returns a valid config with the value at segs replaced by bad, and the
// line bad is on.
func documentWith(t *testing.T, segs []string, bad badValue) ([]byte, int) {
	t.Helper()
	var root yaml.Node
	base := "upstreams:\n  api:\n    targets: [\"http://127.0.0.1:1\"]\nroutes:\n  - upstream: api\n"
	if err := yaml.Unmarshal([]byte(base), &root); err != nil {
		t.Fatal(err)
	}
	var val yaml.Node
	if err := yaml.Unmarshal([]byte("v: "+bad.yaml), &val); err != nil {
		t.Fatalf("bad value %q: %v", bad.yaml, err)
	}
	v := val.Content[0].Content[1]
	setFlow(v)
	set(root.Content[0], segs, v)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		t.Fatal(err)
	}
	var back yaml.Node
	if err := yaml.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("re-reading:\n%s\n%v", buf.String(), err)
	}
	n := walk(back.Content[0], segs)
	if n == nil {
		t.Fatalf("value not found in:\n%s", buf.String())
	}
	return buf.Bytes(), n.Line
}

func setFlow(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = yaml.FlowStyle
	}
	for _, c := range n.Content {
		setFlow(c)
	}
}

func scalar(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// set puts v at segs under the mapping n, creating what is missing (a webhook gets the
// url it needs).
func set(n *yaml.Node, segs []string, v *yaml.Node) {
	s := segs[0]
	if s == "[]" {
		if len(n.Content) == 0 {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.MappingNode,
				Content: []*yaml.Node{scalar("url"), scalar("http://127.0.0.1:9/hook")}})
		}
		if len(segs) == 1 {
			n.Content[0] = v
			return
		}
		set(n.Content[0], segs[1:], v)
		return
	}
	key := name(s)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			if len(segs) == 1 {
				n.Content[i+1] = v
				return
			}
			child := n.Content[i+1]
			if child.Kind != yaml.MappingNode && child.Kind != yaml.SequenceNode {
				child = newContainer(segs[1])
				n.Content[i+1] = child
			}
			set(child, segs[1:], v)
			return
		}
	}
	if len(segs) == 1 {
		n.Content = append(n.Content, scalar(key), v)
		return
	}
	child := newContainer(segs[1])
	n.Content = append(n.Content, scalar(key), child)
	set(child, segs[1:], v)
}

func newContainer(next string) *yaml.Node {
	if next == "[]" {
		return &yaml.Node{Kind: yaml.SequenceNode}
	}
	return &yaml.Node{Kind: yaml.MappingNode}
}

// walk finds the value node at segs under the mapping n.
func walk(n *yaml.Node, segs []string) *yaml.Node {
	for _, s := range segs {
		switch {
		case s == "[]":
			if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
				return nil
			}
			n = n.Content[0]
		case n.Kind == yaml.MappingNode:
			var next *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == name(s) {
					next = n.Content[i+1]
				}
			}
			if next == nil {
				return nil
			}
			n = next
		default:
			return nil
		}
	}
	return n
}
