// Package hygiene holds repository-wide tests: every package has exactly one
// package doc, no package does work in init(), and no role imports another.
package hygiene
