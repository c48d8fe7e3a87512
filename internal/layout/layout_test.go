package layout

import (
	"encoding/json"
	"go/format"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/keyhole-net/keyhole"

type pkg struct {
	ImportPath string
	Dir        string
	Doc        string
	Imports    []string
	GoFiles    []string
	TestGoFiles,
	XTestGoFiles []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("only %d packages listed; the check is broken", len(pkgs))
	}
	return pkgs
}

// role returns which top-level part of the tree a package is in.
func role(path string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
	top, _, _ := strings.Cut(rest, "/")
	return top
}

func TestImportRules(t *testing.T) {
	roles := map[string]bool{"controller": true, "gateway": true, "client": true}
	for _, p := range listPackages(t) {
		from := role(p.ImportPath)
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/spf13/cobra") || strings.HasPrefix(imp, "github.com/spf13/viper") {
				if from != "cmd" {
					t.Errorf("%s imports %s: cobra and viper belong in cmd only", p.ImportPath, imp)
				}
			}
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := role(imp)
			switch {
			case roles[from] && roles[to] && from != to:
				t.Errorf("%s imports %s: roles never import each other; move shared code to internal/", p.ImportPath, imp)
			case from == "internal" && roles[to]:
				t.Errorf("%s imports %s: internal/ must not depend on a role", p.ImportPath, imp)
			case strings.HasPrefix(p.ImportPath, module+"/internal/wg") && imp == module+"/internal/api":
				t.Errorf("%s imports internal/api: the data plane takes its own config types", p.ImportPath)
			case to == "cmd" && from != "cmd":
				t.Errorf("%s imports %s: nothing depends on cmd", p.ImportPath, imp)
			}
		}
	}
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" && len(p.GoFiles) > 0 {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
	banned := map[string]bool{"util": true, "utils": true, "common": true, "helpers": true, "manager": true, "service": true, "misc": true}
	for _, p := range listPackages(t) {
		if banned[filepath.Base(p.ImportPath)] {
			t.Errorf("package name %s says nothing about what it holds", p.ImportPath)
		}
	}
}

func TestGofmt(t *testing.T) {
	for _, p := range listPackages(t) {
		var files []string
		files = append(files, p.GoFiles...)
		files = append(files, p.TestGoFiles...)
		files = append(files, p.XTestGoFiles...)
		for _, f := range files {
			path := filepath.Join(p.Dir, f)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fmted, err := format.Source(src)
			if err != nil {
				t.Errorf("%s: %v", path, err)
				continue
			}
			if string(fmted) != string(src) {
				t.Errorf("%s is not gofmt-ed", path)
			}
		}
	}
}
