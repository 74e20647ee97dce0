package config

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads the config file at path and returns it decoded onto the defaults,
// overridden by the process environment (ApplyEnv) and validated. Problems with the
// file's content are returned as *Errors; a file that cannot be read gives the
// os error, wrapped (errors.Is(err, fs.ErrNotExist) works). The file is read with
// ReadFile: it must be a regular file of at most MaxFileSize bytes.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is Load for a file already read; path is used only in messages.
func Parse(path string, data []byte) (*Config, error) {
	return ParseWithEnv(path, data, os.LookupEnv)
}

// ParseWithEnv is Parse with the environment read through lookup, both for ${VAR}
// expansion and for ApplyEnv. A nil lookup means an empty environment.
func ParseWithEnv(path string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	root, err := parseYAML(path, data)
	if err != nil {
		return nil, err
	}

	cfg := Default()
	d := newDecoder(path, lookup)
	d.document(root, cfg)
	problems := d.errors()
	// Fuse's store names, before the REDIS_* variables look at the driver.
	cfg.Store.Driver = StoreDriver(cfg.Store.Driver)
	set, envErrs := applyEnv(cfg, lookup)
	problems = append(problems, envErrs...)
	// The token as operators write it (validate reports one CleanToken refuses).
	if tok, err := CleanToken(cfg.Admin.Token); err == nil {
		cfg.Admin.Token = tok
	}

	cfg.Path = path
	cfg.origin = &origin{file: path, lines: d.lines, env: set}

	// A field that failed to decode kept its default; do not also report what
	// validation thinks of that default.
	for _, e := range cfg.validate() {
		if !within(e.Path, d.failed) {
			problems = append(problems, e)
		}
	}
	if err := problems.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseYAML parses data, which must hold at most one YAML document, into a node tree.
func parseYAML(path string, data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, syntaxError(path, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
		return &doc, nil
	case err != nil:
		return nil, syntaxError(path, err)
	default:
		return nil, Errors{{File: path, Line: extra.Line, Msg: `only one YAML document is allowed (remove the second "---")`}}.err()
	}
}

// syntaxError turns yaml.v3's "yaml: line 3: did not find expected key" into
// "path:3: invalid YAML: did not find expected key".
func syntaxError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				line, msg = n, text
			}
		}
	}
	return Errors{{File: path, Line: line, Msg: "invalid YAML: " + msg}}.err()
}
