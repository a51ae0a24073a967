// Package arch checks the rules of docs/architecture.md ("Arrows") that the
// compiler does not: which packages may import which, and that no type of
// the daemon holds the Daemon.
package arch

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/libvirt-ft/libvirt-ft/"

// allowed lists, for each package of the module, the packages of the
// module it may import (docs/architecture.md, "Arrows"). A package missing
// here fails the test: add it, with its arrows, to the page and here.
var allowed = map[string][]string{
	"failover":             {},
	"logchan":              {"failover"},
	"qmp":                  {},
	"xml":                  {},
	"plugin/ctl":           {},
	"plugin/gate":          {},
	"plugin/reprotect":     {},
	"hooks":                {"plugin/ctl", "xml"},
	"plugin":               {"failover", "logchan", "plugin/ctl", "plugin/gate", "plugin/reprotect", "qmp", "xml"},
	"cmd/libvirt-ftd":      {"plugin"},
	"cmd/virt-ft":          {"plugin/ctl"},
	"cmd/libvirt-ft-hook":  {"hooks", "plugin/ctl"},
	"test/arch":            {},
	"test/tools/diskcheck": {},
	"test/tools/fdstore":   {},
	"test/tools/gaterelay": {},
	"test/tools/hostile":   {"logchan", "xml"},
	"test/tools/reprotect": {"plugin/reprotect", "qmp"},
	"test/tools/rrdump":    {"logchan"},
	"test/tools/rxcheck":   {"logchan"},
	"test/tools/tcpcheck":  {},
	"test/tools/trickle":   {},
}

func TestArrows(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.ImportPath, module)
		ok, known := allowed[name]
		if !known {
			t.Errorf("package %s is not in docs/architecture.md's arrows (test/arch)", name)
			continue
		}
		for _, imp := range p.Imports {
			dep, ours := strings.CutPrefix(imp, module)
			if ours && !slices.Contains(ok, dep) {
				t.Errorf("%s imports %s: an arrow docs/architecture.md does not allow", name, dep)
			}
		}
	}
}

// No type of package plugin other than Daemon holds a *Daemon: runs reach
// their host through env (docs/architecture.md, "Runs").
func TestNothingPointsBackToTheDaemon(t *testing.T) {
	files, err := filepath.Glob("../../plugin/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("plugin sources: %v", err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || ts.Name.Name == "Daemon" {
				return true
			}
			ast.Inspect(ts.Type, func(m ast.Node) bool {
				if id, ok := m.(*ast.Ident); ok && id.Name == "Daemon" {
					t.Errorf("%s: type %s refers to the Daemon", fset.Position(id.Pos()), ts.Name.Name)
				}
				return true
			})
			return true
		})
	}
}

// Every Go file of the module is as gofmt writes it (go/format): a change
// formatted by hand shows up in review as noise, and a mixed import block
// hides what was added.
func TestGofmt(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// The module's own files: git's list where there is one (never a
	// module cache or build tree that a machine puts in the work tree),
	// else a walk that skips hidden, vendor and output directories and
	// nested modules.
	var files []string
	if out, err := exec.Command("git", "-C", root, "ls-files", "-z", "*.go").Output(); err == nil {
		for _, f := range strings.Split(string(out), "\x00") {
			if f == "" {
				continue
			}
			if _, err := os.Stat(filepath.Join(root, f)); err != nil {
				continue // tracked but deleted in the work tree
			}
			files = append(files, filepath.Join(root, f))
		}
	} else {
		err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				name := d.Name()
				if path != root && (strings.HasPrefix(name, ".") || name == "out" || name == "vendor") {
					return filepath.SkipDir
				}
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil && path != root {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasSuffix(path, ".go") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(files) == 0 {
		t.Fatal("no Go files found")
	}
	for _, path := range files {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := format.Source(src)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if !bytes.Equal(got, src) {
			rel, _ := filepath.Rel(root, path)
			t.Errorf("%s is not gofmt-formatted: run gofmt -w %s", rel, rel)
		}
	}
}
