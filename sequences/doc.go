// Package sequences will own distributed sequence allocation: step/offset,
// global (chunked) and time-based (snowflake) kinds. Nothing is implemented
// yet; sequences are currently copied at join time and otherwise local.
package sequences
