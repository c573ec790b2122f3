// psacheck evaluates every pod template in a rendered manifest stream against the
// Pod Security Standards with the upstream evaluator that the PodSecurity admission
// plugin itself runs (k8s.io/pod-security-admission/policy).
//
// Usage: helm template ... | psacheck -level restricted -version v1.29
// Prints one JSON line per pod template; exits 1 if any is forbidden, 2 on bad input.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

type result struct {
	Kind      string              `json:"kind"`
	Name      string              `json:"name"`
	Allowed   bool                `json:"allowed"`
	Forbidden []map[string]string `json:"forbidden,omitempty"`
}

// podTemplate picks the pod spec out of any workload kind that carries one.
func podTemplate(doc []byte, kind string) (*metav1.ObjectMeta, *corev1.PodSpec, error) {
	switch kind {
	case "Pod":
		var p corev1.Pod
		err := yaml.UnmarshalStrict(doc, &p)
		return &p.ObjectMeta, &p.Spec, err
	// An Argo Rollouts Rollout carries a Deployment's pod template.
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Rollout":
		var w struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		err := yaml.Unmarshal(doc, &w)
		return &w.Spec.Template.ObjectMeta, &w.Spec.Template.Spec, err
	case "CronJob":
		var w struct {
			Spec struct {
				JobTemplate struct {
					Spec struct {
						Template corev1.PodTemplateSpec `json:"template"`
					} `json:"spec"`
				} `json:"jobTemplate"`
			} `json:"spec"`
		}
		err := yaml.Unmarshal(doc, &w)
		return &w.Spec.JobTemplate.Spec.Template.ObjectMeta, &w.Spec.JobTemplate.Spec.Template.Spec, err
	}
	return nil, nil, nil
}

func main() {
	level := flag.String("level", "restricted", "baseline or restricted")
	version := flag.String("version", "latest", "policy version, e.g. v1.29 or latest")
	flag.Parse()

	lvl, err := api.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ver, err := api.ParseVersion(*version)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	out := json.NewEncoder(os.Stdout)
	failed := false
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		var head struct {
			Kind     string            `json:"kind"`
			Metadata metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		meta, spec, err := podTemplate(doc, head.Kind)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s/%s: %v\n", head.Kind, head.Metadata.Name, err)
			os.Exit(2)
		}
		if spec == nil {
			continue
		}
		res := result{Kind: head.Kind, Name: head.Metadata.Name, Allowed: true}
		agg := policy.AggregateCheckResults(evaluator.EvaluatePod(api.LevelVersion{Level: lvl, Version: ver}, meta, spec))
		res.Allowed = agg.Allowed
		for i, r := range agg.ForbiddenReasons {
			res.Forbidden = append(res.Forbidden, map[string]string{"reason": r, "detail": agg.ForbiddenDetails[i]})
		}
		failed = failed || !res.Allowed
		if err := out.Encode(res); err != nil {
			os.Exit(2)
		}
	}
	if failed {
		os.Exit(1)
	}
}
