package config

import "strings"

// FieldDoc documents one configuration key.
type FieldDoc struct {
	Key     string // dotted path: "upstreams.<name>.breaker.failure_rate", "routes[].upstream"
	Default string // as written in YAML; `""` for an empty string, empty for sections
	Env     string // environment variable that overrides the key, if any (see ApplyEnv)
	Doc     string
}

// Reference documents every configuration key, in file order. A test checks that it
// covers every yaml key of Config and that its defaults match Default(),
// DefaultUpstream(), DefaultRoute() and DefaultWebhook(), so it cannot drift.
var Reference = []FieldDoc{
	{"listen", ":8080", "", "Address the proxy listens on, host:port (an empty host means every interface)."},

	{"server", "", "", "HTTP server settings of the proxy listener."},
	{"server.read_header_timeout", "10s", "", "Time allowed to read a request's headers. A client that sends its headers a byte at a time (slow loris) holds a connection no longer than this; 10 s is ample for any real client."},
	{"server.read_timeout", "0s", "", "Time allowed to read a whole request, body included; 0 means no limit, so request bodies can stream."},
	{"server.write_timeout", "0s", "", "Time allowed to write a response; 0 means no limit, so responses can stream. Bound requests with the upstream's timeout instead."},
	{"server.idle_timeout", "2m", "", "How long an idle keep-alive connection stays open. Longer than the 60 s idle timeout of common load balancers (AWS ALB), so a load balancer in front closes its idle connections first and never sends a request on one the proxy is closing; server.max_connections bounds what idle connections can hold meanwhile."},
	{"server.max_header_bytes", "1048576", "", "Largest request header block accepted, in bytes."},
	{"server.shutdown_timeout", "30s", "", "On shutdown, how long in-flight requests get to finish."},
	{"server.max_connections", "4096", "", "Most client connections open at once (idle keep-alive, in use and upgraded ones alike); 0 means no cap. A connection accepted past the cap is closed at once with a reset (not queued, so the client can try another replica at once) and counted in `fuseproxy_connections_rejected_total`. Idle keep-alive connections cost memory until server.idle_timeout closes them (4,096 took 93 MiB, about 23 KiB each), so the default bounds that to about 100 MiB; 5,000 used to be held at once."},
	{"server.body_read_timeout", "30s", "", "Progress deadline of request bodies: each read of a body must get bytes from the client within this time, and it is the grace period before body_min_rate applies; 0 turns both off. Unlike read_timeout it never cuts an upload that keeps moving, however big; a stalled one is cut after this time (nginx's client_body_timeout is 60 s, Apache's body timeout 20 s). gRPC calls (HTTP/2, Content-Type `application/grpc`) are exempt, as is body_min_rate: their request body is a stream of messages a client may leave idle for as long as the call lasts; the upstream's timeout and the client's `grpc-timeout` bound them."},
	{"server.body_min_rate", "500", "", "Least average rate of a request body, in bytes per second of waiting for the client, once body_read_timeout has passed; 0 turns the rule off. A client trickling a body (1 byte a second) holds its connection and an upstream connection only for about body_read_timeout. Time the upstream takes to accept the body does not count. 500 is Apache mod_reqtimeout's MinRate: slower than any real network."},
	{"server.trusted_proxies", "[]", "", "Peers (CIDR ranges such as `10.0.0.0/8`, or single addresses) allowed to tell the proxy who the client is. From them, `X-Forwarded-For` is appended to and `X-Forwarded-Host`, `X-Forwarded-Proto`, `Forwarded`, `X-Real-IP` and the other forwarding headers are passed on. From anyone else they are replaced: `X-Forwarded-For` becomes the peer's address, `X-Forwarded-Host`/`-Proto` the request's own, and `Forwarded`, `X-Real-IP`, `X-Forwarded-*` (port, prefix, server, ...), `X-Client-IP`, `True-Client-IP`, `X-Original-URL`, `X-Rewrite-URL` and the like, with `_` for `-` too, are removed. Empty by default: no one is trusted, so a client cannot choose the address or URL the upstream sees."},

	{"server.tls", "", "", "TLS on the proxy listener: on when certificates are listed. The files are read again when they change (checked at most once a second, at a new connection's handshake), so a certificate rotates without a restart; a file that fails to load (unreadable, or a certificate rewritten before its key) keeps the last good pair in use and says so at warn. Changing the list itself takes a restart."},
	{"server.tls.certificates", "[]", "", "PEM certificates (with their chains) and keys. A client gets the first one whose names match the name it asks for (SNI), else the first; so list one per site for several names on one address."},
	{"server.tls.certificates[].cert_file", `""`, "", "PEM certificate, leaf first, then intermediates."},
	{"server.tls.certificates[].key_file", `""`, "", "PEM private key of cert_file."},
	{"server.tls.min_version", "1.2", "", "Lowest TLS version accepted from clients: `1.2` or `1.3`."},
	{"server.http2", "true", "", "Offer HTTP/2 to TLS clients (ALPN `h2`); false serves HTTP/1.1 only. gRPC clients need it."},
	{"server.h2c", "false", "", "Accept cleartext HTTP/2 with prior knowledge (h2c, as gRPC clients without TLS speak it) on a listener without TLS. Off by default: such a connection is refused. An HTTP/1.1 `Upgrade: h2c` request is not this: it is tunnelled only to an upstream whose upgrade_protocols lists h2c (none by default)."},

	{"admin", "", "", "The admin API and metrics listener."},
	{"admin.listen", "127.0.0.1:8084", "", "Address of the admin API and /metrics, host:port. A non-loopback address requires a token."},
	{"admin.token", `""`, "FUSE_ADMIN_TOKEN", "Bearer token the admin API requires. Prefer the environment variable to writing it in the file. Surrounding whitespace (the trailing newline of a secret made from a file) is removed; a control character inside is an error."},
	{"admin.allowed_hosts", "[]", "", "Host names, besides IP addresses and `localhost`, that the admin API accepts in the Host header, any port: e.g. a Kubernetes service name Prometheus scrapes by. Any other name gets 403, so a DNS-rebinding web page cannot read the API. Empty by default: IP addresses and localhost cover the probes, `kubectl port-forward` and scrapes by pod IP."},
	{"admin.tls", "", "", "TLS on the admin listener: on when certificates are listed, read again when they change, as server.tls. HTTP/2 is offered to TLS clients."},
	{"admin.tls.certificates", "[]", "", "PEM certificates and keys, chosen by SNI as in server.tls."},
	{"admin.tls.certificates[].cert_file", `""`, "", "PEM certificate, leaf first, then intermediates."},
	{"admin.tls.certificates[].key_file", `""`, "", "PEM private key of cert_file."},
	{"admin.tls.min_version", "1.2", "", "Lowest TLS version accepted: `1.2` or `1.3`."},

	{"log", "", "", "Logging."},
	{"log.format", "json", "", "`json` or `console`."},
	{"log.level", "info", "", "`debug`, `info`, `warn` or `error`."},

	{"store", "", "", "Where breaker state lives."},
	{"store.driver", "memory", "FUSE_STORE", "`memory` (each process on its own), `redis` or `postgres` (state shared by all replicas through Redis or PostgreSQL). Fuse's store names are accepted too: `array` is memory, `cache` is redis, `database` is postgres."},
	{"store.replica_id", `""`, "FUSE_REPLICA_ID", "This replica's name in the shared store: 1-128 letters, digits, `_`, `.` or `-`. Empty means hostname-pid."},
	{"store.flush_interval", "100ms", "", "How often local counts are flushed to the shared store; at least 10ms."},
	{"store.redis", "", "", "Redis connection, used when store.driver is `redis`. The REDIS_* and FUSE_REDIS_* variables apply only then."},
	{"store.redis.url", `""`, "FUSE_REDIS_URL", "`redis://[user:password@]host:port/db`, or `rediss://` for TLS. When set, it replaces host, port and db; username and password, when set, still override the URL's. Query options `db`, `dial_timeout`, `read_timeout`, `write_timeout` and `pool_size` (`?dial_timeout=1s`, read as go-redis reads them) replace those keys; any other option is an error."},
	{"store.redis.host", "127.0.0.1", "REDIS_HOST", "Redis host."},
	{"store.redis.port", "6379", "REDIS_PORT", "Redis port, 1-65535."},
	{"store.redis.username", `""`, "REDIS_USERNAME", "ACL user name; empty for the default user."},
	{"store.redis.password", `""`, "REDIS_PASSWORD", "Password; prefer the environment variable."},
	{"store.redis.db", "0", "REDIS_DB", "Database number."},
	{"store.redis.tls", "", "", "TLS to Redis: on with `enabled`, with any other tls key set, or with a rediss:// URL; every tls key applies in each case."},
	{"store.redis.tls.enabled", "false", "", "Connect with TLS."},
	{"store.redis.tls.ca_file", `""`, "", "PEM CA bundle to verify the server with; empty means the system roots."},
	{"store.redis.tls.cert_file", `""`, "", "PEM client certificate for mutual TLS; set together with key_file."},
	{"store.redis.tls.key_file", `""`, "", "PEM private key of cert_file."},
	{"store.redis.tls.server_name", `""`, "", "Name to verify in the server certificate; empty means the host connected to."},
	{"store.redis.tls.insecure_skip_verify", "false", "", "Do not verify the server certificate (testing only)."},
	{"store.redis.prefix", "fuse", "FUSE_REDIS_PREFIX", "Prefix of every key, so several deployments can share one Redis."},
	{"store.redis.pool_size", "16", "", "Most connections per replica; 0 means the client library's default."},
	{"store.redis.dial_timeout", "250ms", "", "Connect timeout. One exchange with Redis (a flush's round trip, a resync's, an operator command) is bounded by dial_timeout + read_timeout + write_timeout: 450 ms at the defaults, room for a new connection, one write and one read."},
	{"store.redis.read_timeout", "100ms", "", "Timeout of each read."},
	{"store.redis.write_timeout", "100ms", "", "Timeout of each write."},
	{"store.redis.degrade_after", "3", "", "Consecutive failed store operations after which Redis is declared degraded; at least 1."},
	{"store.redis.sentinel_master", `""`, "", "Sentinel master name; set together with sentinel_addrs."},
	{"store.redis.sentinel_addrs", "[]", "", "Sentinel host:port addresses."},
	{"store.redis.sentinel_password", `""`, "", "Password of the sentinels themselves."},
	{"store.redis.cluster_addrs", "[]", "", "Redis Cluster seed host:port addresses; not combined with sentinel_addrs."},
	{"store.postgres", "", "", "PostgreSQL connection, used when store.driver is `postgres`. The DATABASE_URL and FUSE_POSTGRES_* variables apply only then. A connection key left empty (or 0) falls back to libpq's variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, ...) and then libpq's defaults, as psql does. Needs a session of its own for LISTEN: connect directly or through a pooler in session mode; a transaction-mode pooler (PgBouncer's `pool_mode = transaction`) drops notifications, which fuseproxy detects at start and refuses with an error saying so."},
	{"store.postgres.url", `""`, "FUSE_POSTGRES_URL", "`postgres://[user[:password]@]host[:port]/database[?sslmode=...]` (or `postgresql://`); `DATABASE_URL` sets it too (FUSE_POSTGRES_URL wins). When set, it replaces host, port and database; user, password and the ssl keys, when set, still override the URL's. Any libpq URL parameter is read as libpq reads it."},
	{"store.postgres.host", `""`, "FUSE_POSTGRES_HOST", "Host name, address, or unix socket directory; empty: PGHOST, else libpq's default."},
	{"store.postgres.port", "0", "FUSE_POSTGRES_PORT", "Port, 1-65535; 0: PGPORT, else 5432."},
	{"store.postgres.user", `""`, "FUSE_POSTGRES_USER", "Role to connect as; empty: PGUSER, else the OS user. See the README for the grants it needs."},
	{"store.postgres.password", `""`, "FUSE_POSTGRES_PASSWORD", "Password; prefer the environment variable (or PGPASSWORD, or a PGPASSFILE)."},
	{"store.postgres.database", `""`, "FUSE_POSTGRES_DATABASE", "Database; empty: PGDATABASE, else the user's name."},
	{"store.postgres.sslmode", `""`, "FUSE_POSTGRES_SSLMODE", "libpq's TLS modes: `disable`, `allow`, `prefer`, `require`, `verify-ca` or `verify-full`; empty: PGSSLMODE, else `prefer`."},
	{"store.postgres.sslrootcert", `""`, "", "PEM CA bundle to verify the server with (verify-ca, verify-full)."},
	{"store.postgres.sslcert", `""`, "", "PEM client certificate; set together with sslkey."},
	{"store.postgres.sslkey", `""`, "", "PEM private key of sslcert."},
	{"store.postgres.prefix", "fuse_", "FUSE_POSTGRES_PREFIX", "Prefix of every table, function and notification channel fuseproxy creates, so several deployments can share one database: `[a-z_][a-z0-9_]{0,29}`."},
	{"store.postgres.pool_size", "8", "", "Most connections per replica for exchanges and operator commands, at least 1; the listener holds one more of its own."},
	{"store.postgres.connect_timeout", "250ms", "", "Connect timeout. One exchange (a flush's round trip, a resync's, an operator command) is bounded by connect_timeout + statement_timeout: 500 ms at the defaults."},
	{"store.postgres.statement_timeout", "250ms", "", "Bound of one exchange's round trip once connected; also the server's statement_timeout for the store's connections, so a stuck call is cancelled in the database too."},
	{"store.postgres.degrade_after", "3", "", "Consecutive failed store operations after which PostgreSQL is declared degraded; at least 1."},
	{"store.postgres.migrate", "true", "", "Create or upgrade the schema at start (behind an advisory lock, so replicas starting together do not race). Set false when the role fuseproxy runs as may not create tables, and run `fuseproxy migrate` with an owner's role instead (see the README's grants)."},
	{"store.history", "", "", "The transition history of each circuit (`GET /circuits/{name}/history`, `fuseproxy circuits history NAME`): every fleet transition recorded once, by the store that makes it (with redis, a stream `<prefix>:{<upstream>}:history` appended by the script that makes the transition). Read at start, like the store: a reload keeps the values in effect."},
	{"store.history.retention", "168h", "", "How long a transition is kept; `0` disables the history (the endpoint then answers 404)."},
	{"store.history.max_entries", "1000", "", "How many transitions are kept per circuit at most (1-1000000); with redis, per upstream, its keys' transitions included."},

	{"events", "", "", "Breaker state transition events: a log line each, and webhooks if listed."},
	{"events.enabled", "true", "FUSE_EVENTS_ENABLED", "Emit transition events."},
	{"events.queue_size", "1024", "", "Events buffered for delivery; at least 1."},
	{"events.webhooks", "[]", "", "HTTP endpoints that receive each event as JSON."},
	{"events.webhooks[].url", `""`, "", "Absolute http:// or https:// URL."},
	{"events.webhooks[].timeout", "2s", "", "Timeout of each delivery attempt; more than 0."},
	{"events.webhooks[].retries", "3", "", "Further attempts after a failed delivery."},
	{"events.webhooks[].headers", "{}", "", "Extra request headers, e.g. `Authorization: Bearer ${HOOK_TOKEN}`."},

	{"access_log", "", "", "The access log: one JSON line per routed request (see Access log). Reloadable: a new path is opened and the old file closed."},
	{"access_log.enabled", "false", "", "Write the access log. Off, it costs the request path nothing."},
	{"access_log.path", `""`, "", "`\"\"` or `stderr`: standard error; `stdout`: standard output; anything else is a file, created if missing (mode 0644) and appended to. Reopened on reload when the path changes (for rotation, rename the file and reload with a new path, or use copytruncate)."},
	{"access_log.sample_rate", "1", "", "Share of requests logged, 0 to 1, chosen at random per request: 0.01 logs one in a hundred."},
	{"access_log.buffer_size", "1048576", "", "Bytes of lines waiting for the writer (which writes them every 100 ms, or at once past 64 KiB), at least 4096; 1 MiB holds about 4,000 lines. The request path never waits for the disk: a line that would go past it is dropped and counted in `fuseproxy_access_log_dropped_total`."},

	{"upstreams", "{}", "", "The backends, by name, each guarded by its own circuit breaker. At least one."},
	{"upstreams.<name>", "", "", "One upstream. The name is 1-64 letters, digits, `_`, `.` or `-`: it becomes part of Redis keys and metric labels."},
	{"upstreams.<name>.targets", "[]", "", "Base URLs of the backend, absolute http:// or https://; at least one. A target's path is the base every forwarded path is joined below, so it must be clean (no `.`, `..` or empty segment, nothing that decodes to one, no `%25`)."},
	{"upstreams.<name>.dial_timeout", "2s", "", "TCP connect timeout."},
	{"upstreams.<name>.response_header_timeout", "10s", "", "Time to wait for the response headers once the request is sent."},
	{"upstreams.<name>.timeout", "0s", "", "Limit on the whole request; 0 means none."},
	{"upstreams.<name>.max_idle_conns_per_host", "256", "", "Idle keep-alive connections kept per target. Upstreams with the same `targets`, `dial_timeout`, `response_header_timeout` and `max_idle_conns_per_host` share one connection pool (each still has its own breaker), so many upstreams in front of one backend keep one set of connections; the limit is then per target across them."},
	{"upstreams.<name>.max_concurrent_requests", "1024", "", "The upstream's bulkhead: most requests in flight to it at once (a WebSocket or other stream counts for as long as it lasts); 0 means no cap. A request past it gets the fallback at once, marked `X-Fuse-Limit: concurrency` instead of `X-Fuse-Circuit`, and counted as outcome `rejected_concurrency`; the breaker does not count it. The default is a quarter of server.max_connections, so one slow upstream cannot take every connection and goroutine from the others, and is far above what one upstream needs at 10 ms or 100 ms latency (100,000 or 10,000 requests per second)."},
	{"upstreams.<name>.breaker", "", "", "Circuit breaker settings. A zero threshold disables that trip rule."},
	{"upstreams.<name>.breaker.enabled", "true", "", "`false` turns the breaker off: requests always go through."},
	{"upstreams.<name>.breaker.mode", "normal", "", "`normal`; `forced_open` (reject every request with the fallback); `forced_closed` (never open); `metrics_only` (evaluate and report, never reject)."},
	{"upstreams.<name>.breaker.consecutive_failures", "5", "", "Open after this many failures in a row; 0 disables the rule."},
	{"upstreams.<name>.breaker.failure_rate", "50", "", "Open when this percentage (0-100) of the calls in the window failed; 0 disables the rule."},
	{"upstreams.<name>.breaker.slow_call_rate", "0", "", "Open when this percentage (0-100) of the calls in the window were slow; 0 disables the rule."},
	{"upstreams.<name>.breaker.slow_call_duration", "1s", "", "A call taking longer than this is slow."},
	{"upstreams.<name>.breaker.minimum_requests", "20", "", "The rate rules apply only once the window holds this many calls."},
	{"upstreams.<name>.breaker.window", "10s", "", "Sliding window of the rate rules; at least 1ms per bucket."},
	{"upstreams.<name>.breaker.buckets", "10", "", "Buckets the window is counted in, 1-600."},
	{"upstreams.<name>.breaker.open_duration", "30s", "", "How long the circuit stays open before letting probes through (half-open); more than 0."},
	{"upstreams.<name>.breaker.backoff_multiplier", "2", "", "Each reopening after failed probes multiplies the open duration by this; at least 1."},
	{"upstreams.<name>.breaker.max_open_duration", "5m", "", "Cap of the backed-off open duration; at least open_duration."},
	{"upstreams.<name>.breaker.jitter", "0.1", "", "Random spread (fraction 0-1) of the open duration, so replicas do not probe in lockstep."},
	{"upstreams.<name>.breaker.half_open_max_requests", "1", "", "Probe requests let through while half-open; at least 1."},
	{"upstreams.<name>.breaker.success_threshold", "1", "", "Successful probes needed to close the circuit; at least 1."},
	{"upstreams.<name>.breaker.min_replicas_reporting", "1", "", "With a shared store, how many replicas must have reported calls before the rate rules apply; at least 1."},
	{"upstreams.<name>.breaker.honor_retry_after", "false", "", "Opt-in: a `429` or `503` answer carrying `Retry-After` (seconds, or an HTTP date) opens the circuit for that long, capped by max_open_duration and spread by jitter, on every replica with the Redis store (reason `retry_after`; the backoff's trip count does not change). The answer itself is passed on to the client. A half-open trial answered so reopens the circuit for the pause too. The upstream said when to come back: the proxy stops sending until then."},
	{"upstreams.<name>.failure", "", "", "Which outcomes count against the breaker."},
	{"upstreams.<name>.failure.statuses", `["5xx"]`, "", "Response statuses that are failures: codes (`503`) or classes (`\"5xx\"`). The default leaves out 501 Not Implemented; writing `\"5xx\"` yourself includes it."},
	{"upstreams.<name>.failure.success_statuses", "[]", "", "Status codes that count as success even when statuses covers them."},
	{"upstreams.<name>.failure.transport_errors", "true", "", "Connection errors (refused, reset, DNS) are failures."},
	{"upstreams.<name>.failure.timeouts", "true", "", "Timeouts are failures."},
	{"upstreams.<name>.failure.grpc_codes", `["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"]`, "", "gRPC status codes that are failures, by name (`UNAVAILABLE`) or number (`14`), for responses of Content-Type `application/grpc`: read in the response headers (a trailers-only answer, counted when they arrive) or in the trailers (the headers counted as a success, taken back as a late failure when the trailers carry such a code, like a broken body: counted in `fuseproxy_response_body_failures_total`). An empty list counts no gRPC status."},
	{"upstreams.<name>.fallback", "", "", "The response sent when the circuit rejects a request."},
	{"upstreams.<name>.fallback.upstream", `""`, "", "Another upstream that serves the requests this one's circuit rejects (a cache, a static mirror, a degraded service), through its own bulkhead, breaker and targets; its answers carry `X-Fuse-Circuit` (this circuit's state) and `X-Fuse-Fallback: NAME`. When it refuses too (its circuit open, its bulkhead full), the fallback response below is sent. It must not have a fallback upstream of its own (no chains, no cycles)."},
	{"upstreams.<name>.fallback.status", "503", "", "Status code, 100-599."},
	{"upstreams.<name>.fallback.headers", "{}", "", "Extra response headers."},
	{"upstreams.<name>.fallback.body", `""`, "", "Response body; empty means a small JSON body naming the upstream and the circuit state."},
	{"upstreams.<name>.upgrade_protocols", `["websocket"]`, "", "Protocols a client may switch to through this upstream (`Upgrade` header, names compared case-insensitively). An upgraded connection is a raw tunnel that routing, methods and the breaker no longer see, so only what is listed is forwarded: from an `Upgrade` list the first listed protocol is kept, the others are dropped, and a request offering none of them goes to the upstream as a plain request without `Upgrade` (and without `HTTP2-Settings`). `h2c` is left out on purpose: through an h2c tunnel a client reaches any path and method of the upstream (h2c smuggling). `[]` allows none."},

	{"upstreams.<name>.load_balancing", "round_robin", "", "How a request picks among the targets: `round_robin`, or `least_requests` (power of two choices: of two targets drawn at random, the one with fewer requests in flight on this replica). Either way an ejected target is skipped."},
	{"upstreams.<name>.outlier_detection", "", "", "Per-target outlier detection: a target that fails is ejected (gets no traffic) for a while, the others carry on. Each target has a circuit of its own, named `UPSTREAM@HOST:PORT`, shared by the fleet like the upstream's (see README, Ejection)."},
	{"upstreams.<name>.outlier_detection.enabled", "false", "", "Turn ejection on for this upstream."},
	{"upstreams.<name>.outlier_detection.consecutive_gateway_errors", "3", "", "Eject a target after this many gateway errors in a row (connection refused or reset, timeout, 502, 503, 504); any other answer ends the run. 0 disables."},
	{"upstreams.<name>.outlier_detection.consecutive_5xx", "5", "", "Eject a target after this many 5xx answers or gateway errors in a row. 0 disables."},
	{"upstreams.<name>.outlier_detection.failure_percentage", "50", "", "Eject a target when this percentage of its requests in the interval failed (5xx or gateway error), once it had minimum_requests; 0 disables."},
	{"upstreams.<name>.outlier_detection.minimum_requests", "10", "", "Requests a target must have had in the interval (fleet-wide with a shared store) before the percentage rules apply."},
	{"upstreams.<name>.outlier_detection.slow_call_rate", "0", "", "Eject a target when this percentage of its requests in the interval took longer than slow_call_duration; 0 disables."},
	{"upstreams.<name>.outlier_detection.slow_call_duration", "1s", "", "Latency (to the response headers) above which a request to a target is slow."},
	{"upstreams.<name>.outlier_detection.interval", "10s", "", "Span of the percentage rules' sliding window; also how long a target must stay healthy to earn back one ejection."},
	{"upstreams.<name>.outlier_detection.base_ejection_time", "30s", "", "First ejection's length; the n-th ejection in a row lasts n times this (Envoy's rule), capped by max_ejection_time."},
	{"upstreams.<name>.outlier_detection.max_ejection_time", "5m", "", "Longest ejection; at least base_ejection_time."},
	{"upstreams.<name>.outlier_detection.jitter", "0.1", "", "Random spread (fraction 0-1) of each ejection's length."},
	{"upstreams.<name>.outlier_detection.max_ejection_percent", "50", "", "Most targets ejected at once, as a percentage of the targets, rounded down but at least 1 when there are two or more; the last target is never ejected. Envoy's default, 10 %, would never eject one of fewer than ten targets; 50 % ejects one of two or three and keeps at least half serving. Past the cap the panic rule applies (README, Ejection)."},
	{"upstreams.<name>.outlier_detection.min_replicas_reporting", "1", "", "With a shared store, how many replicas must have reported a target's requests before its percentage rules apply."},
	{"upstreams.<name>.health_check", "", "", "Active health checks: probe each target and eject it after unhealthy_threshold failed probes, bring it back after healthy_threshold good ones. Needs outlier_detection.enabled. With a shared store one replica probes each target at a time, so a fleet sends one probe per interval per target."},
	{"upstreams.<name>.health_check.path", `""`, "", "Path (and query) to GET on each target, starting with `/`; empty turns the checks off."},
	{"upstreams.<name>.health_check.interval", "5s", "", "Time between probes of a target."},
	{"upstreams.<name>.health_check.timeout", "1s", "", "A probe without a full answer in this time failed; less than interval."},
	{"upstreams.<name>.health_check.healthy_threshold", "2", "", "Good probes in a row that bring an ejected target back."},
	{"upstreams.<name>.health_check.unhealthy_threshold", "3", "", "Failed probes in a row that eject a target."},
	{"upstreams.<name>.health_check.expected_statuses", `["2xx"]`, "", "Statuses of a good probe: codes (`204`) or classes (`\"2xx\"`)."},
	{"upstreams.<name>.tls", "", "", "TLS to the upstream's `https://` targets (other targets ignore it). The files are read again when they change (checked at most once a second, at a new connection's handshake), so a certificate or CA bundle rotates without a restart; a file that fails to load keeps the last good one, and says so at warn. A failed handshake is a transport failure for the breaker and the target's circuit (502), logged at warn with the reason."},
	{"upstreams.<name>.tls.ca_file", `""`, "", "PEM CA bundle to verify the targets' certificates with; empty means the system roots."},
	{"upstreams.<name>.tls.cert_file", `""`, "", "PEM client certificate for mutual TLS; set together with key_file."},
	{"upstreams.<name>.tls.key_file", `""`, "", "PEM private key of cert_file."},
	{"upstreams.<name>.tls.server_name", `""`, "", "Name sent (SNI) and verified in the targets' certificates; empty means each target's host."},
	{"upstreams.<name>.tls.min_version", "1.2", "", "Lowest TLS version accepted: `1.2` or `1.3`."},
	{"upstreams.<name>.tls.insecure_skip_verify", "false", "", "Do not verify the targets' certificates (testing only)."},
	{"upstreams.<name>.retries", "", "", "Retries of failed attempts, on a retry budget shared by the fleet (see README, Retries). Off until attempts is more than 1."},
	{"upstreams.<name>.retries.attempts", "1", "", "Times a request may be sent in all, the first included, 1-10; 1 turns retries off. Each retry goes to another target when there is one not tried yet (and not ejected)."},
	{"upstreams.<name>.retries.methods", `["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]`, "", "Methods retried (the idempotent ones by default). Listing `POST` is the operator's promise that the upstream tolerates a request sent twice."},
	{"upstreams.<name>.retries.on", `["connect_failure", "reset"]`, "", "Failures retried: `connect_failure` (refused, unreachable, dial timeout, TLS handshake: nothing reached the upstream), `reset` (the connection broke before the response headers), `timeout` (no headers within per_try_timeout; off by default: the upstream may still be working on the request)."},
	{"upstreams.<name>.retries.statuses", "[502, 503, 504]", "", "Response statuses retried, 400-599. A `429` or `503` carrying `Retry-After` is not retried when breaker.honor_retry_after is on: it opens the circuit instead."},
	{"upstreams.<name>.retries.per_try_timeout", "0s", "", "How long each attempt, the first included, of every request of the upstream (retried or not) waits for its response headers once the request is sent; `0s` means response_header_timeout (the lower of the two applies). The upstream's timeout still bounds the request as a whole, retries and backoff included."},
	{"upstreams.<name>.retries.backoff_base", "25ms", "", "Before retry n, the proxy waits a random time between 0 and min(backoff_max, backoff_base × 2ⁿ⁻¹) (full jitter)."},
	{"upstreams.<name>.retries.backoff_max", "250ms", "", "Cap of the backoff; at least backoff_base."},
	{"upstreams.<name>.retries.buffer_body", "0", "", "Largest request body, in bytes (up to 16 MiB), that the proxy reads before sending so that a retry can send it again. A request with a longer body, or with any body at 0, is streamed to the upstream and sent exactly once."},
	{"upstreams.<name>.retries.budget", "", "", "The retry budget: retries may add at most percent of the requests of the last window, plus min_per_second, for the whole fleet with the Redis store. When it is spent, the failure goes to the client."},
	{"upstreams.<name>.retries.budget.percent", "20", "", "Retries allowed per 100 requests of the window, 0-100."},
	{"upstreams.<name>.retries.budget.min_per_second", "3", "", "Retries per second allowed on top, whatever the traffic (the fleet's, split between replicas by their share of the requests)."},
	{"upstreams.<name>.retries.budget.window", "10s", "", "The window the budget counts requests and retries in, 1s-1h."},
	{"upstreams.<name>.h2c", "false", "", "Speak cleartext HTTP/2 with prior knowledge (h2c) to the upstream's `http://` targets, as a gRPC server without TLS expects; every target must then be `http://`. `https://` targets negotiate HTTP/2 by ALPN without it."},
	{"upstreams.<name>.keyed", "", "", "Per-key breakers (Fuse's for() and boundary()): each key read from a request (a tenant, an account) gets a circuit of its own, named `UPSTREAM#KEY`, with the upstream's thresholds unless overridden below, beside the upstream-wide circuit. A key's trip rejects that key's requests only; the upstream's trip rejects all (README, Per-key breakers)."},
	{"upstreams.<name>.keyed.from", "[]", "", "Where the key is read: `header:NAME`, `path:N` (the N-th segment of the cleaned path, from 1), `query:NAME`, `host`; several parts are joined by `|`. A request missing a part, or whose key is longer than 256 bytes, has no key and goes to default_key. Empty turns per-key breakers off. Take the key from what a client cannot forge (a header your authentication layer sets): whoever can send another tenant's key is that tenant to the breaker."},
	{"upstreams.<name>.keyed.default_key", `""`, "", "The key of a request whose key cannot be read, or that brings a new key while the table is full of keys that may not be evicted. Empty: such a request has no key circuit and is judged by the upstream-wide circuit alone."},
	{"upstreams.<name>.keyed.max_keys", "10000", "", "Most keys tracked at once per upstream, on each replica and in Redis (1-1000000). When the table is full a new key evicts the least recently used closed key idle for at least a window; open and half-open keys, and keys with requests in the last window, are never evicted, and when there is no such key the new key goes to default_key. In Redis a key past the cap decides on each replica alone."},
	{"upstreams.<name>.keyed.idle_ttl", "10m", "", "A key without requests for this long is forgotten, on the replica and in Redis (where it expires); an open key lives at least until its open period ends. At least 1s."},
	{"upstreams.<name>.keyed.events_per_second", "10", "", "Most key transitions logged and sent to webhooks per second, per upstream and replica; those beyond are dropped and counted, and one summary line says how many. 0 logs none."},
	{"upstreams.<name>.keyed.consecutive_failures", "-1", "", "A key's consecutive_failures; -1 takes the upstream's breaker.consecutive_failures."},
	{"upstreams.<name>.keyed.failure_rate", "-1", "", "A key's failure_rate; -1 takes the upstream's."},
	{"upstreams.<name>.keyed.minimum_requests", "-1", "", "A key's minimum_requests; -1 takes the upstream's."},
	{"upstreams.<name>.keyed.open_duration", "0s", "", "A key's open_duration; 0s takes the upstream's."},

	{"routes", "[]", "", "Which requests go to which upstream. Routes are tried in order and the first match wins. At least one."},
	{"routes[].host", `""`, "", "Exact host name, or `*.example.com` for its subdomains at any depth (not example.com itself); empty matches any host. Compared case-insensitively, port ignored."},
	{"routes[].path_prefix", "/", "", "Path prefix to match against the cleaned request path, at a segment boundary: `/api` matches `/api` and `/api/x` but not `/apiv2` or `/api..`. Starts with `/` and is itself clean (no `.`, `..` or empty segment). Request paths holding an encoded or disguised dot-segment (`%2e%2e`, `%252e`, `..;x`, `..\\x`, `...`) are refused with 400 on every route."},
	{"routes[].methods", "[]", "", "HTTP methods to match; upper-cased on load. Empty matches any."},
	{"routes[].upstream", `""`, "", "Name of the upstream to send matching requests to (required)."},
	{"routes[].strip_prefix", "false", "", "Remove path_prefix from the path before forwarding. What remains is whole, clean segments, joined below the target's path (`http://backend/tenant-a/` with route `/t`: `/t/x` goes to `/tenant-a/x`, and nothing can climb out of `/tenant-a/`)."},

	{"replicas", "0", "", "How many replicas share this config (informational; used for warnings, e.g. several replicas with the memory store)."},
}

// ReferenceMarkdown renders Reference as a Markdown table, for the README.
func ReferenceMarkdown() string {
	var b strings.Builder
	b.WriteString("| Key | Default | Env | Description |\n")
	b.WriteString("|-----|---------|-----|-------------|\n")
	for _, f := range Reference {
		b.WriteString("| " + code(f.Key) + " | " + code(f.Default) + " | " + code(f.Env) + " | " + cell(f.Doc) + " |\n")
	}
	return b.String()
}

// code renders s as inline code, or nothing when s is empty.
func code(s string) string {
	if s == "" {
		return ""
	}
	return "`" + cell(s) + "`"
}

// cell escapes the one character that breaks a table cell.
func cell(s string) string {
	return strings.ReplaceAll(s, "|", `\|`)
}
