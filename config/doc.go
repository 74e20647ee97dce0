// Package config loads, defaults, validates and documents fuseproxy's YAML
// configuration.
//
// Load (or Parse / ParseWithEnv) runs these steps:
//
//  1. Parse the YAML into a node tree (syntax errors carry file:line).
//  2. Decode the tree onto Default() with a small reflective decoder driven by the
//     yaml struct tags. Each upstream starts from DefaultUpstream(), each route from
//     DefaultRoute() and each webhook from DefaultWebhook(). Scalar values may use
//     ${VAR} and ${VAR:-default} (see "Environment" below). Unknown keys, duplicate
//     keys, wrong types and malformed durations are reported, all of them at once.
//  3. Apply environment overrides (ApplyEnv): the environment beats the file.
//  4. Validate, filling the derived fields Upstream.TargetURLs and
//     Failure.FailureStatus.
//
// Every problem is a FieldError "file:line: dotted.path: message", for example
//
//	config.yaml:12: upstreams.payments.breaker.failure_rate: must be between 0 and 100, got 120
//
// and all of a file's problems come back together as one *Errors, sorted by line.
//
// # YAML details
//
// A key with a null value ("timeout:" or "timeout: ~") keeps its default. Lists and
// maps given in the file replace their default rather than adding to it. Anchors,
// aliases and merge keys ("<<: *common") work as in YAML 1.1; top-level keys starting
// with "x-" are ignored, so they can hold shared anchors:
//
//	x-breaker: &breaker {failure_rate: 25, open_duration: 1m}
//	upstreams:
//	  payments: {targets: [http://10.0.0.5:8080], breaker: *breaker}
//
// Only one YAML document per file is accepted.
//
// # Environment
//
// In any scalar value, ${NAME} is replaced by the environment variable NAME (an
// error names the place when NAME is unset), ${NAME:-default} by NAME or, when NAME
// is unset or empty, by default, and $$ by a single $. A $ followed by anything else
// is kept as is. Keys are never expanded, and a substituted value is not expanded
// again.
//
// Independently, a few well-known variables override fields after decoding (see
// ApplyEnv and the Env column of Reference), so that containers can be configured
// without editing the file.
package config
