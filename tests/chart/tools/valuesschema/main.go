// valuesschema generates a chart's values.schema.json from values.yaml, so the
// defaults and their helm-docs `# --` comments stay the single source of truth.
//
// Types come from the default values; every object becomes closed
// (additionalProperties: false) so a mistyped key fails `helm install` with its name;
// every key with a non-null default is required (setting it to null removes it).
// A `# @schema {json}` comment line above a key's `# --` line merges extra
// JSON-schema keywords (enum, minimum, pattern, type for null defaults, or
// "additionalProperties" for free-form maps). A key with a null default and no
// @schema type, or a malformed annotation, is an error.
//
// Usage: valuesschema values.yaml > values.schema.json
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

type schema = map[string]any

func parseComment(comment, path string) (desc string, extra schema, err error) {
	var descLines []string
	inDesc := false
	for _, raw := range strings.Split(comment, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case strings.HasPrefix(line, "# @schema"):
			extra = schema{}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "# @schema")), &extra); err != nil {
				return "", nil, fmt.Errorf("%s: bad @schema annotation: %w", path, err)
			}
			inDesc = false
		case strings.HasPrefix(line, "# --"):
			descLines = []string{strings.TrimSpace(strings.TrimPrefix(line, "# --"))}
			inDesc = true
		case inDesc && strings.HasPrefix(line, "# @"):
			inDesc = false // helm-docs directives (@default, @section...)
		case inDesc && strings.HasPrefix(line, "#"):
			descLines = append(descLines, strings.TrimSpace(strings.TrimPrefix(line, "#")))
		}
	}
	return strings.Join(descLines, " "), extra, nil
}

func infer(n *yaml.Node, path string) (schema, error) {
	switch n.Kind {
	case yaml.AliasNode:
		return infer(n.Alias, path)
	case yaml.MappingNode:
		s := schema{"type": "object"}
		if len(n.Content) == 0 {
			return s, nil // free-form (Kubernetes pass-through); the API schema checks it later
		}
		props := schema{}
		var required []string
		for i := 0; i < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := path + "." + k.Value
			desc, extra, err := parseComment(k.HeadComment, child)
			if err != nil {
				return nil, err
			}
			var cs schema
			if v.Tag == "!!null" {
				if extra == nil || (extra["type"] == nil && extra["$ref"] == nil && extra["anyOf"] == nil && extra["oneOf"] == nil) {
					return nil, fmt.Errorf("%s: null default needs a `# @schema {\"type\": ...}` annotation", child)
				}
				cs = schema{}
			} else {
				if cs, err = infer(v, child); err != nil {
					return nil, err
				}
				required = append(required, k.Value)
			}
			if ap, ok := extra["additionalProperties"]; ok && ap != false {
				// A free-form map: its default is an example, not a closed structure.
				delete(cs, "properties")
				delete(cs, "required")
			}
			for key, val := range extra {
				if key == "properties" {
					p, _ := cs["properties"].(schema)
					if p == nil {
						p = schema{}
					}
					for pk, pv := range val.(map[string]any) {
						p[pk] = pv
					}
					cs[key] = p
					continue
				}
				cs[key] = val
			}
			if desc != "" {
				cs["description"] = desc
			}
			props[k.Value] = cs
		}
		s["properties"] = props
		s["additionalProperties"] = false
		if len(required) > 0 {
			sort.Strings(required)
			s["required"] = required
		}
		return s, nil
	case yaml.SequenceNode:
		s := schema{"type": "array"}
		if len(n.Content) > 0 {
			items, err := infer(n.Content[0], path+"[]")
			if err != nil {
				return nil, err
			}
			delete(items, "required")
			s["items"] = items
		}
		return s, nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return schema{"type": "string"}, nil
		case "!!int":
			return schema{"type": "integer"}, nil
		case "!!float":
			return schema{"type": "number"}, nil
		case "!!bool":
			return schema{"type": "boolean"}, nil
		}
	}
	return nil, fmt.Errorf("%s: cannot infer a type for %q (tag %s)", path, n.Value, n.Tag)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: valuesschema values.yaml")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) != 1 {
		fmt.Fprintln(os.Stderr, "values.yaml must hold one YAML document:", err)
		os.Exit(1)
	}
	root, err := infer(doc.Content[0], "")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	root["$schema"] = "http://json-schema.org/draft-07/schema#"
	root["title"] = "Values of the ml-service chart (generated from values.yaml by `make chart-docs`; do not edit)"
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(root); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(buf.Bytes())
}
