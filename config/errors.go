package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one problem with a config: where it is and what is wrong.
type FieldError struct {
	File string // the path given to Parse/Load; empty when not tied to the file
	Line int    // 1-based line in File; 0 when unknown
	Path string // dotted field path, e.g. "routes[2].upstream"; "env NAME" for a variable
	Msg  string
}

// Error formats e as "file:line: path: msg", leaving out the parts that are empty.
func (e FieldError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one config, sorted by line (problems without a
// line last). Parse, Load, ApplyEnv and Validate return it as *Errors; use errors.As
// to get at the list, or at the first FieldError.
type Errors []FieldError

// Error returns one line per problem.
func (e *Errors) Error() string {
	lines := make([]string, len(*e))
	for i, fe := range *e {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns each FieldError, so errors.As(err, &fieldErr) finds the first one.
func (e *Errors) Unwrap() []error {
	errs := make([]error, len(*e))
	for i, fe := range *e {
		errs[i] = fe
	}
	return errs
}

// err returns e sorted and without repeats as an error, or nil when e is empty (a nil
// *Errors must never end up inside a non-nil error interface).
func (e Errors) err() error {
	if len(e) == 0 {
		return nil
	}
	seen := make(map[FieldError]bool, len(e))
	out := make(Errors, 0, len(e))
	for _, fe := range e {
		if !seen[fe] { // the same problem can be reached twice through a YAML alias
			seen[fe] = true
			out = append(out, fe)
		}
	}
	slices.SortStableFunc(out, func(a, b FieldError) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // unlocated problems go last
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return &out
}

// origin records where a parsed Config's values came from, so Validate and Warnings
// can point at the file. It is nil for a Config built in code.
type origin struct {
	file  string
	lines map[string]int    // field path -> line of its key (or list item) in the file
	env   map[string]string // field path -> environment variable that overrode it
}

// fieldError locates a problem with the field at path: at the variable that set it,
// at its line in the file, or at the line of the nearest enclosing key in the file
// (for a defaulted field).
func (o *origin) fieldError(path, msg string) FieldError {
	switch {
	case o == nil:
		return FieldError{Path: path, Msg: msg}
	case o.env[path] != "":
		return FieldError{Path: path, Msg: msg + " (set by env " + o.env[path] + ")"}
	}
	for p := path; p != ""; p = parentPath(p) {
		if line, ok := o.lines[p]; ok {
			return FieldError{File: o.file, Line: line, Path: path, Msg: msg}
		}
	}
	return FieldError{File: o.file, Path: path, Msg: msg}
}

// inFile reports whether the field at path was written in the file (and not then
// overridden by the environment).
func (o *origin) inFile(path string) bool {
	if o == nil || o.env[path] != "" {
		return false
	}
	_, ok := o.lines[path]
	return ok
}

// parentPath strips the last element off a field path: "a.b[2]" -> "a.b" -> "a" -> "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// joinPath appends a key to a field path.
func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// within reports whether path is at or under one of the given paths ("" is the root).
func within(path string, under map[string]bool) bool {
	for p := path; ; p = parentPath(p) {
		if under[p] {
			return true
		}
		if p == "" {
			return false
		}
	}
}

// quote quotes s for a message, shortening long values.
func quote(s string) string {
	const max = 40
	if r := []rune(s); len(r) > max {
		return strconv.Quote(string(r[:max])) + "..."
	}
	return strconv.Quote(s)
}
