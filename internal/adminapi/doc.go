// Package adminapi is bdrd's admin API: the HTTP/JSON protocol that bdrctl
// and the bdrd of other members speak, its server (routing and error
// mapping around a Backend) and its client.
//
// The Server and Client are safe for concurrent use.
package adminapi
