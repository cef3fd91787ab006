// Package adminapi is bdrd's admin API: the HTTP/JSON protocol that bdrctl
// and the bdrd of other members speak, its server (authorization, routing
// and error mapping around a Backend) and its client.
//
// Every route needs "Authorization: Bearer TOKEN" (Auth): the operator's
// token anywhere, the group's internal token on the routes members use on
// each other; a request without a valid one gets 401 and reaches nothing.
// Listen and NewClient also take "unix:/path/to.sock" addresses.
//
// The handler and Client are safe for concurrent use; the handler may call
// Auth.Internal concurrently.
package adminapi
