// appset-render: the Applications an ApplicationSet generates, computed by Argo CD's own code.
//
//	appset-render --repo DIR [--project FILE]... APPSET.yaml
//
// It calls what the ApplicationSet controller calls on every reconcile
// (applicationset/controllers/applicationset_controller.go):
// generators.GetGenerators (list, matrix, git, ...) and template.GenerateApplications (parameters,
// go templates with the ApplicationSet's options, templatePatch, finalizers, namespace), then the
// controller's own checks that every Application has a unique name and an existing AppProject.
//
// The one substitute is the transport to the repo-server: the git generator's services.Repos is
// answered from the git work tree DIR with Argo CD's git client (util/git LsFiles, the call the
// repo-server's GetGitFiles makes after checking the revision out), so DIR stands for the revision
// the generator asks for. AppProjects come from --project files (a controller-runtime fake client,
// as in Argo CD's own controller tests). Output: the Applications as a YAML stream, sorted by name.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	log "github.com/sirupsen/logrus"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-cd/v3/applicationset/controllers/template"
	"github.com/argoproj/argo-cd/v3/applicationset/generators"
	"github.com/argoproj/argo-cd/v3/applicationset/services"
	"github.com/argoproj/argo-cd/v3/applicationset/utils"
	"github.com/argoproj/argo-cd/v3/common"
	"github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/git"
)

// workTreeRepos answers the git generator from a local work tree with Argo CD's git client.
type workTreeRepos struct {
	root string
	// The controller's default (--enable-new-git-file-globbing=false).
	newGlobbing bool
}

var _ services.Repos = workTreeRepos{}

func (w workTreeRepos) client(repoURL string) (git.Client, error) {
	return git.NewClientExt(repoURL, w.root, git.NopCreds{}, false, false, "", "")
}

func (w workTreeRepos) GetFiles(ctx context.Context, repoURL, _, _, pattern string, _ bool, _ *v1alpha1.SourceIntegrity) (map[string][]byte, error) {
	c, err := w.client(repoURL)
	if err != nil {
		return nil, err
	}
	if pattern == "" {
		pattern = "."
	}
	files, err := c.LsFiles(ctx, pattern, w.newGlobbing)
	if err != nil {
		return nil, fmt.Errorf("unable to list files (pattern %s): %w", pattern, err)
	}
	res := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(c.Root(), f))
		if err != nil {
			return nil, err
		}
		res[f] = b
	}
	return res, nil
}

func (w workTreeRepos) GetDirectories(context.Context, string, string, string, bool, *v1alpha1.SourceIntegrity) ([]string, error) {
	return nil, errors.New("appset-render: the git directories generator is not wired up")
}

func (w workTreeRepos) GetOciFiles(context.Context, string, string, string, string, bool) (map[string][]byte, error) {
	return nil, errors.New("appset-render: OCI sources are not wired up")
}

func (w workTreeRepos) GetOciDirectories(context.Context, string, string, string, bool) ([]string, error) {
	return nil, errors.New("appset-render: OCI sources are not wired up")
}

func readObjects(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if strings.TrimSpace(string(doc)) != "" {
			docs = append(docs, doc)
		}
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func run() error {
	repo := flag.String("repo", ".", "git work tree that stands for the repository the git generator reads")
	var projectFiles multiFlag
	flag.Var(&projectFiles, "project", "YAML file with AppProjects (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		return errors.New("usage: appset-render --repo DIR [--project FILE]... APPSET.yaml")
	}
	// The controller logs every generation, and util/exec every git call, at info level.
	log.SetOutput(io.Discard)
	if os.Getenv(common.EnvLogLevel) == "" {
		_ = os.Setenv(common.EnvLogLevel, "error")
	}

	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	docs, err := readObjects(flag.Arg(0))
	if err != nil {
		return err
	}
	if len(docs) != 1 {
		return fmt.Errorf("%s: expected one ApplicationSet, found %d documents", flag.Arg(0), len(docs))
	}
	var appset v1alpha1.ApplicationSet
	if err := yaml.UnmarshalStrict(docs[0], &appset); err != nil {
		return fmt.Errorf("%s: %w", flag.Arg(0), err)
	}
	if appset.Kind != "ApplicationSet" {
		return fmt.Errorf("%s: kind %q is not ApplicationSet", flag.Arg(0), appset.Kind)
	}

	var objs []client.Object
	for _, p := range projectFiles {
		pdocs, err := readObjects(p)
		if err != nil {
			return err
		}
		for _, d := range pdocs {
			var proj v1alpha1.AppProject
			if err := yaml.UnmarshalStrict(d, &proj); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if proj.Kind == "AppProject" {
				objs = append(objs, &proj)
			}
		}
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()

	ctx := context.Background()
	repos := workTreeRepos{root: *repo}
	gens := generators.GetGenerators(ctx, c, nil, appset.Namespace, repos, nil, generators.SCMConfig{}, nil)
	apps, reason, err := template.GenerateApplications(log.NewEntry(log.StandardLogger()), appset, gens, &utils.Render{}, c)
	if err != nil {
		return fmt.Errorf("%s: %w", reason, err)
	}

	// The controller's validateGeneratedApplications: a unique name and an existing AppProject.
	names := map[string]bool{}
	for _, app := range apps {
		if app.Name == "" {
			return errors.New("an application has no name")
		}
		if names[app.Name] {
			return fmt.Errorf("duplicate application name %s", app.Name)
		}
		names[app.Name] = true
		var proj v1alpha1.AppProject
		if err := c.Get(ctx, types.NamespacedName{Name: app.Spec.Project, Namespace: appset.Namespace}, &proj); err != nil {
			return fmt.Errorf("application %s references project %s which does not exist", app.Name, app.Spec.Project)
		}
	}

	sort.Slice(apps, func(i, j int) bool { return apps[i].Name < apps[j].Name })
	for _, app := range apps {
		app.APIVersion, app.Kind = "argoproj.io/v1alpha1", "Application"
		// What the controller creates: no status (the application controller writes it later).
		var obj map[string]any
		raw, err := json.Marshal(app)
		if err == nil {
			err = json.Unmarshal(raw, &obj)
		}
		if err != nil {
			return err
		}
		delete(obj, "status")
		out, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		fmt.Printf("---\n%s", out)
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "appset-render:", err)
		os.Exit(1)
	}
}
