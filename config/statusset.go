package config

// StatusSet is a set of HTTP status codes 0-599, one bit each (80 bytes where a
// [600]bool took 600: an upstream's config and its compiled table hold one or two).
type StatusSet [10]uint64

// Has reports whether code is in the set; a code outside 0-599 never is.
func (s *StatusSet) Has(code int) bool {
	return uint(code) < 600 && s[uint(code)>>6]&(1<<(uint(code)&63)) != 0
}

// Set puts code in the set (on) or takes it out; a code outside 0-599 is ignored.
func (s *StatusSet) Set(code int, on bool) {
	if uint(code) >= 600 {
		return
	}
	if on {
		s[uint(code)>>6] |= 1 << (uint(code) & 63)
	} else {
		s[uint(code)>>6] &^= 1 << (uint(code) & 63)
	}
}
