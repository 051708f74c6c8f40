#!/usr/bin/env python3
"""Checks the Helm chart offline (Helm's own engine via helm-python-sdk, Kubernetes' schemas via kubernetes-validate):

- `helm lint --strict` passes for every environment's values;
- the chart renders for values-pre-staging.yaml, values-staging.yaml and values-production.yaml (each with a
  release file's image digest), and every manifest validates against the Kubernetes 1.33 schemas;
- every container runs the image by digest; a tag, a missing or a malformed digest fails the render, and the
  release files of deploy/releases hold nothing but a well-formed digest;
- each environment's values name the namespace and domain of its deploy/env/<environment>/environment.toml;
- every va pod runs the resolver sidecar its configuration's `dns_resolver` names, whose unbound configuration
  unbound-checkconf accepts; every probed container has a startup probe;
- an environment's values file sets only addresses and replica counts (`scale`, at least 2 for a replicated service,
  never the crl-updater's), and the rendered staging and production manifests differ only in allowed fields
  (namespace, the external host, the overlay's configuration — which `quarry env check` checks —, the configuration
  checksum, and replica counts of 2 or more); a deliberately drifting render (a service down to one replica) must
  fail that comparison;
- every replicated service runs at least two replicas with a PodDisruptionBudget, rolls out one new pod before an
  old one goes, and keeps serving a moment after it is told to stop (preStop);
- the NetworkPolicies mirror the gRPC allowlists of deploy/env/base, and each service's egress matches the peers its
  merged configuration addresses;
- the operations objects (prober CronJob and helm test, PodMonitor, PrometheusRule, dashboard, values schema) hold
  together: scripts/helm_operations_check.py.

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

from chart_common import DIGEST, TEST_RELEASE, manifests, merge
from helm_operations_check import check_operations, kubernetes_validatable, service_config

KUBE_VERSION = "1.33.0"
ENVIRONMENTS = ("pre-staging", "staging", "production")
# Each pair is rendered and compared: the tier before and the tier after.
COMPARED = (("staging", "production"), ("pre-staging", "staging"))
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
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests(chart, values, namespace)}


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


def identity(chart_dir, environment):
    """The names an environment's addresses are made of (deploy/env/<environment>/environment.toml)."""
    return tomllib.loads((chart_dir / "env" / environment / "environment.toml").read_text())


def generic(value, names):
    """`value` with the environment's own names put back as placeholders: its namespace, its domain, and its name
    where it stands alone or quoted (`--environment staging`, `environment="staging"`), as `quarry env check`
    compares addresses."""
    if not isinstance(value, str):
        return value
    value = value.replace(names["namespace"], "{namespace}").replace(names["domain"], "{domain}")
    if value == names["name"]:
        return "{environment}"
    return value.replace(f'"{names["name"]}"', '"{environment}"')


def compare(a, b, names_a, names_b):
    """Every difference between two renders outside the allowed fields, once each environment's own names are
    put back as placeholders."""
    findings = []
    for key in sorted(set(a) ^ set(b)):
        findings.append(f"{key[0]}/{key[1]} exists in one environment only")
    for key in sorted(set(a) & set(b)):
        fa, fb = flatten(a[key]), flatten(b[key])
        for path in sorted(set(fa) | set(fb)):
            va, vb = fa.get(path), fb.get(path)
            if generic(va, names_a) == generic(vb, names_b) or allowed_difference(*key, path):
                continue
            # Capacity may differ, as long as both run the replicated topology.
            scaled = key[0] == "Deployment" and path == "spec.replicas"
            if scaled and min(va or 0, vb or 0) >= 2:
                continue
            findings.append(f"{key[0]}/{key[1]}: {path}: {va!r} ≠ {vb!r}")
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
        for probed in containers(obj):
            if "livenessProbe" in probed and "startupProbe" not in probed:
                findings.append(f"{environment}: {name}/{probed['name']} has a liveness probe but no startup probe: "
                                "a slow start would be restarted in a loop")
    return findings


def pod_specs(obj):
    """The pod spec of a workload (Deployment, Job, CronJob) or Pod, if it has one."""
    spec = obj.get("spec") or {}
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec")


def containers(obj):
    spec = pod_specs(obj) or {}
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def check_images(objects, environment):
    """Every container runs the release by digest."""
    findings = []
    for (kind, name), obj in objects.items():
        for container in containers(obj):
            repository, _, digest = container["image"].partition("@")
            if not DIGEST.match(digest):
                findings.append(f"{environment}: {kind}/{name}: container {container['name']} runs "
                                f"{container['image']!r}, not an image by digest")
    return findings


def check_image_refusals(chart, values):
    """A tag set at deploy time, a missing digest or a malformed one must fail the render."""
    findings = []
    cases = {
        "a tag set at deploy time": {"image": {"tag": "0.1.0"}},
        "a tag beside the digest": {"image": {"tag": "0.1.0", **TEST_RELEASE["image"]}},
        "no digest": {"image": {"digest": ""}},
        "a tag as the digest": {"image": {"digest": "latest"}},
        "a short digest": {"image": {"digest": "sha256:5eed"}},
    }
    for what, image in cases.items():
        drifted = merge(yaml.safe_load(yaml.safe_dump(values)), image)
        try:
            render(chart, drifted, drifted["namespace"])
        except Exception:  # noqa: BLE001 - the engine's error type is not part of its API; any failure is a refusal
            continue
        findings.append(f"the chart rendered with {what} ({image}): only a digest may name the image")
    return findings


def check_release_files(releases_dir):
    """deploy/releases/<tier>.yaml: written by scripts/promote.py; nothing but a well-formed digest."""
    findings = []
    for path in sorted(releases_dir.glob("*.yaml")) if releases_dir.is_dir() else []:
        release = yaml.safe_load(path.read_text()) or {}
        digest = (release.get("image") or {}).get("digest")
        if path.stem not in ("dev",) + ENVIRONMENTS:
            findings.append(f"{path}: no tier is called {path.stem}")
        if release != {"image": {"digest": digest}} or not isinstance(digest, str) or not DIGEST.match(digest):
            findings.append(f"{path}: a release file holds image.digest (sha256:<64 hex>) and nothing else")
    return findings


def check_identity(chart_dir, values, environment):
    """The values file and the environment's configuration name the same environment."""
    names = identity(chart_dir, environment)
    findings = []
    if names["name"] != environment or values.get("environment") != environment:
        findings.append(f"values-{environment}.yaml environment {values.get('environment')!r}, environment.toml "
                        f"name {names['name']!r}: both must be {environment!r}")
    if values.get("namespace") != names["namespace"]:
        findings.append(f"values-{environment}.yaml namespace {values.get('namespace')!r} ≠ the configuration's "
                        f"{names['namespace']!r}")
    host = (values.get("wfe") or {}).get("externalHost", "")
    if not (host == names["domain"] or host.endswith("." + names["domain"])):
        findings.append(f"values-{environment}.yaml wfe.externalHost {host!r} is not in {names['domain']}")
    return findings


def check_resolver(chart_dir, values, objects, environment):
    """Every va pod resolves through its own validating resolver: the sidecar its configuration names, started
    before it, whose configuration unbound itself accepts."""
    findings = []
    port = values["resolver"]["port"]
    for service, spec in values["services"].items():
        if spec["command"] != "va":
            continue
        pod = pod_specs(objects[("Deployment", f"quarry-{service}")])
        sidecars = [c for c in pod.get("initContainers") or [] if c["name"] == "resolver"]
        if not sidecars or sidecars[0].get("restartPolicy") != "Always":
            findings.append(f"{environment}: quarry-{service} runs no resolver sidecar (an init container that "
                            "keeps running)")
        elif sidecars[0]["image"] != pod["containers"][0]["image"]:
            findings.append(f"{environment}: quarry-{service}'s resolver runs another image than the va")
        merged = service_config(chart_dir, environment, service)
        if merged.get("dns_resolver") != f"127.0.0.1:{port}":
            findings.append(f"{environment}: {service} resolves through {merged.get('dns_resolver')!r}, but its pod's "
                            f"resolver listens on 127.0.0.1:{port}")
    config = objects[("ConfigMap", "quarry-resolver")]["data"]["unbound.conf"]
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as out:
        out.write(config + "\n")
        out.flush()
        checked = subprocess.run(["unbound-checkconf", out.name], capture_output=True, text=True)
    if checked.returncode != 0:
        findings.append(f"{environment}: unbound-checkconf refuses the resolver's configuration: "
                        f"{checked.stdout}{checked.stderr}")
    return findings


def check_migration_job(objects, environment):
    """The schema moves before the release that needs it: the migration Job is a pre-install and pre-upgrade hook
    (docs/migrations.md: every migration only expands, so the running release keeps working on the new schema)."""
    job = objects.get(("Job", "quarry-migrate"))
    if job is None:
        return [f"{environment}: no migration Job"]
    hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
    if not {"pre-install", "pre-upgrade"} <= hooks:
        return [f"{environment}: Job/quarry-migrate runs as {sorted(hooks)}, not before every install and upgrade"]
    return []


def values_keys(values):
    return {path for path in flatten(values) if path}


def peers_in(config):
    """The services a merged configuration dials (https://quarry-<service>.<namespace>…); its `[lane]` names the
    service's own replicas, which it only looks up."""
    text = repr({key: value for key, value in config.items() if key != "lane"})
    return set(re.findall(r"https://quarry-([a-z0-9-]+)\.", text))


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
    renders, merged = {}, {}
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
        findings += check_identity(chart_dir, values, environment)
        values = merge(values, yaml.safe_load(yaml.safe_dump(TEST_RELEASE)))
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
            # The Prometheus operator's kinds are not Kubernetes' own: check_operations validates them.
            yaml.safe_dump_all([obj for obj in objects.values() if kubernetes_validatable(obj)], out)
        validation = subprocess.run(
            ["kubernetes-validate", "--strict", "-k", KUBE_VERSION, "--quiet", out.name],
            capture_output=True,
            text=True,
        )
        if validation.returncode != 0:
            findings.append(f"{environment}: manifests do not validate:\n{validation.stdout}{validation.stderr}")
        merged_values = merge(yaml.safe_load(yaml.safe_dump(defaults)), values)
        merged[environment] = merged_values
        findings += [f"{environment}: {f}" for f in check_network_policies(chart_dir, merged_values, objects, environment)]
        findings += check_replication(objects, environment)
        findings += check_images(objects, environment)
        findings += check_migration_job(objects, environment)
        findings += [f"{environment}: {f}" for f in check_operations(chart_dir, objects, environment)]
        findings += check_resolver(chart_dir, merged_values, objects, environment)
        kinds = sorted({kind for kind, _ in objects})
        print(f"{environment}: {len(objects)} objects ({', '.join(kinds)}) render and validate")

    for before, after in COMPARED:
        names = (identity(chart_dir, before), identity(chart_dir, after))
        findings += [f"{before} vs {after}: {d}" for d in compare(renders[before], renders[after], *names)]

    # The comparison must catch drift: production with a lone ra is not staging's topology.
    production = merge(yaml.safe_load((chart_dir / "values-production.yaml").read_text()), TEST_RELEASE)
    findings += check_image_refusals(chart, production)
    findings += check_release_files(chart_dir.parent.parent / "releases")
    drifted = merge(yaml.safe_load(yaml.safe_dump(production)), {"services": {"ra": {"replicas": 1}}})
    drifted_objects = render(chart, drifted, drifted["namespace"])
    names = (identity(chart_dir, "staging"), identity(chart_dir, "production"))
    drift = compare(renders["staging"], drifted_objects, *names) + check_replication(drifted_objects, "drifted")
    if not any("Deployment/quarry-ra: spec.replicas" in d for d in drift):
        findings.append(f"a drifting production (a lone ra) was not caught: {drift}")
    # So must the resolver check: a va asking a resolver its pod does not run.
    moved = merge(yaml.safe_load(yaml.safe_dump(merged["staging"])), {"resolver": {"port": 53}})
    if not any("resolves through" in f for f in check_resolver(chart_dir, moved, renders["staging"], "staging")):
        findings.append("a va resolving through a resolver its pod does not run was not caught")

    if findings:
        print("helm-check: FAILED", file=sys.stderr)
        for finding in findings:
            print(f"  {finding}", file=sys.stderr)
        return 1
    print(f"helm-check: {', '.join(ENVIRONMENTS)} render the same topology, by image digest; they differ only in "
          "allowed fields")
    return 0


if __name__ == "__main__":
    sys.exit(main())
