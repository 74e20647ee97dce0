-- 002_functions.sql: the fleet state machine of store/lua/*.lua in PL/pgSQL, with the
-- same arguments and replies (PG.md): every script X is {{.P}}X(name text, args text[])
-- RETURNS text[], args being the Lua ARGV (1-based, same order), the reply prelude.lua's
-- reply() with every element as text. The internal helpers ({{.P}}_*) follow
-- prelude.lua's functions one for one: change a rule there and here together (the same
-- script-level tests run against both, store/lua_test.go).
--
-- The public functions are SECURITY DEFINER (owned by the migrating role, search_path
-- pinned to the schema they were created in): a runtime role needs EXECUTE on them and
-- no right on any table (see PostgresGrants in store/postgres_schema.go).

-- now_ms is the fleet's clock: the database's, in ms, floored as the Lua now_ms floors
-- Redis's TIME.
CREATE FUNCTION {{.P}}now_ms() RETURNS bigint LANGUAGE sql VOLATILE
AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- _ts turns ms since the epoch into a timestamptz, exactly.
CREATE FUNCTION {{.P}}_ts(ms bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE
AS $$ SELECT timestamptz 'epoch' + ms * interval '1 millisecond' $$;

-- _num is Lua's tonumber for decimal text: NULL (nil) for anything else.
CREATE FUNCTION {{.P}}_num(v text) RETURNS float8 LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN v ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?\s*$' THEN v::float8 END $$;

-- _settings reads the comma-separated settings argument (prelude.lua's settings): a
-- value that is not a number is skipped, as Lua's v[#v + 1] = nil skips it. Fields 18
-- and 19 are the history's retention ms and max entries (0: no history).
CREATE FUNCTION {{.P}}_settings(arg text) RETURNS {{.P}}settings LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	v float8[];
	s {{.P}}settings;
BEGIN
	IF arg ~ '^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)*$' THEN
		v := string_to_array(arg, ',')::float8[]; -- what the Go side sends: the fast way
	ELSE
		v := ARRAY(SELECT n FROM (SELECT {{.P}}_num(x) AS n, i FROM unnest(string_to_array(arg, ',')) WITH ORDINALITY AS t(x, i)) u
			WHERE n IS NOT NULL ORDER BY i);
	END IF;
	s.cf := v[1]; s.fr := v[2]; s.sr := v[3]; s.minreq := v[4]; s.win := v[5]; s.buckets := v[6];
	s.open := v[7]; s.mult := v[8]; s.maxopen := v[9]; s.jitter := v[10]; s.hmax := v[11];
	s.sthresh := v[12]; s.minrep := v[13]; s.mode := v[14]; s.cg := coalesce(v[15], 0);
	s.linear := coalesce(v[16], 0); s.decay := coalesce(v[17], 0);
	s.hret := coalesce(v[18], 0); s.hlen := coalesce(v[19], 0);
	RETURN s;
END $$;

CREATE FUNCTION {{.P}}_state_name(st bigint) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE st WHEN 0 THEN 'closed' WHEN 1 THEN 'open' WHEN 2 THEN 'half_open' ELSE st::text END $$;

-- _count: prelude.lua's count, for a stored number: at most 15 digits, no sign.
CREATE FUNCTION {{.P}}_count(v bigint) RETURNS boolean LANGUAGE sql IMMUTABLE
AS $$ SELECT v >= 0 AND v <= 999999999999999 $$;

-- _jcount: the same for a number in the buckets or reports (jsonb).
CREATE FUNCTION {{.P}}_jcount(v jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE
AS $$ SELECT jsonb_typeof(v) = 'number' AND (v #>> '{}') ~ '^[0-9]{1,15}$' $$;

-- _shown quotes a stored value for a corrupt reason, cut short (Lua's %q).
CREATE FUNCTION {{.P}}_shown(v text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT '"' || replace(replace(left(v, 40), '\', '\\'), '"', '\"') || '"'
		|| CASE WHEN length(v) > 40 THEN '...' ELSE '' END
$$;

CREATE FUNCTION {{.P}}_bucket_width(s {{.P}}settings) RETURNS bigint LANGUAGE sql IMMUTABLE
AS $$ SELECT greatest(1, floor(s.win / s.buckets))::bigint $$;

-- _load locks the circuit's row (inserting an absent one first, which reads as absent:
-- expires_at 0), then reads the clock into st.now (the call's one clock reading) and
-- the row (prelude.lua's load). The clock is read once the row is held, not before: a
-- call that waited for another's lock must not judge that call's writes by an earlier
-- time (its bucket would look as if from the future and be dropped, and its counts with
-- it; a transition would be dated before the one it follows). A value that does not parse is
-- reported (corrupt) and replaced by a fresh closed state in a newer generation; a
-- malformed bucket is dropped; a malformed report reads as 0.
CREATE FUNCTION {{.P}}_load(p_up text, p_key text, s {{.P}}settings, p_replica text)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	c record;
	st {{.P}}st;
	found_row boolean := false;
	p_now bigint;
BEGIN
	-- one query: the row, locked, with its buckets and reports as they may be used (a
	-- malformed bucket dropped, a malformed report read as 0; NULL when not an object)
	FOR i IN 1..5 LOOP
		SELECT r.*,
			CASE WHEN r.buckets = '{}'::jsonb THEN '{}'::jsonb WHEN jsonb_typeof(r.buckets) = 'object' THEN
				(SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}') FROM jsonb_each(r.buckets) e
				WHERE e.key ~ '^-?[0-9]{1,18}$' AND jsonb_typeof(e.value) = 'array' AND jsonb_array_length(e.value) = 3
					AND {{.P}}_jcount(e.value -> 0) AND {{.P}}_jcount(e.value -> 1) AND {{.P}}_jcount(e.value -> 2))
			END AS good_buckets,
			CASE WHEN r.reports = '{}'::jsonb THEN '{}'::jsonb WHEN jsonb_typeof(r.reports) = 'object' THEN
				(SELECT coalesce(jsonb_object_agg(e.key, CASE WHEN {{.P}}_jcount(e.value) THEN e.value ELSE '0'::jsonb END), '{}')
				FROM jsonb_each(r.reports) e)
			END AS good_reports
		INTO c FROM {{.P}}circuits r WHERE r.upstream = p_up AND r.key = p_key FOR UPDATE OF r;
		IF FOUND THEN
			found_row := true;
			EXIT;
		END IF;
		INSERT INTO {{.P}}circuits (upstream, key, expires_at) VALUES (p_up, p_key, 0) ON CONFLICT DO NOTHING;
	END LOOP;
	IF NOT found_row THEN
		RAISE EXCEPTION 'fuseproxy: circuit % % could not be locked', p_up, p_key;
	END IF;
	p_now := {{.P}}now_ms();
	st.now := p_now;
	st.upstream := p_up; st.key := p_key; st.replica := p_replica;
	st.st := 0; st.md := s.mode; st.gen := 0; st.ou := 0; st.opf := 0; st.tr := 0; st.cf := 0;
	st.gf := 0; st.sc := 0; st.at := 0; st.ep := p_now; st.fo := 0;
	st.b := '{}'; st.r := '{}'; st.new := true; st.dirty := false; st.changed := false;
	st.cfg := ''; st.cfgr := ''; st.wok := false;
	IF c.expires_at <= p_now THEN
		RETURN st; -- absent, or expired
	END IF;
	st.new := false;
	-- the window's buckets: a malformed one is dropped
	st.b := coalesce(c.good_buckets, '{}'::jsonb);
	st.dirty := c.good_buckets IS DISTINCT FROM c.buckets;
	-- failure reports: a malformed one reads as 0
	st.r := coalesce(c.good_reports, '{}'::jsonb);
	st.dirty := st.dirty OR c.good_reports IS NULL;
	IF c.state BETWEEN 0 AND 999999999999999 AND c.mode BETWEEN 0 AND 999999999999999
		AND c.generation BETWEEN 0 AND 999999999999999 AND c.open_until BETWEEN 0 AND 999999999999999
		AND c.open_for BETWEEN 0 AND 999999999999999 AND c.trips BETWEEN 0 AND 999999999999999
		AND c.consecutive BETWEEN 0 AND 999999999999999 AND c.gateway_consecutive BETWEEN 0 AND 999999999999999
		AND c.successes BETWEEN 0 AND 999999999999999 AND c.changed_at BETWEEN 0 AND 999999999999999
		AND c.epoch BETWEEN 0 AND 999999999999999 AND c.onset BETWEEN 0 AND 999999999999999 THEN
		-- every field reads (the common case)
		st.st := c.state; st.md := c.mode; st.gen := c.generation; st.ou := c.open_until; st.opf := c.open_for;
		st.tr := c.trips; st.cf := c.consecutive; st.gf := c.gateway_consecutive; st.sc := c.successes;
		st.at := c.changed_at; st.ep := c.epoch; st.fo := c.onset;
	ELSE
		-- the core fields, in prelude.lua's order: the last bad one names the corruption
		IF c.state IS NOT NULL THEN IF {{.P}}_count(c.state) THEN st.st := c.state; ELSE st.corrupt := 'field st is ' || {{.P}}_shown(c.state::text); END IF; END IF;
		IF c.mode IS NOT NULL THEN IF {{.P}}_count(c.mode) THEN st.md := c.mode; ELSE st.corrupt := 'field md is ' || {{.P}}_shown(c.mode::text); END IF; END IF;
		IF c.generation IS NOT NULL THEN IF {{.P}}_count(c.generation) THEN st.gen := c.generation; ELSE st.corrupt := 'field gen is ' || {{.P}}_shown(c.generation::text); END IF; END IF;
		IF c.open_until IS NOT NULL THEN IF {{.P}}_count(c.open_until) THEN st.ou := c.open_until; ELSE st.corrupt := 'field ou is ' || {{.P}}_shown(c.open_until::text); END IF; END IF;
		IF c.open_for IS NOT NULL THEN IF {{.P}}_count(c.open_for) THEN st.opf := c.open_for; ELSE st.corrupt := 'field of is ' || {{.P}}_shown(c.open_for::text); END IF; END IF;
		IF c.trips IS NOT NULL THEN IF {{.P}}_count(c.trips) THEN st.tr := c.trips; ELSE st.corrupt := 'field tr is ' || {{.P}}_shown(c.trips::text); END IF; END IF;
		IF c.consecutive IS NOT NULL THEN IF {{.P}}_count(c.consecutive) THEN st.cf := c.consecutive; ELSE st.corrupt := 'field cf is ' || {{.P}}_shown(c.consecutive::text); END IF; END IF;
		IF c.gateway_consecutive IS NOT NULL THEN IF {{.P}}_count(c.gateway_consecutive) THEN st.gf := c.gateway_consecutive; ELSE st.corrupt := 'field gf is ' || {{.P}}_shown(c.gateway_consecutive::text); END IF; END IF;
		IF c.successes IS NOT NULL THEN IF {{.P}}_count(c.successes) THEN st.sc := c.successes; ELSE st.corrupt := 'field sc is ' || {{.P}}_shown(c.successes::text); END IF; END IF;
		IF c.changed_at IS NOT NULL THEN IF {{.P}}_count(c.changed_at) THEN st.at := c.changed_at; ELSE st.corrupt := 'field at is ' || {{.P}}_shown(c.changed_at::text); END IF; END IF;
		IF c.epoch IS NOT NULL THEN IF {{.P}}_count(c.epoch) THEN st.ep := c.epoch; ELSE st.corrupt := 'field ep is ' || {{.P}}_shown(c.epoch::text); END IF; END IF;
		IF c.onset IS NOT NULL THEN IF {{.P}}_count(c.onset) THEN st.fo := c.onset; ELSE st.corrupt := 'field fo is ' || {{.P}}_shown(c.onset::text); END IF; END IF;
	END IF;
	IF st.corrupt IS NULL AND (st.st > 2 OR st.md > 3) THEN
		st.corrupt := 'state or mode out of range';
	END IF;
	IF st.corrupt IS NULL AND c.reason IS NOT NULL AND (octet_length(c.reason) > 64 OR c.reason !~ '^[A-Za-z0-9_]+$') THEN
		st.corrupt := 'field rs is ' || {{.P}}_shown(c.reason);
	END IF;
	-- a time no replica could decode in a reply (store/codec.go's maxMillis, a
	-- time.Duration in ms) fails every exchange that reads it: corrupt too
	IF st.corrupt IS NULL AND st.opf > 9223372036854 THEN
		st.corrupt := 'field of is ' || {{.P}}_shown(c.open_for::text);
	END IF;
	IF st.corrupt IS NULL AND st.ou - p_now > 9223372036854 THEN
		st.corrupt := 'field ou is ' || {{.P}}_shown(c.open_until::text);
	END IF;
	st.cfg := coalesce(c.cfg, ''); st.cfgr := coalesce(c.cfg_replica, ''); st.rs := c.reason;
	IF st.corrupt IS NOT NULL THEN
		-- a fresh closed state in a newer generation, published so every replica adopts it
		-- (not a transition of the history: the Lua scripts record none either)
		st.st := 0; st.md := s.mode; st.gen := st.gen + 1; st.ou := 0; st.opf := 0; st.tr := 0; st.cf := 0;
		st.gf := 0; st.sc := 0; st.at := 0; st.ep := p_now; st.fo := 0; st.b := '{}'; st.r := '{}';
		st.new := true; st.dirty := true; st.changed := true; st.rs := 'corrupt'; st.cfg := ''; st.cfgr := '';
	END IF;
	-- times ahead of the clock (a failover to a clock behind, a foreign value) suspend
	-- nothing by as much as they are ahead: a failure onset or a change is at most now,
	-- and an open period has at most its whole length left (prelude.lua's load)
	IF st.fo > p_now THEN st.fo := p_now; st.dirty := true; END IF;
	IF st.at > p_now THEN st.at := p_now; st.dirty := true; END IF;
	IF st.st = 1 AND st.ou - p_now > st.opf THEN st.ou := p_now + st.opf; st.dirty := true; END IF;
	RETURN st;
END $$;

-- _window sums the live buckets into st.wr, st.wf, st.ws and drops stale ones
-- (prelude.lua's window). A function has one clock reading: while the buckets have not
-- changed since the last sums (st.wok), they stand.
CREATE FUNCTION {{.P}}_window(st {{.P}}st, s {{.P}}settings, p_now bigint) RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	k bigint;
	nb jsonb;
	stale boolean;
BEGIN
	IF st.wok THEN
		RETURN st;
	END IF;
	k := floor(p_now / {{.P}}_bucket_width(s))::bigint;
	SELECT coalesce(sum((e.value ->> 0)::float8) FILTER (WHERE live), 0),
		coalesce(sum((e.value ->> 1)::float8) FILTER (WHERE live), 0),
		coalesce(sum((e.value ->> 2)::float8) FILTER (WHERE live), 0),
		coalesce(jsonb_object_agg(e.key, e.value) FILTER (WHERE live), '{}'),
		coalesce(bool_or(NOT live), false)
	INTO st.wr, st.wf, st.ws, nb, stale
	FROM (SELECT e.key, e.value, e.key::float8 > k - s.buckets AND e.key::float8 <= k AS live
		FROM jsonb_each(st.b) e) e;
	IF stale THEN
		st.b := nb;
		st.dirty := true;
	END IF;
	st.wok := true;
	RETURN st;
END $$;

-- _sums is the window's counts without pruning (for the history).
CREATE FUNCTION {{.P}}_sums(st {{.P}}st, s {{.P}}settings, p_now bigint, OUT r bigint, OUT f bigint, OUT sl bigint)
LANGUAGE plpgsql AS $$
DECLARE
	k bigint := floor(p_now / {{.P}}_bucket_width(s))::bigint;
BEGIN
	IF st.wok THEN
		r := st.wr; f := st.wf; sl := st.ws;
		RETURN;
	END IF;
	SELECT coalesce(sum((e.value ->> 0)::bigint), 0), coalesce(sum((e.value ->> 1)::bigint), 0),
		coalesce(sum((e.value ->> 2)::bigint), 0)
	INTO r, f, sl
	FROM jsonb_each(st.b) e WHERE e.key::float8 > k - s.buckets AND e.key::float8 <= k;
END $$;

-- _reporters counts the replicas that reported a failure within the window into st.nrep
-- and drops the others (prelude.lua's reporters).
CREATE FUNCTION {{.P}}_reporters(st {{.P}}st, s {{.P}}settings, p_now bigint) RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	nr jsonb;
	stale boolean;
BEGIN
	SELECT count(*) FILTER (WHERE live), coalesce(jsonb_object_agg(e.key, e.value) FILTER (WHERE live), '{}'),
		coalesce(bool_or(NOT live), false)
	INTO st.nrep, nr, stale
	-- a report more than a window ahead of the clock (a foreign value, or one stamped
	-- before a failover to a clock behind) is no live reporter (prelude.lua's reporters)
	FROM (SELECT e.key, e.value, (e.value #>> '{}')::float8 > p_now - s.win
		AND (e.value #>> '{}')::float8 <= p_now + s.win AS live FROM jsonb_each(st.r) e) e;
	IF stale THEN
		st.r := nr;
		st.dirty := true;
	END IF;
	RETURN st;
END $$;

CREATE FUNCTION {{.P}}_clear_counts(st {{.P}}st) RETURNS {{.P}}st LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	st.b := '{}'; st.r := '{}'; st.cf := 0; st.gf := 0; st.sc := 0; st.fo := 0;
	st.wr := 0; st.wf := 0; st.ws := 0; st.wok := true;
	RETURN st;
END $$;

-- quiet (prelude.lua's quiet): a closed circuit with nothing bad in its window, known
-- from the sums of a _window call (which prunes stale buckets, as quiet does).
CREATE FUNCTION {{.P}}_quiet(st {{.P}}st) RETURNS boolean LANGUAGE sql IMMUTABLE
AS $$ SELECT st.st = 0 AND st.cf = 0 AND st.gf = 0 AND st.wf + st.ws = 0 $$;

-- _transition moves to state p_to in a new generation and records it in the history
-- (prelude.lua's transition and record): with the history on (retention and max entries
-- in the settings), one row with the window's counts before they are cleared, the replica
-- whose call made it ('' for open_timeout: the clock ended the period); then the
-- upstream's rows (its keys' included, as the Redis stream) older than the retention or
-- beyond the max entries are deleted. The leases go with the old generation unless an
-- open period ends.
CREATE FUNCTION {{.P}}_transition(st {{.P}}st, s {{.P}}settings, p_to bigint, p_reason text, p_now bigint)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	keep boolean := st.st = 1 AND p_to = 2;
	w record;
BEGIN
	IF s.hret > 0 AND s.hlen > 0 THEN
		SELECT * INTO w FROM {{.P}}_sums(st, s, p_now);
		INSERT INTO {{.P}}history (at, upstream, key, from_state, to_state, reason, requests, failures, slow,
			consecutive, generation, replica)
		VALUES ({{.P}}_ts(p_now), st.upstream, st.key, {{.P}}_state_name(st.st), {{.P}}_state_name(p_to), p_reason,
			w.r, w.f, w.sl, st.cf, st.gen + 1,
			CASE WHEN p_reason = 'open_timeout' THEN '' ELSE coalesce(st.replica, '') END);
		-- SKIP LOCKED: a row another call (a key's of the same upstream) or cleanup is
		-- deleting is theirs; waiting for it could close a cycle of waits
		DELETE FROM {{.P}}history h WHERE h.id IN (SELECT hh.id FROM {{.P}}history hh WHERE hh.upstream = st.upstream
			AND hh.at < {{.P}}_ts(p_now - s.hret::bigint) FOR UPDATE SKIP LOCKED);
		DELETE FROM {{.P}}history h WHERE h.id IN (SELECT hh.id FROM {{.P}}history hh WHERE hh.upstream = st.upstream
			ORDER BY hh.at DESC, hh.id DESC OFFSET s.hlen::bigint FOR UPDATE SKIP LOCKED);
	END IF;
	st.st := p_to; st.gen := st.gen + 1; st.at := p_now; st.rs := p_reason;
	st.changed := true; st.dirty := true;
	st := {{.P}}_clear_counts(st);
	IF NOT keep THEN
		DELETE FROM {{.P}}leases l WHERE l.upstream = st.upstream AND l.key = st.key;
	END IF;
	RETURN st;
END $$;

-- _timeout moves an open circuit whose period ended to half-open (normal and
-- metrics-only modes).
CREATE FUNCTION {{.P}}_timeout(st {{.P}}st, s {{.P}}settings, p_now bigint) RETURNS {{.P}}st LANGUAGE plpgsql AS $$
BEGIN
	IF st.md IN (0, 3) AND st.st = 1 AND p_now >= st.ou THEN
		st.sc := 0;
		st := {{.P}}_transition(st, s, 2, 'open_timeout', p_now);
	END IF;
	RETURN st;
END $$;

-- _open_ms is open × mult^n as Lua's floats compute it, with what overflows (or
-- underflows) past any cap given as infinity (or 0): every such period is capped at
-- breaker.Settings.OpenPeriod's 4611686018427 ms anyway.
CREATE FUNCTION {{.P}}_open_ms(open float8, mult float8, n float8) RETURNS float8 LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF open > 0 AND mult > 0 AND n > 0 AND mult <> 1 THEN
		IF n * ln(mult) + ln(open) > 60 THEN
			RETURN 'Infinity'::float8;
		ELSIF n * ln(mult) + ln(open) < -60 THEN
			RETURN 0;
		END IF;
	END IF;
	RETURN open * power(mult, n);
END $$;

-- _trip opens the circuit for one more trip's period (prelude.lua's trip).
CREATE FUNCTION {{.P}}_trip(st {{.P}}st, s {{.P}}settings, p_now bigint, p_reason text, rnd float8)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	d float8;
BEGIN
	IF st.st = 0 AND s.decay > 0 THEN
		st.tr := greatest(st.tr - floor(greatest(p_now - st.at, 0) / s.decay), 0);
	END IF;
	st.tr := st.tr + 1;
	IF s.linear = 1 THEN
		d := s.open * st.tr;
	ELSE
		d := {{.P}}_open_ms(s.open, s.mult, st.tr - 1);
	END IF;
	IF s.maxopen > 0 AND d > s.maxopen THEN d := s.maxopen; END IF;
	IF d > 4611686018427 THEN d := 4611686018427; END IF;
	IF s.jitter > 0 THEN d := d + d * s.jitter * (2 * rnd - 1); END IF;
	d := floor(d);
	st.ou := p_now + d::bigint; st.opf := d::bigint;
	RETURN {{.P}}_transition(st, s, 1, p_reason, p_now);
END $$;

-- _pause_trip opens the circuit for a pause an upstream asked for (Retry-After).
CREATE FUNCTION {{.P}}_pause_trip(st {{.P}}st, s {{.P}}settings, p_now bigint, p_pause float8, rnd float8)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	d float8 := p_pause;
BEGIN
	IF s.maxopen > 0 AND d > s.maxopen THEN d := s.maxopen; END IF;
	IF s.jitter > 0 THEN d := d + d * s.jitter * (2 * rnd - 1); END IF;
	d := floor(d);
	st.ou := p_now + d::bigint; st.opf := d::bigint;
	RETURN {{.P}}_transition(st, s, 1, 'retry_after', p_now);
END $$;

-- _close closes the circuit; the trip count starts over unless trip decay keeps it.
CREATE FUNCTION {{.P}}_close(st {{.P}}st, s {{.P}}settings, p_reason text, p_now bigint)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
BEGIN
	IF s.decay = 0 THEN st.tr := 0; END IF;
	st.ou := 0; st.opf := 0;
	RETURN {{.P}}_transition(st, s, 0, p_reason, p_now);
END $$;

-- _trip_reason evaluates the rules as prelude.lua's trip_reason into st.reason (NULL:
-- no trip).
CREATE FUNCTION {{.P}}_trip_reason(st {{.P}}st, s {{.P}}settings, p_now bigint, p_grace float8)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	reason text;
BEGIN
	IF s.cg > 0 AND st.gf >= s.cg THEN reason := 'consecutive_gateway_failures'; END IF;
	IF reason IS NULL AND s.cf > 0 AND st.cf >= s.cf THEN reason := 'consecutive_failures'; END IF;
	IF reason IS NULL AND (s.fr > 0 OR s.sr > 0) AND p_now >= st.fo + p_grace THEN
		st := {{.P}}_window(st, s, p_now);
		IF st.wr > 0 AND st.wr >= s.minreq THEN
			IF s.fr > 0 AND st.wf * 100 >= s.fr * st.wr THEN
				reason := 'failure_rate';
			ELSIF s.sr > 0 AND st.ws * 100 >= s.sr * st.wr THEN
				reason := 'slow_call_rate';
			END IF;
		END IF;
	END IF;
	IF reason IS NOT NULL AND s.minrep > 1 THEN
		st := {{.P}}_reporters(st, s, p_now);
		IF st.nrep < s.minrep THEN reason := NULL; END IF;
	END IF;
	st.reason := reason;
	RETURN st;
END $$;

-- _timing: while open, how long the open period still runs; while closed, how long ago
-- it closed; 0 while half-open.
CREATE FUNCTION {{.P}}_timing(st {{.P}}st, p_now bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE st.st WHEN 1 THEN greatest(st.ou - p_now, 0) WHEN 0 THEN greatest(p_now - st.at, 0) ELSE 0 END
$$;

-- _save writes what changed, refreshes the expiry and notifies a transition
-- (prelude.lua's save). p_kttl is set for a per-key circuit (keyed.lua's save): its
-- expiry is then the rest of its open period plus the idle ttl, refreshed on every call,
-- and the upstream's registry of keys says so too.
CREATE FUNCTION {{.P}}_save(st {{.P}}st, s {{.P}}settings, p_now bigint, p_channel text, p_name text,
	p_cfg text, p_replica text, p_kttl float8)
RETURNS {{.P}}st LANGUAGE plpgsql AS $$
DECLARE
	exp bigint;
BEGIN
	IF p_cfg <> '' AND st.cfg IS DISTINCT FROM p_cfg THEN
		st.dirty := true;
	END IF;
	IF p_kttl IS NULL THEN
		exp := p_now + greatest(st.ou - p_now, 0) + 86400000;
	ELSE
		exp := p_now + greatest(st.ou - p_now, 0) + p_kttl::bigint;
	END IF;
	IF st.dirty OR st.new THEN
		UPDATE {{.P}}circuits c SET state = st.st, mode = st.md, generation = st.gen, open_until = st.ou,
			open_for = st.opf, trips = st.tr, consecutive = st.cf, gateway_consecutive = st.gf,
			successes = st.sc, changed_at = st.at, epoch = st.ep, onset = st.fo, reason = st.rs,
			cfg = CASE WHEN p_cfg <> '' THEN p_cfg ELSE st.cfg END,
			cfg_replica = CASE WHEN p_cfg <> '' THEN p_replica ELSE st.cfgr END,
			buckets = st.b, reports = st.r, expires_at = exp,
			published_at = CASE WHEN st.changed THEN p_now ELSE c.published_at END
		WHERE c.upstream = st.upstream AND c.key = st.key;
		IF st.changed THEN
			PERFORM pg_notify(p_channel, concat_ws(' ', p_name, st.st, st.md, st.gen, {{.P}}_timing(st, p_now),
				st.opf, st.tr, p_now, st.ep, coalesce(st.rs, '')));
		END IF;
	ELSIF p_kttl IS NOT NULL THEN
		UPDATE {{.P}}circuits c SET expires_at = exp WHERE c.upstream = st.upstream AND c.key = st.key;
	END IF;
	IF p_kttl IS NOT NULL THEN
		INSERT INTO {{.P}}keys AS k (upstream, key, expires_at) VALUES (st.upstream, st.key, exp)
		ON CONFLICT (upstream, key) DO UPDATE SET expires_at = excluded.expires_at;
	END IF;
	RETURN st;
END $$;

-- _reply is what every script returns (prelude.lua's reply), as text.
CREATE FUNCTION {{.P}}_reply(st {{.P}}st, s {{.P}}settings, p_now bigint, p_granted bigint, p_prevcfg text,
	p_prevcfgr text)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
	q int := 0;
BEGIN
	st := {{.P}}_window(st, s, p_now);
	IF {{.P}}_quiet(st) THEN
		q := 1;
	ELSIF st.st = 0 AND st.grace IS NOT NULL AND p_now < st.fo + st.grace THEN
		q := 2;
	END IF;
	RETURN ARRAY[st.st::text, st.md::text, st.gen::text, {{.P}}_timing(st, p_now)::text, st.opf::text,
		st.tr::text, p_now::text, coalesce(p_granted, 0)::text, coalesce(p_prevcfg, ''), coalesce(p_prevcfgr, ''),
		coalesce(st.corrupt, ''), st.ep::text, coalesce(st.rs, ''), q::text];
END $$;

-- _flush is flush.lua on circuit (p_up, p_key). ARGV: replica, generation of the counts,
-- requests, failures, slow, tail, had_success, settings, settings hash, rnd, channel,
-- name, onset channel, grace ms, gateway tail, gateway_ended, pause ms, half-open.
CREATE FUNCTION {{.P}}_flush(p_up text, p_key text, args text[], p_kttl float8) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
	s {{.P}}settings := {{.P}}_settings(args[8]);
	v_now bigint; -- the clock once the row is held (_load)
	st {{.P}}st;
	prevcfg text;
	prevcfgr text;
	v_gen float8 := {{.P}}_num(args[2]);
	req float8 := {{.P}}_num(args[3]);
	fail float8 := {{.P}}_num(args[4]);
	slow float8 := {{.P}}_num(args[5]);
	tail float8 := {{.P}}_num(args[6]);
	gtail float8;
	wasquiet boolean;
	k bigint;
	c jsonb;
	pause float8;
BEGIN
	st := {{.P}}_load(p_up, p_key, s, args[1]);
	v_now := st.now;
	IF args[18] = '1' THEN st := {{.P}}_timeout(st, s, v_now); END IF;
	prevcfg := st.cfg; prevcfgr := st.cfgr;
	st.grace := {{.P}}_num(args[14]);
	IF req > 0 AND v_gen = st.gen AND st.st = 0 THEN
		st := {{.P}}_window(st, s, v_now);
		wasquiet := {{.P}}_quiet(st);
		k := floor(v_now / {{.P}}_bucket_width(s))::bigint;
		c := coalesce(st.b -> k::text, '[0, 0, 0]'::jsonb);
		st.b := st.b || jsonb_build_object(k::text, jsonb_build_array((c ->> 0)::float8 + req,
			(c ->> 1)::float8 + fail, (c ->> 2)::float8 + slow));
		st.wok := false;
		IF args[7] = '1' THEN st.cf := tail; ELSE st.cf := st.cf + tail; END IF;
		gtail := coalesce({{.P}}_num(args[15]), 0);
		IF args[16] = '1' THEN st.gf := gtail; ELSE st.gf := st.gf + gtail; END IF;
		IF fail > 0 THEN st.r := st.r || jsonb_build_object(args[1], v_now); END IF;
		IF wasquiet AND fail + slow > 0 THEN
			st.fo := v_now;
			PERFORM pg_notify(args[13], args[12]);
		END IF;
		st.dirty := true;
		-- prune stale buckets and failure reports whatever rules and mode are in force
		st := {{.P}}_window(st, s, v_now);
		st := {{.P}}_reporters(st, s, v_now);
	END IF;
	pause := coalesce({{.P}}_num(args[17]), 0);
	IF pause > 0 AND v_gen = st.gen AND st.st = 0 AND st.md IN (0, 3) THEN
		st := {{.P}}_pause_trip(st, s, v_now, pause, {{.P}}_num(args[10]));
	END IF;
	-- a poll decides too: the rate rules may have been waiting for the grace to end
	IF st.st = 0 AND st.md IN (0, 3) THEN
		st := {{.P}}_trip_reason(st, s, v_now, st.grace);
		IF st.reason IS NOT NULL THEN
			st := {{.P}}_trip(st, s, v_now, st.reason, {{.P}}_num(args[10]));
		END IF;
	END IF;
	-- refresh: make sure the row lives 14 hours more (flush.lua's PTTL check)
	IF args[19] = '1' AND NOT st.dirty AND NOT st.new THEN
		st.dirty := coalesce((SELECT c.expires_at FROM {{.P}}circuits c
			WHERE c.upstream = p_up AND c.key = p_key) < v_now + 50400000, true);
	END IF;
	st := {{.P}}_save(st, s, v_now, args[11], args[12], args[9], args[1], p_kttl);
	RETURN {{.P}}_reply(st, s, v_now, 0, prevcfg, prevcfgr);
END $$;

-- _acquire is acquire.lua. ARGV: replica, want, lease ms, settings, lease id base,
-- channel, name, advance.
CREATE FUNCTION {{.P}}_acquire(p_up text, p_key text, args text[], p_kttl float8) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
	s {{.P}}settings := {{.P}}_settings(args[4]);
	v_now bigint; -- the clock once the row is held (_load)
	st {{.P}}st;
	granted bigint := 0;
	lease float8;
	lgen bigint;
	expires bigint;
	held bigint;
BEGIN
	st := {{.P}}_load(p_up, p_key, s, args[1]);
	v_now := st.now;
	IF st.md IN (0, 3) THEN
		st := {{.P}}_timeout(st, s, v_now);
		lease := {{.P}}_num(args[3]);
		lgen := st.gen; expires := v_now + lease;
		IF st.st = 1 AND args[8] = '1' THEN
			lgen := st.gen + 1; expires := st.ou + lease;
		END IF;
		IF st.st = 2 OR (st.st = 1 AND args[8] = '1' AND expires <= v_now + 86400000) THEN
			-- expired leases, and those said to last more than a day (no replica granted them)
			DELETE FROM {{.P}}leases l WHERE l.upstream = p_up AND l.key = p_key
				AND (l.expires_at <= v_now OR l.expires_at > v_now + 86400000);
			SELECT count(*) INTO held FROM {{.P}}leases l WHERE l.upstream = p_up AND l.key = p_key;
			granted := greatest(0, least({{.P}}_num(args[2]), s.hmax - held));
			FOR i IN 1..granted LOOP
				INSERT INTO {{.P}}leases AS l (upstream, key, id, expires_at)
				VALUES (p_up, p_key, args[5] || ':' || lgen || ':' || i, expires)
				ON CONFLICT (upstream, key, id) DO UPDATE SET expires_at = excluded.expires_at;
			END LOOP;
		END IF;
	END IF;
	st := {{.P}}_save(st, s, v_now, args[6], args[7], '', args[1], p_kttl);
	RETURN {{.P}}_reply(st, s, v_now, granted, NULL, NULL);
END $$;

-- _trial is trial.lua. ARGV: replica, generation, successes, failures, settings, rnd,
-- channel, name, pause ms, lease ids... (an id ending in '*' stands for every lease whose
-- id starts with the rest).
CREATE FUNCTION {{.P}}_trial(p_up text, p_key text, args text[], p_kttl float8) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
	s {{.P}}settings := {{.P}}_settings(args[5]);
	v_now bigint; -- the clock once the row is held (_load)
	st {{.P}}st;
	lid text;
	pause float8;
BEGIN
	st := {{.P}}_load(p_up, p_key, s, args[1]);
	v_now := st.now;
	-- a trial on a permit granted in advance may be the first the store hears of the
	-- half-open period
	st := {{.P}}_timeout(st, s, v_now);
	FOR i IN 10..coalesce(array_upper(args, 1), 0) LOOP
		lid := args[i];
		IF right(lid, 1) = '*' THEN
			DELETE FROM {{.P}}leases l WHERE l.upstream = p_up AND l.key = p_key
				AND left(l.id, length(lid) - 1) = left(lid, -1);
		ELSE
			DELETE FROM {{.P}}leases l WHERE l.upstream = p_up AND l.key = p_key AND l.id = lid;
		END IF;
	END LOOP;
	pause := coalesce({{.P}}_num(args[9]), 0);
	IF {{.P}}_num(args[2]) = st.gen AND st.st = 2 THEN
		IF pause > 0 AND st.md IN (0, 3) THEN
			st := {{.P}}_pause_trip(st, s, v_now, pause, {{.P}}_num(args[6]));
		ELSIF {{.P}}_num(args[4]) > 0 THEN
			st := {{.P}}_trip(st, s, v_now, 'trial_failed', {{.P}}_num(args[6]));
		ELSIF {{.P}}_num(args[3]) > 0 THEN
			st.sc := st.sc + {{.P}}_num(args[3]);
			st.dirty := true;
			IF st.sc >= s.sthresh THEN
				st := {{.P}}_close(st, s, 'trials_succeeded', v_now);
			END IF;
		END IF;
	END IF;
	st := {{.P}}_save(st, s, v_now, args[7], args[8], '', args[1], p_kttl);
	RETURN {{.P}}_reply(st, s, v_now, 0, NULL, NULL);
END $$;

-- _control is control.lua. ARGV: op, mode, settings, rnd, channel, name, replica.
CREATE FUNCTION {{.P}}_control(p_up text, p_key text, args text[], p_kttl float8) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
	s {{.P}}settings := {{.P}}_settings(args[3]);
	v_now bigint; -- the clock once the row is held (_load)
	st {{.P}}st;
	op text := args[1];
BEGIN
	st := {{.P}}_load(p_up, p_key, s, args[7]);
	v_now := st.now;
	IF op = 'open' THEN
		st := {{.P}}_trip(st, s, v_now, 'mode', {{.P}}_num(args[4]));
	ELSIF op = 'close' THEN
		-- on a closed circuit it does nothing, as breaker.Close: the counts stay
		IF st.st <> 0 THEN st := {{.P}}_close(st, s, 'mode', v_now); END IF;
	ELSIF op = 'reset' THEN
		st.md := 0; st.tr := 0;
		st := {{.P}}_close(st, s, 'reset', v_now);
	ELSIF op = 'mode' THEN
		-- a new generation with empty counts, as breaker.SetMode: what was counted while
		-- forced closed (or under the old mode) must not trip the new one. The state
		-- stays: not a transition of the history.
		st.md := {{.P}}_num(args[2]);
		st.gen := st.gen + 1; st.changed := true; st.dirty := true; st.rs := 'mode';
		st := {{.P}}_clear_counts(st);
		DELETE FROM {{.P}}leases l WHERE l.upstream = p_up AND l.key = p_key;
	END IF;
	st := {{.P}}_save(st, s, v_now, args[5], args[6], '', args[7], p_kttl);
	RETURN {{.P}}_reply(st, s, v_now, 0, NULL, NULL);
END $$;

-- The scripts on an upstream's circuit: name is the upstream. (PL/pgSQL, not SQL: a SQL
-- function that cannot be inlined is planned again on every call.)
CREATE FUNCTION {{.P}}flush(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$ BEGIN RETURN {{.P}}_flush(name, '', args, NULL); END $$;
CREATE FUNCTION {{.P}}acquire(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$ BEGIN RETURN {{.P}}_acquire(name, '', args, NULL); END $$;
CREATE FUNCTION {{.P}}trial(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$ BEGIN RETURN {{.P}}_trial(name, '', args, NULL); END $$;
CREATE FUNCTION {{.P}}control(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$ BEGIN RETURN {{.P}}_control(name, '', args, NULL); END $$;

-- _keyed is keyed.lua's bounds: args[1..3] are max keys, idle ttl ms and the key. It
-- returns false when the upstream's registry is full and does not hold the key (the
-- script's reply is then -1 and nothing is written). The registry is locked for the
-- call's transaction (an advisory lock per upstream), so concurrent calls cannot both
-- take the last place.
CREATE FUNCTION {{.P}}_keyed(p_up text, args text[]) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	v_now bigint;
	held bigint;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtextextended('{{.P}}keys:' || p_up, 0));
	v_now := {{.P}}now_ms();
	DELETE FROM {{.P}}keys k WHERE k.upstream = p_up AND k.expires_at <= v_now;
	IF EXISTS (SELECT 1 FROM {{.P}}keys k WHERE k.upstream = p_up AND k.key = args[3]) THEN
		RETURN true;
	END IF;
	SELECT count(*) INTO held FROM {{.P}}keys k WHERE k.upstream = p_up;
	RETURN NOT held >= {{.P}}_num(args[1]);
END $$;

-- The scripts on a per-key circuit: name is the upstream, args[1..3] max keys, idle ttl
-- ms and the key, the rest the script's own ARGV.
CREATE FUNCTION {{.P}}key_flush(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
BEGIN
	IF NOT {{.P}}_keyed(name, args) THEN RETURN ARRAY['-1']; END IF;
	RETURN {{.P}}_flush(name, args[3], args[4:], {{.P}}_num(args[2]));
END $$;
CREATE FUNCTION {{.P}}key_acquire(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
BEGIN
	IF NOT {{.P}}_keyed(name, args) THEN RETURN ARRAY['-1']; END IF;
	RETURN {{.P}}_acquire(name, args[3], args[4:], {{.P}}_num(args[2]));
END $$;
CREATE FUNCTION {{.P}}key_trial(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
BEGIN
	IF NOT {{.P}}_keyed(name, args) THEN RETURN ARRAY['-1']; END IF;
	RETURN {{.P}}_trial(name, args[3], args[4:], {{.P}}_num(args[2]));
END $$;
CREATE FUNCTION {{.P}}key_control(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
BEGIN
	IF NOT {{.P}}_keyed(name, args) THEN RETURN ARRAY['-1']; END IF;
	RETURN {{.P}}_control(name, args[3], args[4:], {{.P}}_num(args[2]));
END $$;

-- heartbeat (store/scripts.go's heartbeatScript): name is the replica, args[1] the ms
-- its heartbeat lives. It writes, so a database that takes no writes (a standby) fails
-- it. Reply {1}.
CREATE FUNCTION {{.P}}heartbeat(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
BEGIN
	INSERT INTO {{.P}}heartbeats AS h (replica, expires_at) VALUES ($1, {{.P}}now_ms() + {{.P}}_num(args[1])::bigint)
	ON CONFLICT (replica) DO UPDATE SET expires_at = excluded.expires_at;
	RETURN ARRAY['1'];
END $$;

-- tally (store/tally.go's tallyScript): name is the tally, args replica, a, b, window
-- ms. It records the replica's report on the database's clock, drops reports older than
-- the window (or more than a window ahead) and returns {a, b, n}: the sums over every
-- replica's report in the window and how many there are. A count of more than 15 digits
-- is not recorded (the Lua script records it and drops it at once).
CREATE FUNCTION {{.P}}tally(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
DECLARE
	v_now bigint := {{.P}}now_ms();
	win float8 := {{.P}}_num(args[4]);
	sa bigint;
	sb bigint;
	n bigint;
BEGIN
	IF args[2] ~ '^[0-9]{1,15}$' AND args[3] ~ '^[0-9]{1,15}$' THEN
		INSERT INTO {{.P}}tallies AS t (name, replica, a, b, at, expires_at)
		VALUES ($1, args[1], args[2]::bigint, args[3]::bigint, v_now, v_now + (2 * win)::bigint)
		ON CONFLICT ON CONSTRAINT {{.P}}tallies_pkey DO UPDATE SET a = excluded.a, b = excluded.b, at = excluded.at,
			expires_at = excluded.expires_at;
	ELSE
		DELETE FROM {{.P}}tallies t WHERE t.name = $1 AND t.replica = args[1];
	END IF;
	-- The others' reports out of the window go (SKIP LOCKED: a row another replica's call
	-- holds is its own, being written, or being deleted; waiting for it could deadlock
	-- two replicas reporting at once); every report lives 2 windows (the Lua hash's
	-- expiry), and only those in the window count.
	DELETE FROM {{.P}}tallies t WHERE (t.name, t.replica) IN (SELECT x.name, x.replica FROM {{.P}}tallies x
		WHERE x.name = $1 AND NOT (x.at <= v_now + win AND v_now - x.at <= win AND x.a <= 999999999999999
			AND x.b <= 999999999999999 AND x.a >= 0 AND x.b >= 0)
		FOR UPDATE SKIP LOCKED);
	SELECT coalesce(sum(t.a), 0), coalesce(sum(t.b), 0), count(*) INTO sa, sb, n
	FROM {{.P}}tallies t WHERE t.name = $1 AND t.at <= v_now + win AND v_now - t.at <= win
		AND t.a <= 999999999999999 AND t.b <= 999999999999999 AND t.a >= 0 AND t.b >= 0;
	RETURN ARRAY[sa::text, sb::text, n::text];
END $$;

-- claim (store/redis_claim.go's claimScript): name is the lease's key, args owner and
-- ms. A lease that is free (or expired) or already the owner's is (re)set to the owner
-- with a fresh expiry: {1}; one held by another owner is left alone: {0}.
CREATE FUNCTION {{.P}}claim(name text, args text[]) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
DECLARE
	v_now bigint := {{.P}}now_ms();
	got text;
BEGIN
	INSERT INTO {{.P}}claims AS c (name, owner, expires_at) VALUES ($1, args[1], v_now + {{.P}}_num(args[2])::bigint)
	ON CONFLICT ON CONSTRAINT {{.P}}claims_pkey DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
		WHERE c.owner = excluded.owner OR c.expires_at <= v_now
	RETURNING c.owner INTO got;
	IF got IS NULL THEN RETURN ARRAY['0']; END IF;
	RETURN ARRAY['1'];
END $$;

-- history_read returns a circuit's transitions, newest first: p_key NULL for every
-- circuit of the upstream (its own and its keys').
CREATE FUNCTION {{.P}}history_read(p_upstream text, p_key text, p_limit integer)
RETURNS SETOF {{.P}}history LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
	SELECT * FROM {{.P}}history h WHERE h.upstream = p_upstream AND (p_key IS NULL OR h.key = p_key)
	ORDER BY h.at DESC, h.id DESC LIMIT p_limit
$$;

-- keys_read returns the unexpired keys of an upstream's registry, soonest expiry first
-- (as the Redis store's ZRANGE), at most p_limit.
CREATE FUNCTION {{.P}}keys_read(p_upstream text, p_limit integer) RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
	SELECT k.key FROM {{.P}}keys k WHERE k.upstream = p_upstream AND k.expires_at > {{.P}}now_ms()
	ORDER BY k.expires_at, k.key LIMIT p_limit
$$;

-- cleanup deletes what has expired (circuits, leases, keys, tallies, claims, heartbeats)
-- and the history older than p_retention_ms (none when 0) or beyond the p_max_entries
-- newest of each upstream (its keys' included; no bound when 0), and returns how many
-- rows it deleted. The Go side calls it about once a minute; nothing depends on it for
-- correctness (an expired row reads as absent, and each transition trims its upstream's
-- history as it appends to it), it only bounds the tables.
CREATE FUNCTION {{.P}}cleanup(p_retention_ms bigint, p_max_entries integer DEFAULT 0) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = {{.Schema}}, pg_temp AS $$
DECLARE
	v_now bigint := {{.P}}now_ms();
	total bigint := 0;
	n bigint;
BEGIN
	-- FOR UPDATE SKIP LOCKED everywhere: cleanup never waits for a row a function holds
	-- (which may wait for a row cleanup already holds: a deadlock); what it skips goes
	-- next time.
	DELETE FROM {{.P}}circuits c WHERE (c.upstream, c.key) IN (SELECT x.upstream, x.key FROM {{.P}}circuits x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	DELETE FROM {{.P}}leases l WHERE (l.upstream, l.key, l.id) IN (SELECT x.upstream, x.key, x.id FROM {{.P}}leases x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	DELETE FROM {{.P}}keys k WHERE (k.upstream, k.key) IN (SELECT x.upstream, x.key FROM {{.P}}keys x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	DELETE FROM {{.P}}tallies t WHERE (t.name, t.replica) IN (SELECT x.name, x.replica FROM {{.P}}tallies x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	DELETE FROM {{.P}}claims c WHERE c.name IN (SELECT x.name FROM {{.P}}claims x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	DELETE FROM {{.P}}heartbeats h WHERE h.replica IN (SELECT x.replica FROM {{.P}}heartbeats x
		WHERE x.expires_at <= v_now FOR UPDATE SKIP LOCKED);
	GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	IF p_retention_ms > 0 THEN
		DELETE FROM {{.P}}history h WHERE h.id IN (SELECT x.id FROM {{.P}}history x
			WHERE x.at < {{.P}}_ts(v_now - p_retention_ms) FOR UPDATE SKIP LOCKED);
		GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	END IF;
	IF p_max_entries > 0 THEN
		DELETE FROM {{.P}}history h WHERE h.id IN (SELECT x.id FROM {{.P}}history x WHERE x.id IN (
			SELECT y.id FROM (SELECT hh.id, row_number() OVER (PARTITION BY hh.upstream
				ORDER BY hh.at DESC, hh.id DESC) AS rn FROM {{.P}}history hh) y WHERE y.rn > p_max_entries)
			FOR UPDATE SKIP LOCKED);
		GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
	END IF;
	RETURN total;
END $$;

-- changes is the poll that backs NOTIFY up (a notification is lost while a listener's
-- connection is down, or before its LISTEN took effect): element 1 is the fleet's clock
-- (ms), the rest the transitions' notifications (_save's payload, rebuilt from the
-- current row) of the live circuits published at or after since_ms; a NULL since_ms asks
-- for the clock alone. One statement, whatever the number of circuits.
CREATE FUNCTION {{.P}}changes(since_ms bigint) RETURNS text[] LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = {{.Schema}}, pg_temp AS $$
DECLARE
	v_now bigint := {{.P}}now_ms();
BEGIN
	IF since_ms IS NULL THEN
		RETURN ARRAY[v_now::text];
	END IF;
	RETURN ARRAY[v_now::text] || coalesce((SELECT array_agg(concat_ws(' ',
			CASE WHEN c.key = '' THEN c.upstream ELSE c.upstream || '#' || c.key END,
			c.state, c.mode, c.generation,
			CASE c.state WHEN 1 THEN greatest(c.open_until - v_now, 0)
				WHEN 0 THEN greatest(v_now - c.changed_at, 0) ELSE 0 END,
			c.open_for, c.trips, v_now, c.epoch, coalesce(c.reason, '')))
		FROM {{.P}}circuits c WHERE c.published_at >= since_ms AND c.expires_at > v_now), '{}');
END $$;

-- Only the roles granted EXECUTE run the public functions; nobody but the owner runs
-- the helpers (they would run with the caller's rights, which a runtime role lacks). A
-- later version that creates a function ends with this block too.
DO $$
DECLARE
	f regprocedure;
BEGIN
	FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
		WHERE p.pronamespace = {{.SchemaLiteral}}::regnamespace AND starts_with(p.proname, '{{.P}}')
	LOOP
		EXECUTE 'REVOKE ALL ON FUNCTION ' || f::text || ' FROM PUBLIC';
	END LOOP;
END $$;
