package hygiene

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// packages returns every directory of the module holding non-test Go files,
// with the parsed files.
func packages(t *testing.T) map[string][]*ast.File {
	t.Helper()
	root := filepath.Join("..", "..")
	pkgs := map[string][]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || strings.HasPrefix(name, "tinyscada-state")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 5 {
		t.Fatalf("found only %d packages under %s; is the walk wrong?", len(pkgs), root)
	}
	return pkgs
}

func TestEveryPackageHasOneDoc(t *testing.T) {
	for dir, files := range packages(t) {
		var docs []string
		for _, f := range files {
			if f.Doc != nil {
				docs = append(docs, f.Name.Name)
			}
		}
		if len(docs) != 1 {
			t.Errorf("%s: %d files carry a package doc, want exactly 1", dir, len(docs))
		}
	}
}

// No work in init(): a role pays only for what it uses.
func TestNoInitFunctions(t *testing.T) {
	for dir, files := range packages(t) {
		for _, f := range files {
			for _, d := range f.Decls {
				if fn, ok := d.(*ast.FuncDecl); ok && fn.Recv == nil && fn.Name.Name == "init" {
					t.Errorf("%s: package %s has an init function", dir, f.Name.Name)
				}
			}
		}
	}
}

// No role imports another role, and shared code imports none: what roles
// have in common lives in shared/ (the database in shared/store), so a
// role's binary carries no other role's code and each can change alone. A
// role's own subpackages (services/broker/internal/...) are its own. Tests
// may start other roles as real peers.
func TestNoRoleImportsAnother(t *testing.T) {
	const module = "github.com/tinyscada/tinyscada/"
	root := filepath.Join("..", "..")
	checked := 0
	for dir, files := range packages(t) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		parts := strings.Split(filepath.ToSlash(rel), "/")
		owner := "" // the role the package belongs to; "" for shared code
		switch {
		case parts[0] == "services" && len(parts) > 1:
			owner = parts[1]
		case parts[0] == "shared":
		default:
			continue // commands and internal tools may wire roles together
		}
		checked++
		for _, f := range files {
			for _, imp := range f.Imports {
				path := strings.Trim(imp.Path.Value, `"`)
				role, ok := strings.CutPrefix(path, module+"services/")
				if !ok {
					continue
				}
				role, _, _ = strings.Cut(role, "/")
				if role != owner {
					t.Errorf("%s (package %s) imports %s: a role may import only shared packages and its own, shared code none", rel, f.Name.Name, path)
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("checked only %d packages under services/ and shared/; is the walk wrong?", checked)
	}
}
