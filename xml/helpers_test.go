package ftxml

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mutate replaces the first old in s by new and fails if old is absent.
func mutate(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("mutate: %q not found", old)
	}
	return strings.Replace(s, old, new, 1)
}

func parse(t *testing.T, s string) *libvirtxml.Domain {
	t.Helper()
	dom, err := ParseDomain(s)
	if err != nil {
		t.Fatal(err)
	}
	return dom
}

func mustPrimary(t *testing.T, s string, h HostConfig) string {
	t.Helper()
	out, err := Primary(s, h)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustBackup(t *testing.T, s string, h HostConfig) string {
	t.Helper()
	out, err := Backup(s, h)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func problemsOf(t *testing.T, err error) []Problem {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	return ve.Problems
}

func findProblem(ps []Problem, field string) (Problem, bool) {
	for _, p := range ps {
		if p.Field == field {
			return p, true
		}
	}
	return Problem{}, false
}

func fields(ps []Problem) []string {
	var fs []string
	for _, p := range ps {
		fs = append(fs, p.Field)
	}
	return fs
}

// args returns the values of the <qemu:commandline> arguments.
func args(dom *libvirtxml.Domain) []string {
	if dom.QEMUCommandline == nil {
		return nil
	}
	var out []string
	for _, a := range dom.QEMUCommandline.Args {
		out = append(out, a.Value)
	}
	return out
}
