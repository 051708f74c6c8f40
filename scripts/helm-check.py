#!/usr/bin/env python3
"""Checks the Helm chart offline (Helm's own engine via helm-python-sdk, Kubernetes' schemas via kubernetes-validate):

- `helm lint --strict` passes for every environment's values;
- the chart renders for values-staging.yaml and values-production.yaml, and every manifest validates against the
  Kubernetes 1.33 schemas;
- an environment's values file sets only addresses and replica counts (`scale`, at least 2 for a replicated service,
  never the crl-updater's), and the rendered staging and production manifests differ only in allowed fields
  (namespace, the external host, the overlay's configuration — which `quarry env check` checks —, the configuration
  checksum, and replica counts of 2 or more); a deliberately drifting render (a service down to one replica) must
  fail that comparison;
- every replicated service runs at least two replicas with a PodDisruptionBudget, rolls out one new pod before an
  old one goes, and keeps serving a moment after it is told to stop (preStop);
- the NetworkPolicies mirror the gRPC allowlists of deploy/env/base, and each service's egress matches the peers its
  merged configuration addresses.

Usage: helm-check.py CHART_DIR   (exit 1 with every finding listed)
"""

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python
import yaml

KUBE_VERSION = "1.33.0"
ENVIRONMENTS = ("staging", "production")
# The only keys an environment's values file may set (dotted paths), besides `scale.<service>`.
ALLOWED_VALUES = {"environment", "namespace", "wfe.externalHost", "wfe.loadBalancerSourceRanges"}
# The one service that runs alone (its leases let several share the work, but none is needed for availability).
SINGLE = {"crl-updater"}


def flatten(value, prefix=""):
    """Every leaf of a YAML document as {dotted.path: value}; list items are indexed."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{index}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): value}


def render(chart, values, namespace):
    """The chart's manifests for `values`, keyed by (kind, name)."""
    rendered = chart.render(values=values, name="quarry", namespace=namespace, is_install=True)
    objects = {}
    for text in rendered.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def allowed_difference(kind, name, path):
    """Whether staging and production may differ at `path` of object (kind, name)."""
    if path == "metadata.namespace":
        return True
    # The overlay's files: `quarry env check staging production` proves they differ only where they may.
    if kind == "ConfigMap" and name == "quarry-config-env" and path.startswith("data."):
        return True
    if kind == "ConfigMap" and name == "quarry-migrate-config" and path == "data.env.toml":
        return True
    if kind == "Deployment" and path == "spec.template.metadata.annotations.checksum/config":
        return True
    if kind == "Service" and name == "quarry-wfe":
        return path.startswith("spec.loadBalancerSourceRanges") or path.startswith("metadata.annotations.external-dns")
    return False


def compare(a, b):
    """Every difference between two renders outside the allowed fields."""
    findings = []
    for key in sorted(set(a) ^ set(b)):
        findings.append(f"{key[0]}/{key[1]} exists in one environment only")
    for key in sorted(set(a) & set(b)):
        fa, fb = flatten(a[key]), flatten(b[key])
        for path in sorted(set(fa) | set(fb)):
            if fa.get(path) == fb.get(path) or allowed_difference(*key, path):
                continue
            # Capacity may differ, as long as both run the replicated topology.
            scaled = key[0] == "Deployment" and path == "spec.replicas"
            if scaled and min(fa.get(path) or 0, fb.get(path) or 0) >= 2:
                continue
            findings.append(f"{key[0]}/{key[1]}: {path}: {fa.get(path)!r} ≠ {fb.get(path)!r}")
    return findings


def check_replication(objects, environment):
    """Every replicated service: two replicas or more, a disruption budget, surge-first rollouts and a preStop pause."""
    findings = []
    for (kind, name), obj in objects.items():
        if kind != "Deployment":
            continue
        service = name.removeprefix("quarry-")
        spec = obj["spec"]
        if service in SINGLE:
            if spec["replicas"] != 1:
                findings.append(f"{environment}: {name} runs {spec['replicas']} replicas, not 1")
            continue
        if spec["replicas"] < 2:
            findings.append(f"{environment}: {name} runs {spec['replicas']} replica: a replicated service runs 2 or more")
        if ("PodDisruptionBudget", name) not in objects:
            findings.append(f"{environment}: {name} has no PodDisruptionBudget")
        rolling = spec.get("strategy", {}).get("rollingUpdate", {})
        if rolling.get("maxUnavailable") != 0:
            findings.append(f"{environment}: {name} may take a pod down before its replacement is ready")
        container = spec["template"]["spec"]["containers"][0]
        if not container.get("lifecycle", {}).get("preStop") or "readinessProbe" not in container:
            findings.append(f"{environment}: {name} stops without a readiness probe and a preStop pause")
    return findings + check_probes(objects, environment)


def check_probes(objects, environment):
    """Liveness is the process answering, readiness its dependencies: a database or peer outage must take pods out
    of the endpoints, never restart them all."""
    findings = []
    for (kind, name), obj in objects.items():
        if kind != "Deployment":
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        live = container.get("livenessProbe", {}).get("exec", {}).get("command")
        ready = container.get("readinessProbe", {}).get("exec", {}).get("command")
        if live is not None and "--live" not in live:
            findings.append(f"{environment}: {name}'s liveness probe asks for readiness (no --live)")
        if ready is not None and "--live" in ready:
            findings.append(f"{environment}: {name}'s readiness probe asks only whether it is alive")
    return findings


def values_keys(values):
    return {path for path in flatten(values) if path}


def peers_in(config):
    """The services a merged configuration dials (https://quarry-<service>.<namespace>…)."""
    text = repr(config)
    return set(re.findall(r"https://quarry-([a-z0-9-]+)\.", text))


def merge(base, overlay):
    for key, value in overlay.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def check_network_policies(chart_dir, values, objects, environment):
    findings = []
    env_dir = chart_dir / "env"
    for service, spec in values["services"].items():
        base = tomllib.loads((env_dir / "base" / f"{service}.toml").read_text())
        allowlisted = {
            name.removesuffix(".quarry")
            for access in base.get("grpc", {}).get("services", {}).values()
            for name in access["client_names"]
        }
        if set(spec.get("clients", [])) != allowlisted:
            findings.append(f"values.services.{service}.clients {sorted(spec.get('clients', []))} ≠ "
                            f"the allowlists of env/base/{service}.toml {sorted(allowlisted)}")
        policy = objects[("NetworkPolicy", f"quarry-{service}")]
        admitted = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policy["spec"].get("ingress") or []
            for peer in rule.get("from") or []
            if "podSelector" in peer
        }
        if admitted != allowlisted:
            findings.append(f"NetworkPolicy quarry-{service} admits {sorted(admitted)}, allowlists say {sorted(allowlisted)}")
        merged = merge(base, tomllib.loads((env_dir / environment / f"{service}.toml").read_text()))
        dialled = peers_in(merged)
        if set(spec.get("peers", [])) != dialled:
            findings.append(f"values.services.{service}.peers {sorted(spec.get('peers', []))} ≠ "
                            f"what its {environment} configuration dials {sorted(dialled)}")
        egress = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policy["spec"].get("egress") or []
            for peer in rule.get("to") or []
            if "podSelector" in peer
        }
        if egress != dialled:
            findings.append(f"NetworkPolicy quarry-{service} lets it reach {sorted(egress)}, it dials {sorted(dialled)}")
        open_egress = any(
            peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
            for rule in policy["spec"].get("egress") or []
            for peer in rule.get("to") or []
        )
        if open_egress != bool(spec.get("internet")):
            findings.append(f"NetworkPolicy quarry-{service}: internet egress {open_egress}, expected {bool(spec.get('internet'))}")
    exposed = sorted(
        name for (kind, name), obj in objects.items() if kind == "Service" and obj["spec"].get("type") != "ClusterIP"
    )
    if exposed != ["quarry-wfe"]:
        findings.append(f"services exposed beyond the cluster: {exposed} (only quarry-wfe may be)")
    return findings


def main():
    chart_dir = Path(sys.argv[1]).resolve()
    chart = helm_python.Chart.load(str(chart_dir))
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    findings = []
    renders = {}
    for environment in ENVIRONMENTS:
        values = yaml.safe_load((chart_dir / f"values-{environment}.yaml").read_text())
        extra = {key for key in values_keys(values) - ALLOWED_VALUES if not key.startswith("scale.")}
        if extra:
            findings.append(f"values-{environment}.yaml sets {sorted(extra)}: only {sorted(ALLOWED_VALUES)} and "
                            "scale.<service> may differ")
        for service, replicas in (values.get("scale") or {}).items():
            if service not in defaults["services"] or service in SINGLE or not isinstance(replicas, int) or replicas < 2:
                findings.append(f"values-{environment}.yaml: scale.{service}: {replicas!r}: only a replicated "
                                "service may be scaled, to 2 replicas or more")
        lint = helm_python.lint(str(chart_dir), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        findings += [f"helm lint ({environment}): {error}" for error in lint.get("errors") or []]
        findings += [
            f"helm lint ({environment}): {message['path']}: {message['error']}"
            for message in lint.get("messages") or []
            if message.get("severity", 0) > 1
        ]
        objects = render(chart, values, values["namespace"])
        renders[environment] = objects
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
            yaml.safe_dump_all(objects.values(), out)
        validation = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", KUBE_VERSION, "--quiet", out.name],
            capture_output=True,
            text=True,
        )
        if validation.returncode != 0:
            findings.append(f"{environment}: manifests do not validate:\n{validation.stdout}{validation.stderr}")
        merged_values = merge(yaml.safe_load(yaml.safe_dump(defaults)), values)
        findings += [f"{environment}: {f}" for f in check_network_policies(chart_dir, merged_values, objects, environment)]
        findings += check_replication(objects, environment)
        kinds = sorted({kind for kind, _ in objects})
        print(f"{environment}: {len(objects)} objects ({', '.join(kinds)}) render and validate")

    differences = compare(renders["staging"], renders["production"])
    findings += [f"staging vs production: {d}" for d in differences]

    # The comparison must catch drift: production with a lone ra is not staging's topology.
    production = yaml.safe_load((chart_dir / "values-production.yaml").read_text())
    drifted = merge(production, {"services": {"ra": {"replicas": 1}}})
    drifted_objects = render(chart, drifted, drifted["namespace"])
    drift = compare(renders["staging"], drifted_objects) + check_replication(drifted_objects, "drifted")
    if not any("Deployment/quarry-ra: spec.replicas" in d for d in drift):
        findings.append(f"a drifting production (a lone ra) was not caught: {drift}")

    if findings:
        print("helm-check: FAILED", file=sys.stderr)
        for finding in findings:
            print(f"  {finding}", file=sys.stderr)
        return 1
    print("helm-check: staging and production render the same topology; they differ only in allowed fields")
    return 0


if __name__ == "__main__":
    sys.exit(main())
