// Package conflict decides row conflicts and describes them for the
// bdr.conflict_history table.
//
// It owns the rules (DESIGN rule 3): given what the applier found locally
// and what arrived from the peer, which version wins and why. It has no
// network or SQL code: the applier detects conflicts, asks Resolve for a
// Decision, applies it and writes the Record this package describes.
//
// Every function is pure and safe for concurrent use.
package conflict
