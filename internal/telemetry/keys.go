package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fuseproxy/fuseproxy/proxy"
)

// Per-key circuits (upstreams.<name>.keyed) are counted per upstream, never per key: a
// key is a tenant's name, and one label value per tenant would grow without bound.
var (
	keysTrackedDesc = prometheus.NewDesc(Namespace+"_keys_tracked",
		"Keys with a circuit of their own on this replica (upstreams.<name>.keyed), at most keyed.max_keys.", []string{"upstream"}, nil)
	keysOpenDesc = prometheus.NewDesc(Namespace+"_keys_open",
		"Keys whose circuit is not passing (open, half-open or forced open) on this replica.", []string{"upstream"}, nil)
	keysMaxDesc = prometheus.NewDesc(Namespace+"_keys_max",
		"keyed.max_keys: the most keys tracked at once.", []string{"upstream"}, nil)
	keysEvictionsDesc = prometheus.NewDesc(Namespace+"_keys_evictions_total",
		"Idle closed keys evicted to make room for a new key.", []string{"upstream"}, nil)
	keysOverflowDesc = prometheus.NewDesc(Namespace+"_keys_overflow_total",
		"New keys sent to keyed.default_key because the table was full of keys that may not be evicted.", []string{"upstream"}, nil)
	keysRejectedDesc = prometheus.NewDesc(Namespace+"_keys_rejected_total",
		"Requests a key's circuit rejected (counted as rejected in fuseproxy_requests_total too).", []string{"upstream"}, nil)
	keysRefusedDesc = prometheus.NewDesc(Namespace+"_keys_store_refused_total",
		"Keys the shared store's registry refused (keyed.max_keys reached in Redis): they decide on this replica alone.", nil, nil)
)

// SetKeys registers the per-key metrics, read at scrape time from stats and refused
// (either may be nil). Call it once.
func (m *Metrics) SetKeys(stats func() []proxy.KeyStats, refused func() uint64) {
	m.reg.MustRegister(&keyCollector{stats: stats, refused: refused})
}

type keyCollector struct {
	stats   func() []proxy.KeyStats
	refused func() uint64
}

func (c *keyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{keysTrackedDesc, keysOpenDesc, keysMaxDesc, keysEvictionsDesc,
		keysOverflowDesc, keysRejectedDesc, keysRefusedDesc} {
		ch <- d
	}
}

func (c *keyCollector) Collect(ch chan<- prometheus.Metric) {
	if c.stats != nil {
		for _, s := range c.stats() {
			ch <- prometheus.MustNewConstMetric(keysTrackedDesc, prometheus.GaugeValue, float64(s.Tracked), s.Upstream)
			ch <- prometheus.MustNewConstMetric(keysOpenDesc, prometheus.GaugeValue, float64(s.Open), s.Upstream)
			ch <- prometheus.MustNewConstMetric(keysMaxDesc, prometheus.GaugeValue, float64(s.MaxKeys), s.Upstream)
			ch <- prometheus.MustNewConstMetric(keysEvictionsDesc, prometheus.CounterValue, float64(s.Evictions), s.Upstream)
			ch <- prometheus.MustNewConstMetric(keysOverflowDesc, prometheus.CounterValue, float64(s.Overflow), s.Upstream)
			ch <- prometheus.MustNewConstMetric(keysRejectedDesc, prometheus.CounterValue, float64(s.Rejected), s.Upstream)
		}
	}
	if c.refused != nil {
		ch <- prometheus.MustNewConstMetric(keysRefusedDesc, prometheus.CounterValue, float64(c.refused()))
	}
}
