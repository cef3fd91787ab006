// Package monitoring holds no code: it ships the Grafana dashboard
// (grafana-dashboard.json) and the Prometheus alerting rules (alerts.yml)
// for bdrd's metrics, and its test checks that both parse and only use
// metrics bdrd exports.
package monitoring
