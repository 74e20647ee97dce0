// Package proxy is fuseproxy's HTTP data plane: a reverse proxy that routes each
// request to a named upstream and guards every upstream with its circuit breaker.
//
// A request goes through these steps:
//
//  1. Routing (route.go): the first configured route whose host, path prefix and
//     methods match the request. The index makes the lookup cost independent of the
//     number of hosts, and of the number of path prefixes (a prefix trie).
//  2. Admission: the upstream's breaker.Breaker admits the request or rejects it; a
//     rejection is answered with the upstream's fallback response (responses.go) and
//     never reaches the upstream.
//  3. Forwarding: a httputil.ReverseProxy per route, with a Rewrite function, sends the
//     request to the upstream's next target (round-robin) over a tuned http.Transport
//     (transport.go), shared by the upstreams with the same targets and transport
//     settings. Streaming responses (server-sent events,
//     chunked bodies) are flushed as they arrive; protocol upgrades the upstream allows
//     (upgrade_protocols: WebSocket by default, never h2c unless listed) are tunnelled,
//     others are stripped. Forwarding headers are believed only from
//     server.trusted_proxies.
//  4. Classification (exchange.go): the response status, or the error, becomes a
//     breaker outcome (success, failure or ignored), reported exactly once, and a
//     Result for the Recorder. A success whose body the upstream then breaks off is
//     taken back as a failure (breaker.LateFailure, Result FailureBody).
//
// Config reloads swap the whole routing table atomically (Proxy.Update).
package proxy
