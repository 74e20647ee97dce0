// Package proxy is fuseproxy's HTTP data plane: a reverse proxy that routes each
// request to a named upstream and guards every upstream with its circuit breaker.
//
// A request goes through these steps (Proxy.ServeHTTP in proxy.go runs them):
//
//  1. Request checks (request.go): CONNECT is answered 405; a path not starting with
//     "/" (the asterisk form included) or hiding a dot-segment, an invalid Host, or an
//     Upgrade that is not printable ASCII is answered 400. A request with a chunked
//     body gets Connection: close on every answer. Routing uses the cleaned path.
//  2. Routing (routeindex.go, route.go): the first configured route whose host, path
//     prefix and methods match the request. The index makes the lookup cost
//     independent of the number of hosts, and of the number of path prefixes (a prefix
//     trie). No match is answered 404.
//  3. Admission: the upstream's bulkhead (bulkhead.go, max_concurrent_requests), then
//     its breaker.Breaker, admits the request or rejects it; a rejection is answered
//     with the upstream's fallback response and never reaches the upstream.
//  4. Forwarding: a httputil.ReverseProxy per route, whose Rewrite (rewrite.go) sets
//     the outbound path, upgrade and forwarding headers, sends the request to the
//     upstream's next target (round-robin, upstream.go) over a tuned http.Transport
//     (transport.go), shared by the upstreams with the same targets and transport
//     settings. Streaming responses (server-sent events,
//     chunked bodies) are flushed as they arrive; protocol upgrades the upstream allows
//     (upgrade_protocols: WebSocket by default, never h2c unless listed) are tunnelled,
//     others are stripped. Forwarding headers are believed only from
//     server.trusted_proxies.
//  5. Classification (exchange.go): the response status, or the error, becomes a
//     breaker outcome (success, failure or ignored), reported exactly once, and a
//     Result for the Recorder. A success whose body the upstream then breaks off is
//     taken back as a failure (breaker.LateFailure, Recorder.BodyBroken). A request
//     the access log sampled is handed to it (AccessLog.Log) when it ends.
//  6. gRPC (grpc.go): an answer of Content-Type application/grpc is classified by its
//     grpc-status, in the headers (trailers-only) or, taking back the headers'
//     success, in the trailers; an open circuit answers gRPC clients with grpc-status
//     14; grpc-timeout bounds the upstream request. HTTP/2 to the upstream is ALPN for
//     https targets, h2c (prior knowledge) for http targets with upstreams.<n>.h2c.
//
// Every response the proxy writes itself (the fallback, the bulkhead's refusal, and
// its 400, 404, 405, 413, 502 and 504 bodies) is built in responses.go.
//
// Config reloads swap the whole routing table atomically (Proxy.Update).
package proxy
