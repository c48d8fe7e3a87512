// Package layout holds no code, only tests that keep the repository's
// conventions true as it grows: the import rules of DESIGN.md §11 (roles
// never import each other, internal/ never imports a role, the data plane
// never sees wire types, cobra and viper live only in cmd), a doc comment
// on every package, and gofmt-clean sources.
package layout
