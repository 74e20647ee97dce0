-- 001_tables.sql: the tables and types of fuseproxy's PostgreSQL store (#18). A template:
-- {{.P}} is the configured prefix (store.postgres.prefix). Times are ms since the Unix
-- epoch on the database's clock (the fleet's clock), as in the Lua scripts, except the
-- history's `at`, a timestamptz for people.

-- One row per circuit: an upstream's (key '') or one key's of an upstream with per-key
-- breakers. The columns are the Lua hash's fields (store/lua/prelude.lua): state (st),
-- mode (md), generation (gen), open_until (ou), open_for (of), trips (tr), consecutive
-- (cf), gateway_consecutive (gf), successes (sc), changed_at (at), epoch (ep), onset (fo),
-- reason (rs), cfg/cfg_replica (cfg/cfgr); buckets holds the window's "b:<k>" fields as
-- {"<k>": [requests, failures, slow]}, reports the "r:<replica>" fields as
-- {"<replica>": ms}. A row whose expires_at has passed reads as absent (a new epoch),
-- as an expired Redis hash; cleanup deletes it.
CREATE TABLE {{.P}}circuits (
	upstream            text   NOT NULL,
	key                 text   NOT NULL DEFAULT '',
	state               bigint NOT NULL DEFAULT 0,
	mode                bigint NOT NULL DEFAULT 0,
	generation          bigint NOT NULL DEFAULT 0,
	open_until          bigint NOT NULL DEFAULT 0,
	open_for            bigint NOT NULL DEFAULT 0,
	trips               bigint NOT NULL DEFAULT 0,
	consecutive         bigint NOT NULL DEFAULT 0,
	gateway_consecutive bigint NOT NULL DEFAULT 0,
	successes           bigint NOT NULL DEFAULT 0,
	changed_at          bigint NOT NULL DEFAULT 0,
	epoch               bigint NOT NULL DEFAULT 0,
	onset               bigint NOT NULL DEFAULT 0,
	reason              text,
	cfg                 text   NOT NULL DEFAULT '',
	cfg_replica         text   NOT NULL DEFAULT '',
	buckets             jsonb  NOT NULL DEFAULT '{}',
	reports             jsonb  NOT NULL DEFAULT '{}',
	expires_at          bigint NOT NULL DEFAULT 0,
	published_at        bigint NOT NULL DEFAULT 0,
	PRIMARY KEY (upstream, key)
);
CREATE INDEX {{.P}}circuits_expires ON {{.P}}circuits (expires_at);
-- published_at is the fleet's clock (ms) when a transition of the circuit was last
-- notified (_save): the replicas' poll (changes) reads the rows published since its
-- last turn, the backstop for a notification a listener missed.
CREATE INDEX {{.P}}circuits_published ON {{.P}}circuits (published_at);

-- Half-open trial leases (the Lua sorted set "<prefix>:{<upstream>}:leases": id -> expiry).
CREATE TABLE {{.P}}leases (
	upstream   text   NOT NULL,
	key        text   NOT NULL DEFAULT '',
	id         text   NOT NULL,
	expires_at bigint NOT NULL,
	PRIMARY KEY (upstream, key, id)
);
CREATE INDEX {{.P}}leases_expires ON {{.P}}leases (expires_at);

-- The registry of an upstream's per-key circuits (keyed.lua's sorted set key -> expiry).
CREATE TABLE {{.P}}keys (
	upstream   text   NOT NULL,
	key        text   NOT NULL,
	expires_at bigint NOT NULL,
	PRIMARY KEY (upstream, key)
);
CREATE INDEX {{.P}}keys_expires ON {{.P}}keys (expires_at);

-- Shared tallies (store/tally.go): each replica's last report of a tally.
CREATE TABLE {{.P}}tallies (
	name       text   NOT NULL,
	replica    text   NOT NULL,
	a          bigint NOT NULL,
	b          bigint NOT NULL,
	at         bigint NOT NULL,
	expires_at bigint NOT NULL,
	PRIMARY KEY (name, replica)
);
CREATE INDEX {{.P}}tallies_expires ON {{.P}}tallies (expires_at);

-- Leases taken by Claim (store/redis_claim.go).
CREATE TABLE {{.P}}claims (
	name       text   PRIMARY KEY,
	owner      text   NOT NULL,
	expires_at bigint NOT NULL
);
CREATE INDEX {{.P}}claims_expires ON {{.P}}claims (expires_at);

-- Each replica's last heartbeat (the proof that the database takes its writes).
CREATE TABLE {{.P}}heartbeats (
	replica    text   PRIMARY KEY,
	expires_at bigint NOT NULL
);

-- Every fleet transition, appended by the function that made it (HISTORY.md).
CREATE TABLE {{.P}}history (
	id          bigserial   PRIMARY KEY,
	at          timestamptz NOT NULL,
	upstream    text        NOT NULL,
	key         text        NOT NULL DEFAULT '',
	from_state  text        NOT NULL,
	to_state    text        NOT NULL,
	reason      text        NOT NULL,
	requests    bigint      NOT NULL,
	failures    bigint      NOT NULL,
	slow        bigint      NOT NULL,
	consecutive bigint      NOT NULL,
	generation  bigint      NOT NULL,
	replica     text        NOT NULL DEFAULT ''
);
CREATE INDEX {{.P}}history_upstream_at ON {{.P}}history (upstream, at);
CREATE INDEX {{.P}}history_at ON {{.P}}history (at);

-- The settings argument, parsed (prelude.lua's settings).
CREATE TYPE {{.P}}settings AS (
	cf float8, fr float8, sr float8, minreq float8, win float8, buckets float8, open float8,
	mult float8, maxopen float8, jitter float8, hmax float8, sthresh float8, minrep float8,
	mode float8, cg float8, linear float8, decay float8, hret float8, hlen float8
);

-- A circuit's state while a function works on it (prelude.lua's st table): the stored
-- fields, and what the Lua table carries besides (new, dirty, changed, corrupt, grace;
-- the caller for the history; the window's sums and reporters as window and reporters
-- last counted them, the sums valid while wok: b has not changed since; the call's
-- clock).
CREATE TYPE {{.P}}st AS (
	upstream text, key text, replica text,
	st bigint, md bigint, gen bigint, ou bigint, opf bigint, tr bigint, cf bigint, gf bigint,
	sc bigint, at bigint, ep bigint, fo bigint, rs text, cfg text, cfgr text, b jsonb, r jsonb,
	new boolean, dirty boolean, changed boolean, corrupt text, grace float8,
	wr float8, wf float8, ws float8, wok boolean, nrep bigint, reason text,
	now bigint -- the call's clock, read once the row is held (_load)
);
