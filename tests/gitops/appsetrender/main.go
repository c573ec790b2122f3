// appset-render expands an ApplicationSet's list generator and go template the way the Argo CD
// ApplicationSet controller does (applicationset/utils/utils.go and controllers/template/), without
// compiling Argo CD itself: text/template + sprig.GenericFuncMap minus env/expandenv/getHostByName,
// the ApplicationSet's goTemplateOptions, every string (and map key) of the template rendered on its
// own, then templatePatch rendered as a whole and merged. Output: a YAML stream of Applications.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
	"sigs.k8s.io/yaml"
)

func funcMap() template.FuncMap {
	m := sprig.GenericFuncMap()
	delete(m, "env")
	delete(m, "expandenv")
	delete(m, "getHostByName")
	m["normalize"] = sanitizeName
	m["toYaml"] = func(v any) (string, error) {
		b, err := yaml.Marshal(v)
		return strings.TrimSuffix(string(b), "\n"), err
	}
	m["fromYaml"] = func(s string) (map[string]any, error) {
		out := map[string]any{}
		return out, yaml.Unmarshal([]byte(s), &out)
	}
	return template.FuncMap(m)
}

func sanitizeName(name string) string {
	name = regexp.MustCompile("[^-a-z0-9.]").ReplaceAllString(strings.ToLower(name), "-")
	if len(name) > 253 {
		name = name[:253]
	}
	return strings.Trim(name, "-.")
}

type renderer struct {
	opts   []string
	params map[string]any
}

func (r renderer) replace(s string) (string, error) {
	t := template.New("base").Funcs(funcMap())
	for _, o := range r.opts {
		t = t.Option(o)
	}
	parsed, err := t.Parse(s)
	if err != nil {
		return "", fmt.Errorf("failed to parse template %s: %w", s, err)
	}
	var buf bytes.Buffer
	if err := parsed.Execute(&buf, r.params); err != nil {
		return "", fmt.Errorf("failed to execute go template %s: %w", s, err)
	}
	return buf.String(), nil
}

func (r renderer) deep(v any) (any, error) {
	switch t := v.(type) {
	case string:
		return r.replace(t)
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			x, err := r.deep(e)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	case map[string]any:
		out := map[string]any{}
		for k, e := range t {
			x, err := r.deep(e)
			if err != nil {
				return nil, err
			}
			nk, err := r.replace(k)
			if err != nil {
				return nil, err
			}
			out[nk] = x
		}
		return out, nil
	default:
		return v, nil
	}
}

// merge applies a patch made only of maps and scalars; for such patches the strategic merge patch
// Argo CD uses and a recursive map merge agree. Lists in a patch are refused rather than guessed.
func merge(dst, patch map[string]any) error {
	for k, pv := range patch {
		switch p := pv.(type) {
		case map[string]any:
			d, ok := dst[k].(map[string]any)
			if !ok {
				d = map[string]any{}
			}
			if err := merge(d, p); err != nil {
				return err
			}
			dst[k] = d
		case []any:
			return fmt.Errorf("templatePatch key %q is a list: not supported by this renderer", k)
		case nil:
			delete(dst, k)
		default:
			dst[k] = p
		}
	}
	return nil
}

func run(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var appset struct {
		Kind string `json:"kind"`
		Spec struct {
			GoTemplate        bool             `json:"goTemplate"`
			GoTemplateOptions []string         `json:"goTemplateOptions"`
			Generators        []map[string]any `json:"generators"`
			Template          map[string]any   `json:"template"`
			TemplatePatch     *string          `json:"templatePatch"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &appset); err != nil {
		return err
	}
	if appset.Kind != "ApplicationSet" || !appset.Spec.GoTemplate {
		return errors.New("expected an ApplicationSet with goTemplate: true")
	}
	var docs []string
	for _, gen := range appset.Spec.Generators {
		list, ok := gen["list"].(map[string]any)
		if !ok || len(gen) != 1 {
			return errors.New("only a list generator is supported")
		}
		elements, _ := list["elements"].([]any)
		for _, el := range elements {
			params, ok := el.(map[string]any)
			if !ok {
				return errors.New("list elements must be maps")
			}
			r := renderer{opts: appset.Spec.GoTemplateOptions, params: params}
			out, err := r.deep(appset.Spec.Template)
			if err != nil {
				return err
			}
			app := out.(map[string]any)
			if appset.Spec.TemplatePatch != nil {
				patchText, err := r.replace(*appset.Spec.TemplatePatch)
				if err != nil {
					return fmt.Errorf("error replacing values in templatePatch: %w", err)
				}
				patch := map[string]any{}
				if err := yaml.Unmarshal([]byte(patchText), &patch); err != nil {
					return fmt.Errorf("invalid templatePatch: %w", err)
				}
				project := app["spec"].(map[string]any)["project"]
				if err := merge(app, patch); err != nil {
					return err
				}
				// As Argo CD does: a patch never changes the project.
				app["spec"].(map[string]any)["project"] = project
			}
			obj := map[string]any{"apiVersion": "argoproj.io/v1alpha1", "kind": "Application"}
			for k, v := range app {
				obj[k] = v
			}
			b, err := yaml.Marshal(obj)
			if err != nil {
				return err
			}
			docs = append(docs, string(b))
		}
	}
	fmt.Print("---\n" + strings.Join(docs, "---\n"))
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: appset-render APPLICATIONSET.yaml")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "appset-render:", err)
		os.Exit(1)
	}
}
