// Package membership carries out the group's membership procedures on one
// node (DESIGN "Join and part"): init of a new group, admission of a joiner
// on the member it goes through, the join itself on the joining node (slots,
// the via node's snapshot, schema and data copy, origins, streams), part of
// a member from any other member, and leave. It is the admin API's backend.
//
// Node ids are allocated by the member a joiner goes through, which needs
// every member to be reachable; consensus-based decisions come later.
//
// Concurrency: a Service is safe for concurrent use. Procedures that change
// the local catalog are serialized by a mutex; a join's long phases run on
// the goroutine of Run. A join's row copy may run in several sessions, one
// goroutine each, owned by an errgroup the copy waits for.
package membership
