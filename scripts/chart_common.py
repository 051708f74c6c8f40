"""What the chart's scripts share (helm-check.py, helm_operations_check.py, chart-run.py, promote.py): Helm's way of
merging values, the digest form a release names its image by, the test release every offline render uses, and the
rendered manifests as documents."""

import re

# The only form an image is named by in a release file and in the chart: a digest, never a tag.
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# The release file every offline render uses: a well-formed digest (no real image is involved).
TEST_RELEASE = {"image": {"digest": "sha256:" + "5eed" * 16}}


def merge(base, overlay):
    """Helm's values merge, into `base` (returned): maps key by key, anything else replaced."""
    for key, value in overlay.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def manifests(chart, values, namespace):
    """Every manifest the chart renders for `values` (hooks and tests included, NOTES.txt left out), in the order of
    the templates' paths."""
    import yaml  # only the chart tools' environment has it; promote.py, which needs DIGEST alone, runs without

    rendered = chart.render(values=values, name="quarry", namespace=namespace, is_install=True)
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
