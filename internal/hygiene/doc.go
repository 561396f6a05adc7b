// Package hygiene holds repository-wide tests: every package has exactly one
// package doc, and no package does work in init().
package hygiene
