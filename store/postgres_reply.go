package store

import (
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// pgScriptFunction is the PostgreSQL function (without the prefix) that does what a
// Lua script does, with the same arguments (store/sql/002_functions.sql).
func pgScriptFunction(s *redis.Script) (string, bool) {
	switch s {
	case flushScript:
		return "flush", true
	case acquireScript:
		return "acquire", true
	case trialScript:
		return "trial", true
	case controlScript:
		return "control", true
	case keyFlushScript:
		return "key_flush", true
	case keyAcquireScript:
		return "key_acquire", true
	case keyTrialScript:
		return "key_trial", true
	case keyControlScript:
		return "key_control", true
	case heartbeatScript:
		return "heartbeat", true
	case tallyScript:
		return "tally", true
	case claimScript:
		return "claim", true
	}
	return "", false
}

// pgArg is a script argument as the functions take it: text, as go-redis would send it.
func pgArg(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case uint32:
		return strconv.FormatUint(uint64(x), 10), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case bool:
		if x {
			return "1", nil
		}
		return "0", nil
	}
	return "", fmt.Errorf("script argument %T %v: no text form", v, v)
}

// pgArgs turns a call's arguments into the functions' args text[].
func pgArgs(args []any) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		s, err := pgArg(a)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i+1, err)
		}
		out[i] = s
	}
	return out, nil
}

// pgReplyValue turns a function's text[] reply into what go-redis returns for the Lua
// script's reply, so that decodeReply and the other decoders take either: the circuit
// scripts' 14 elements as []any of int64 (the numbers) and string (the settings hash,
// its replica, the corrupt reason and the reason: elements 8, 9, 10 and 12); a keyed
// script's refusal {-1} and claim's and heartbeat's {n} as a bare int64; tally's
// {a, b, n} as []any of int64. A NULL element is nil. fn is the function without the
// prefix (pgScriptFunction).
func pgReplyValue(fn string, a []*string) (any, error) {
	num := func(i int) (any, error) {
		if a[i] == nil {
			return nil, nil
		}
		n, err := strconv.ParseInt(*a[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s reply element %d: %q is not an integer", fn, i, *a[i])
		}
		return n, nil
	}
	switch fn {
	case "flush", "acquire", "trial", "control", "key_flush", "key_acquire", "key_trial", "key_control":
		if len(a) == 1 && (fn[:4] == "key_") {
			return num(0)
		}
		if len(a) != 14 {
			return nil, fmt.Errorf("%s reply: want 14 elements, got %d", fn, len(a))
		}
		out := make([]any, len(a))
		for i := range a {
			switch i {
			case 8, 9, 10, 12:
				if a[i] != nil {
					out[i] = *a[i]
				}
			default:
				v, err := num(i)
				if err != nil {
					return nil, err
				}
				out[i] = v
			}
		}
		return out, nil
	case "claim", "heartbeat":
		if len(a) != 1 {
			return nil, fmt.Errorf("%s reply: want 1 element, got %d", fn, len(a))
		}
		return num(0)
	case "tally":
		if len(a) != 3 {
			return nil, fmt.Errorf("%s reply: want 3 elements, got %d", fn, len(a))
		}
		out := make([]any, 3)
		for i := range a {
			v, err := num(i)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("no PostgreSQL function %q", fn)
}
