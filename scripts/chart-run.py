#!/usr/bin/env python3
"""The staging chart proven wired, not just valid: renders deploy/helm/quarry for staging with Helm's own engine and
runs its pods as processes on loopback — every container with its exact command, arguments and environment, its
ConfigMaps and Secrets materialised as files at the paths its pod spec mounts them, Service names resolved to the
ready pods' addresses — then obtains a certificate through it with certbot (dns-01), verifies the chain up to the
ceremony's root, the SCTs of the fixture logs, and the CRL the certificate names, and that every replica of the wfe,
ra, ca and va found its rank among its Deployment's pods through the cluster DNS (its lane: metrics
`quarry_lane_rank`/`quarry_lane_replicas`). No Kubernetes control plane can run
here: this script plays the kubelet (volumes, probes, restarts), the cluster's DNS, the load balancer and the
internet, and nothing else.

Usage (as root, with the chart tools' venv, as scripts/test.sh runs it):
  $VENV/bin/python scripts/chart-run.py --postgres-url postgres://postgres@127.0.0.1:5433/postgres \\
      --redis-url redis://127.0.0.1:6380/ [--quarry target/debug/quarry] [--net 127.0.9] [--keep]
  VENV="${XDG_CACHE_HOME:-$HOME/.cache}/quarry/helm-tools-0.2.2-1.37.0" (helm-python-sdk, PyYAML)
Exit 0 when the certificate was issued and verified; 1 otherwise, with the tail of every process's log.

What runs, as a cluster would run it:
- the migration Job first (Helm's pre-install hook), which must succeed; then every Deployment's pods, as many as its
  replica count, all at once (a cluster has no start order); within a pod the native sidecars (init containers with
  `restartPolicy: Always`: the va pods' unbound) start first, each after the one before passed its startup probe;
- each container in its own mount and UTS namespace: every volumeMount of its pod spec (ConfigMaps' keys as files,
  Secrets in cert-manager's layout, projected volumes, emptyDirs; `items`, modes and `fsGroup` as the spec says, in
  the kubelet's `..data` symlink layout), its root filesystem read-only when `readOnlyRootFilesystem` says so, then
  its process as the spec's user and groups, without capabilities, with no-new-privileges and exactly the spec's
  environment (`status.podIP` from the downward API is the pod's address), from the image's ENTRYPOINT
  (deploy/image/Dockerfile) when the spec has no `command`;
- the kubelet's probes, exactly as specified (exec in the container's view, httpGet, tcpSocket; period, timeout,
  thresholds): startup, then readiness — a pod's address joins its headless Service's DNS name only while it is
  ready — and liveness; a container that exits or fails liveness is restarted with the kubelet's back-off;
- everything bounded: the Job, the pods' readiness (--ready-timeout, 120 s), the client (180 s); every process
  started here is killed, by process group, at the end.

The translations, unavoidable without a cluster, are the only differences from one. Each stands in for something a
cluster or the internet provides — pod addresses, cluster DNS, a load balancer, internet services — and none changes
one of Quarry's settings. The file rewrites are all in `translate_configmap_file`; the rest in `container_view`:
 (a) pod network: every pod gets its own loopback address (127.0.N.10 and up). A pod's own network namespace makes
     "0.0.0.0" and its "127.0.0.1" its own; the pods here share the host's (no bridge or veth may exist), so in the
     pod's materialised ConfigMap files both become the pod's address: the services' listen and metrics addresses,
     the vas' `dns_resolver` (their own sidecar) and unbound's `interface`.
 (b) cluster DNS: every container's /etc/resolv.conf is the kubelet's (search path, `ndots:5`) naming a small DNS
     server of this script on loopback, which answers each headless Service's name with its ready pods' addresses,
     the LoadBalancer Service's with the balancer's, and NXDOMAIN for any other cluster name (no OpenTelemetry
     collector runs: its name does not resolve, and spans are dropped). The LoadBalancer itself is `quarry balance`
     per Service port on its own loopback address; the ACME client resolves the public host to it through its own
     /etc/hosts, as the record external-dns publishes would, and the certificates' CRL host too, whose record the
     chart does not publish (its external-dns annotation names the ACME host only).
 (c) the internet: the CT logs the staging overlay names have keys nobody here holds, so in the publisher's
     materialised overlay each `[[logs]]` entry's `url` and `public_key` (PKI, which environments may differ in) are
     swapped for a fake log on loopback (`quarry-dev fake-ct-log`, keys made here). The internet's DNS is a root zone on
     loopback, DNSSEC-signed with a key made here, that delegates `org.` (insecurely, by a signed NSEC) to a
     challenge test server; every container's image files /usr/share/dns/root.hints and root.key (Debian's
     dns-root-data, which the resolver's configuration names) are the fixture root's, and unbound's
     `do-not-query-localhost` is `no`, since the fixture internet's name servers are on loopback.
 (d) validation: the staging va refuses loopback and private addresses for http-01 and tls-alpn-01 (production's
     rules, kept), so the client proves control with dns-01: its hook publishes the TXT record at the `org.` server,
     which the vas find through their own unbound sidecars, iterating from the fixture root and validating DNSSEC.
     The subscriber's zone publishes a CAA record naming the staging CA identity, so CAA is checked too.
 (e) the image: the host's filesystem is the image's; target/debug/quarry (copied first) is at the Dockerfile's
     ENTRYPOINT path, unbound is the host's /usr/sbin/unbound, and the working directory is / (the image's WORKDIR
     /data does not exist on the host).
 Secrets, which the chart never contains, are made here as an operator would: the internal CA and one certificate
 per service (`<service>.quarry`, server and client authentication; SEC1 keys, cert-manager's default encoding), the
 issuing hierarchy by `quarry ceremony`, the HTTPS certificate of the public host from a CA the client trusts, a fresh
 PostgreSQL database (dropped at the end), the given Redis, and a nonce prefix key made as docs/environments.md says.

Not covered (a cluster's own machinery): scheduling and nodes, NetworkPolicies, Services' load balancing by
kube-proxy, PodDisruptionBudgets, rolling updates and minReadySeconds, the kubelet's Secret and ConfigMap updates
(rotation), image pulling and the image's own contents, resource requests and limits (cgroups), seccomp profiles,
preStop hooks and graceful termination, the Prometheus objects, the prober CronJob and the `helm test` Pod.
"""

import argparse
import base64
import copy
import hashlib
import http.client
import ipaddress
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helm_python
import yaml

from chart_common import TEST_RELEASE, manifests, merge

REPO = Path(__file__).resolve().parent.parent
# The names certified: under a zone the fixture internet delegates to the challenge test server.
CERT_NAMES = ("chart-run.quarry-interop.org", "www.chart-run.quarry-interop.org")
SUBSCRIBER_ZONE = "quarry-interop.org"
DELEGATED_TLD = "org"
CLUSTER_DOMAIN = "cluster.local"
# Debian's default PATH, which the image (debian:bookworm-slim) runs with.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The kubelet's probe defaults (the API's), and its restart back-off: 10 s, doubling, at most 5 minutes.
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                  "failureThreshold": 3}
RESTART_BACKOFF_SECONDS = (10, 300)
# How long a stopped container gets between SIGTERM and SIGKILL here (its preStop hook is not run).
STOP_GRACE_SECONDS = 5
TICK_SECONDS = 0.2
LOG_TAIL_LINES = 25


class ChartFault(Exception):
    """Something in the rendered chart that a kubelet would refuse too (a missing object, an unsupported field)."""


# ---------------------------------------------------------------------------------------------------------------
# The chart

def render_chart(chart_dir, values_file):
    """Every manifest the chart renders for `values_file` and the test release's digest, hooks included, and the
    merged values."""
    values = merge(yaml.safe_load(values_file.read_text()), copy.deepcopy(TEST_RELEASE))
    chart = helm_python.Chart.load(str(chart_dir))
    objects = manifests(chart, values, values["namespace"])
    chart_values = merge(yaml.safe_load((chart_dir / "values.yaml").read_text()), values)
    return objects, chart_values


def image_facts(dockerfile):
    """The final stage's ENTRYPOINT and USER of the image every container runs (a stage built FROM an earlier one
    inherits them, as Docker's stages do)."""
    stages = {}
    entrypoint, user = None, None
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            words = line.split()
            entrypoint, user = stages.get(words[1], (None, None))
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else None
        elif line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line.removeprefix("ENTRYPOINT "))
        elif line.startswith("USER "):
            user = line.removeprefix("USER ").strip()
        else:
            continue
        if name:
            stages[name] = (entrypoint, user)
    if not entrypoint:
        raise ChartFault(f"{dockerfile}: no ENTRYPOINT in the final stage")
    return entrypoint, user


# ---------------------------------------------------------------------------------------------------------------
# PKI and secrets, made as an operator would

def run(command, **kwargs):
    """A setup command that must succeed; its output is returned."""
    result = subprocess.run(command, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, command))} failed ({result.returncode}): "
                           f"{result.stderr.decode(errors='replace')}{result.stdout.decode(errors='replace')}")
    return result.stdout


def ec_key(path):
    """A P-256 key in SEC1 PEM: cert-manager's default encoding (`privateKey.encoding: PKCS1`)."""
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path])
    return path


def make_ca(directory, common_name):
    directory.mkdir(parents=True, exist_ok=True)
    key = ec_key(directory / "ca.key")
    config = directory / "ca.cnf"
    config.write_text(
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n"
        f"[dn]\nO = Quarry chart run\nCN = {common_name}\n"
        "[ext]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n")
    cert = directory / "ca.crt"
    run(["openssl", "req", "-x509", "-new", "-config", config, "-key", key, "-days", "3", "-sha256", "-out", cert])
    return cert, key


def issue_leaf(directory, name, ca, dns_names, usages):
    """A leaf for `dns_names` with extended key usages `usages`, signed by `ca` (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec_key(directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={dns_names[0]}", "-out", csr])
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
        f"extendedKeyUsage = {usages}\nsubjectAltName = {','.join('DNS:' + n for n in dns_names)}\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    cert = directory / f"{name}.crt"
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
         "0x" + os.urandom(16).hex(), "-days", "3", "-sha256", "-extfile", extensions, "-out", cert])
    return cert, key


def spki_base64(key_pem):
    """A key's SubjectPublicKeyInfo, DER in base64: how the publisher names a CT log's key."""
    return base64.b64encode(run(["openssl", "pkey", "-in", key_pem, "-pubout", "-outform", "DER"])).decode()


def make_secrets(work, quarry, values, services, external_host, database_url, redis_url):
    """Every Secret the chart mounts, by name ({key: bytes}), with the ceremony's root and output directory and the
    CA of the HTTPS certificate, which the client trusts."""
    pki = work / "pki"
    secrets = {}
    internal_ca = make_ca(pki / "internal", "Quarry chart-run internal CA")
    for service in services:
        cert, key = issue_leaf(pki / "internal" / "services", service, internal_ca, [f"{service}.quarry"],
                               "serverAuth,clientAuth")
        secrets[f"quarry-internal-{service}"] = {
            "tls.crt": cert.read_bytes(), "tls.key": key.read_bytes(), "ca.crt": internal_ca[0].read_bytes()}
    # The public web PKI's part: a CA the ACME client trusts, and the ACME host's certificate from it.
    web_ca = make_ca(pki / "web", "Quarry chart-run web CA")
    https_cert, https_key = issue_leaf(pki / "web" / "leaves", "https", web_ca, [external_host], "serverAuth")
    # The issuing hierarchy, exactly as the environment's ceremony makes it.
    ceremony = pki / "ceremony"
    run([quarry, "ceremony", "--config", REPO / "deploy/ceremony/quarry.toml", "--environment",
         values["environment"], "--out", ceremony, "--install-dir", "/etc/quarry/pki"])
    issuer_certs = {p.name: p.read_bytes() for p in sorted(ceremony.glob("*.pem"))
                    if not p.name.endswith(".key.pem") and p.name != "root.pem"}
    issuer_keys = {p.name: p.read_bytes() for p in sorted(ceremony.glob("*.key.pem")) if p.name != "root.key.pem"}
    names = values["secrets"]
    secrets[names["https"]] = {"tls.crt": https_cert.read_bytes(), "tls.key": https_key.read_bytes()}
    secrets[names["issuerCerts"]] = issuer_certs
    secrets[names["issuerKeys"]] = issuer_keys
    secrets[names["database"]] = {"url": database_url.encode()}
    secrets[names["redis"]] = {"url": redis_url.encode()}
    # docs/environments.md: `head -c 32 /dev/urandom | basenc --base64url` (padded, with its line break).
    secrets[names["nonceKey"]] = {"prefix-key": base64.urlsafe_b64encode(os.urandom(32)) + b"\n"}
    return secrets, ceremony / "root.pem", ceremony, web_ca[0]


# ---------------------------------------------------------------------------------------------------------------
# The fixture internet's DNS: a root zone signed with a key made here

DNS_TYPES = {"A": 1, "NS": 2, "SOA": 6, "TXT": 16, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "CAA": 257}


def wire_name(name):
    labels = [label for label in name.strip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.lower().encode() for label in labels) + b"\0"


def label_count(name):
    return len([label for label in name.strip(".").split(".") if label])


def nsec_type_bitmap(types):
    """RFC 4034 §4.1.2, window 0 (every type here is below 256)."""
    numbers = sorted(DNS_TYPES[t] for t in types)
    bits = bytearray(numbers[-1] // 8 + 1)
    for number in numbers:
        bits[number // 8] |= 0x80 >> (number % 8)
    return bytes([0, len(bits)]) + bytes(bits)


def dnskey_tag(rdata):
    """RFC 4034 Appendix B."""
    total = sum(byte if index & 1 else byte << 8 for index, byte in enumerate(rdata))
    return (total + (total >> 16 & 0xFFFF)) & 0xFFFF


def ecdsa_p256_sign(key, data):
    """An ECDSA P-256/SHA-256 signature as DNSSEC wants it (RFC 6605): r and s, 32 bytes each."""
    der = run(["openssl", "dgst", "-sha256", "-sign", key], input=data)
    position, raw = 2 if der[1] < 0x80 else 3, b""
    for _ in range(2):
        length = der[position + 1]
        raw += der[position + 2:position + 2 + length].lstrip(b"\0").rjust(32, b"\0")
        position += 2 + length
    return raw


def signed_root_zone(key, root_server_ip, tld_server_ip):
    """The fixture root zone, signed (algorithm 13, one key for the zone and its keys): its own name server, and a
    delegation of DELEGATED_TLD without DS, proven insecure by a signed NSEC. Returns the zone file and the trust
    anchor as a DNSKEY and as a DS record (dns-root-data's root.key and root.ds)."""
    public = base64.b64decode(spki_base64(key))[-64:]
    dnskey = struct.pack("!HBB", 257, 3, 13) + public
    tag, ttl = dnskey_tag(dnskey), 3600
    tld, root_server, tld_server = f"{DELEGATED_TLD}.", "root-servers.", f"ns.{DELEGATED_TLD}."
    ipv4 = lambda text: socket.inet_aton(text)  # noqa: E731
    rrsets = {}

    def add(owner, rtype, rdata, text):
        rrsets.setdefault((owner, rtype), []).append((rdata, text))

    soa = wire_name(root_server) + wire_name("hostmaster." + root_server) + struct.pack("!IIIII", 1, 1800, 900,
                                                                                           604800, 60)
    add(".", "SOA", soa, f"{root_server} hostmaster.{root_server} 1 1800 900 604800 60")
    add(".", "NS", wire_name(root_server), root_server)
    add(".", "DNSKEY", dnskey, f"257 3 13 {base64.b64encode(public).decode()}")
    add(root_server, "A", ipv4(root_server_ip), root_server_ip)
    add(tld, "NS", wire_name(tld_server), tld_server)
    add(tld_server, "A", ipv4(tld_server_ip), tld_server_ip)
    # Authoritative names in canonical order, each NSEC naming the next: "." < "org." < "root-servers.".
    chain = [(".", ["NS", "SOA", "RRSIG", "NSEC", "DNSKEY"]), (tld, ["NS", "RRSIG", "NSEC"]),
             (root_server, ["A", "RRSIG", "NSEC"])]
    for index, (owner, types) in enumerate(chain):
        following = chain[(index + 1) % len(chain)][0]
        add(owner, "NSEC", wire_name(following) + nsec_type_bitmap(types), f"{following} {' '.join(types)}")
    now = int(time.time())
    inception, expiration = now - 3600, now + 7 * 86400
    stamp = lambda t: time.strftime("%Y%m%d%H%M%S", time.gmtime(t))  # noqa: E731
    lines = []
    for (owner, rtype), records in rrsets.items():
        lines.extend(f"{owner} {ttl} IN {rtype} {text}" for _, text in records)
        # A delegation's NS and its glue belong to the child: the parent does not sign them.
        if (owner, rtype) in ((tld, "NS"), (tld_server, "A")):
            continue
        header = struct.pack("!HBBIIIH", DNS_TYPES[rtype], 13, label_count(owner), ttl, expiration, inception,
                             tag) + wire_name(".")
        rrset = b"".join(wire_name(owner) + struct.pack("!HHIH", DNS_TYPES[rtype], 1, ttl, len(rdata)) + rdata
                         for rdata, _ in sorted(records))
        signature = base64.b64encode(ecdsa_p256_sign(key, header + rrset)).decode()
        lines.append(f"{owner} {ttl} IN RRSIG {rtype} 13 {label_count(owner)} {ttl} {stamp(expiration)} "
                     f"{stamp(inception)} {tag} . {signature}")
    anchor = f". IN DNSKEY 257 3 13 {base64.b64encode(public).decode()}\n"
    ds = f". IN DS {tag} 13 2 {hashlib.sha256(wire_name('.') + dnskey).hexdigest().upper()}\n"
    return "\n".join(lines) + "\n", anchor, ds


# ---------------------------------------------------------------------------------------------------------------
# The cluster's DNS

class ClusterDns:
    """The cluster's DNS for the pods (CoreDNS's part): a headless Service's name answers with its ready pods'
    addresses, the LoadBalancer Service's with the balancer's, any other name in the cluster domain NXDOMAIN. Names
    outside it a cluster would forward to the internet; the pods need none here, so they are refused and recorded."""

    def __init__(self, address):
        self.address = address
        self.records = {}
        self.refused = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((address, 53))
        self.thread = threading.Thread(target=self.serve, name="cluster-dns", daemon=True)
        self.thread.start()

    def set_records(self, records):
        with self.lock:
            self.records = records

    def serve(self):
        while not self.stop.is_set():
            readable, _, _ = select.select([self.socket], [], [], 0.2)
            if not readable:
                continue
            try:
                query, peer = self.socket.recvfrom(4096)
                answer = self.answer(query)
            except (OSError, ValueError, IndexError, struct.error):
                continue
            if answer:
                self.socket.sendto(answer, peer)

    def answer(self, query):
        query_id, flags, question_count = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or question_count != 1:
            return None
        position, labels = 12, []
        while query[position]:
            length = query[position]
            labels.append(query[position + 1:position + 1 + length].decode("ascii").lower())
            position += 1 + length
        question_end = position + 5
        qtype = struct.unpack("!H", query[position + 1:position + 3])[0]
        name = ".".join(labels)
        with self.lock:
            addresses = self.records.get(name)
        answers = []
        if addresses is not None:
            rcode = 0
            if qtype == DNS_TYPES["A"]:
                answers = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(a) for a in addresses]
        elif name == CLUSTER_DOMAIN or name.endswith("." + CLUSTER_DOMAIN):
            rcode = 3
        else:
            rcode = 5
            with self.lock:
                self.refused.add(name)
        response_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | rcode
        header = struct.pack("!HHHHHH", query_id, response_flags, 1, len(answers), 0, 0)
        return header + query[12:question_end] + b"".join(answers)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        self.socket.close()


# ---------------------------------------------------------------------------------------------------------------
# The translations

ANY_OR_OWN_LOOPBACK = re.compile(r"(?<![\d.])(?:0\.0\.0\.0|127\.0\.0\.1)(?![\d.])")


def translate_configmap_file(configmap, key, text, pod_ip, fixture_logs):
    """The chart's ConfigMap file `key` of `configmap` as this pod sees it here — the only rewrites of the chart's
    content, each standing in for what a cluster or the internet provides (see the module's docstring):
    (a) "0.0.0.0" and "127.0.0.1" are the pod's own address (its network namespace would make them its own);
    (c) each `[[logs]]` entry's `url` and `public_key` are a fixture log's (the real logs' keys are not ours);
    (c) unbound may ask name servers on loopback, where the fixture internet's are.
    Returns the text and the list of translations made, for the run's report."""
    made = []
    text, count = ANY_OR_OWN_LOOPBACK.subn(pod_ip, text)
    if count:
        made.append(f"(a) {count} address(es) → {pod_ip}")
    if key.endswith(".toml") and tomllib.loads(text).get("logs"):
        text = swap_ct_logs(text, fixture_logs)
        made.append(f"(c) {len(fixture_logs)} CT log(s) → fixture logs")
    if "do-not-query-localhost: yes" in text:
        text = text.replace("do-not-query-localhost: yes", "do-not-query-localhost: no")
        made.append("(c) do-not-query-localhost: no")
    return text, made


def swap_ct_logs(text, fixture_logs):
    """`text` with the url and public_key of its n-th `[[logs]]` table replaced by fixture log n's."""
    lines, index, in_logs = [], -1, False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("["):
            in_logs = stripped == "[[logs]]"
            index += in_logs
        elif in_logs and re.match(r"(url|public_key)\s*=", stripped):
            field = stripped.split("=", 1)[0].strip()
            url, public_key = fixture_logs[index]
            line = f'{field} = "{url if field == "url" else public_key}"\n'
        lines.append(line)
    if index + 1 != len(fixture_logs):
        raise ChartFault(f"{index + 1} [[logs]] tables, {len(fixture_logs)} fixture logs")
    return "".join(lines)


def container_view(container_dir, image_dir, mounts, hostname, user, groups, read_only_root, environment):
    """The script that gives a container its view of the node, in a fresh mount and UTS namespace, and then runs
    its process ("$@") as the spec's user: the image's files (translation (e): the host's filesystem with the
    image's quarry at the ENTRYPOINT path and the fixture root's hints and key as dns-root-data), the kubelet's
    /etc/hosts, /etc/hostname and /etc/resolv.conf (translation (b): the cluster DNS), every volumeMount, and a
    read-only root. `mounts` is [(source, mountPath, readOnly)]."""
    etc = container_dir / "etc"
    lines = ["set -e", "# The image: its files over the host's (read-only layers)."]
    overlays = {"/etc": etc}
    for layer in sorted({p.parent for p in image_dir.rglob("*") if p.is_file()}):
        overlays["/" + str(layer.relative_to(image_dir))] = layer
    # A mount point the host lacks is made in a layer over its nearest existing ancestor (under /etc: the kubelet's
    # files' layer).
    for _, mount_path, _ in mounts:
        path = Path(mount_path)
        if path.exists():
            continue
        ancestor = next(p for p in path.parents if p.exists())
        if str(ancestor) not in overlays:
            if ancestor == Path("/"):
                raise ChartFault(f"mountPath {mount_path}: no layer can be put over / here")
            overlays[str(ancestor)] = container_dir / "layers" / str(ancestor).strip("/")
        (overlays[str(ancestor)] / path.relative_to(ancestor)).mkdir(parents=True, exist_ok=True)
    for target, layer in sorted(overlays.items(), key=lambda item: item[0].count("/")):
        layer.mkdir(parents=True, exist_ok=True)
        lines.append(f"mount -t overlay overlay -o lowerdir={shlex.quote(str(layer))}:{shlex.quote(target)} "
                     f"{shlex.quote(target)}")
    lines.append("# Its volumes, where the pod spec mounts them.")
    # Parents before children; a mount over a directory holding this run's files (an emptyDir at /tmp) last, once
    # every source has been mounted.
    covers_work = lambda path: container_dir.is_relative_to(path)  # noqa: E731
    for source, mount_path, read_only in sorted(mounts, key=lambda m: (covers_work(m[1]), m[1].count("/"))):
        option = "-o ro " if read_only else ""
        lines.append(f"mount --bind {option}{shlex.quote(str(source))} {shlex.quote(mount_path)}")
    if read_only_root:
        # A bind remount changes this namespace's mount only, never the host's filesystem.
        lines.append("mount -o remount,bind,ro /")
    lines.append(f"hostname {shlex.quote(hostname)}")
    lines.append("cd /")
    env = " ".join(shlex.quote(f"{name}={value}") for name, value in environment.items())
    lines.append(f"exec setpriv --reuid={user[0]} --regid={user[1]} --groups={','.join(map(str, groups))} "
                 f"--inh-caps=-all --bounding-set=-all --no-new-privs -- env -i {env} \"$@\"")
    launcher = container_dir / "enter.sh"
    launcher.write_text("\n".join(lines) + "\n")
    return launcher


def kubelet_etc(directory, pod_name, pod_ip, namespace, cluster_dns_ip):
    """/etc/hosts, /etc/hostname and /etc/resolv.conf as the kubelet writes them for a ClusterFirst pod."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                     f"{pod_ip}\t{pod_name}\n")
    (directory / "hostname").write_text(pod_name + "\n")
    (directory / "resolv.conf").write_text(
        f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
        f"nameserver {cluster_dns_ip}\noptions ndots:5\n")


# ---------------------------------------------------------------------------------------------------------------
# Volumes, as the kubelet materialises them

def write_volume(directory, files, default_mode, fs_group):
    """`files` ({relative path: (bytes, mode or None)}) in the kubelet's atomic-writer layout: a timestamped
    directory, `..data` pointing at it, and each top-level name a link through `..data`."""
    directory.mkdir(parents=True)
    data_dir = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}"
    data_dir.mkdir()
    for relative, (content, mode) in files.items():
        path = data_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode if mode is not None else default_mode)
        if fs_group is not None:
            os.chown(path, 0, fs_group)
    (directory / "..data").symlink_to(data_dir.name)
    for top in sorted({Path(relative).parts[0] for relative in files}):
        (directory / top).symlink_to(f"..data/{top}")


def selected_files(data, items, what):
    """A ConfigMap's or Secret's files: every key, or exactly `items` (key → path, mode)."""
    if items is None:
        return {key: (value, None) for key, value in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            raise ChartFault(f"{what} has no key {item['key']!r}")
        files[item["path"]] = (data[item["key"]], item.get("mode"))
    return files


# ---------------------------------------------------------------------------------------------------------------
# Pods and the kubelet

class Probe:
    """One of a container's probes (startup, readiness, liveness), its spec with the API's defaults, and its state."""

    def __init__(self, kind, spec):
        self.kind = kind
        self.spec = {**PROBE_DEFAULTS, **spec}
        self.failures = 0
        self.successes = 0
        self.next_at = 0.0
        self.pending = None
        self.last_failure = ""


class Container:
    """A container of a pod: its spec, its process and the kubelet's view of it (started, ready, restarts)."""

    def __init__(self, pod, spec, sidecar, restart):
        self.pod = pod
        self.spec = spec
        self.name = spec["name"]
        self.sidecar = sidecar
        self.restart = restart
        self.process = None
        self.log_path = None
        self.launcher = None
        self.command = []
        self.restarts = 0
        self.next_start = 0.0
        self.kill_deadline = None
        self.done = False
        self.gate_passed = False
        self.startup_done = False
        self.ready = False
        self.exit_code = None
        self.probes = {kind: Probe(kind, spec[f"{kind}Probe"]) for kind in ("startup", "readiness", "liveness")
                       if spec.get(f"{kind}Probe")}

    @property
    def label(self):
        return f"{self.pod.name}/{self.name}"

    def port(self, port):
        """A probe's or Service's port: a number, or the name of one of this container's ports."""
        if isinstance(port, int):
            return port
        for declared in self.spec.get("ports", []):
            if declared.get("name") == port:
                return declared["containerPort"]
        raise ChartFault(f"{self.label}: no port named {port!r}")


class Pod:
    """A pod of a Deployment or Job: its address, labels, spec and containers (native sidecars first)."""

    def __init__(self, name, ip, template, owner):
        self.name = name
        self.ip = ip
        self.labels = template["metadata"].get("labels", {})
        self.spec = template["spec"]
        self.owner = owner
        self.dir = None
        init = [Container(self, c, True, "Always") for c in self.spec.get("initContainers", [])
                if c.get("restartPolicy") == "Always"]
        if len(init) != len(self.spec.get("initContainers", [])):
            raise ChartFault(f"{name}: only native sidecars are supported among init containers")
        restart = self.spec.get("restartPolicy", "Always")
        self.containers = init + [Container(self, c, False, restart) for c in self.spec["containers"]]
        self.ready_at = None
        # The Services whose names its containers' own configuration files address: it starts once each has a ready
        # pod (the chart's dependency order), unless every pod starts at once.
        self.needs = set()
        self.released = False

    @property
    def ready(self):
        return all(c.ready for c in self.containers)

    @property
    def finished(self):
        """For a Job's pod: every container has exited and none will restart; the exit code of the first failure."""
        if any(c.process is not None or c.exit_code is None for c in self.containers):
            return None
        return next((c.exit_code for c in self.containers if c.exit_code != 0), 0)


class Kubelet:
    """Runs pods as processes: volumes, containers, probes, restarts; publishes ready pods to the cluster DNS."""

    def __init__(self, work, objects, namespace, secrets, image_dir, entrypoint, fixtures, dns, helpers):
        self.work = work
        self.namespace = namespace
        self.configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        self.services = [o for o in objects if o["kind"] == "Service"]
        self.secrets = secrets
        self.image_dir = image_dir
        self.entrypoint = entrypoint
        self.fixtures = fixtures
        self.dns = dns
        self.pods = []
        self.started = []
        # Processes that are not pods' (fixtures, the client): stopped with them.
        self.helpers = helpers
        self.probe_processes = set()
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=12, thread_name_prefix="probe")
        self.translations = {}
        self.published = None

    # -- pods ----------------------------------------------------------------------------------------------------

    def add_pod(self, pod):
        pod.dir = self.work / "pods" / pod.name
        (pod.dir / "volumes").mkdir(parents=True)
        fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
        volumes = {v["name"]: self.materialise(pod, v, fs_group) for v in pod.spec.get("volumes", [])}
        for container in pod.containers:
            self.prepare(pod, container, volumes, fs_group)
            pod.needs |= self.services_addressed(container, volumes)
        # A replica names its own Service too (its `[lane]`: where it stands among its replicas), which lists it only
        # once it is ready: that is no dependency.
        pod.needs -= {f"{s['metadata']['name']}.{self.namespace}.svc.{CLUSTER_DOMAIN}" for s in self.services
                      if all(pod.labels.get(k) == v for k, v in s["spec"].get("selector", {}).items())}
        self.pods.append(pod)

    def services_addressed(self, container, volumes):
        """The chart's Services named in the files this container's arguments point at (its --config files)."""
        names = {f"{s['metadata']['name']}.{self.namespace}.svc.{CLUSTER_DOMAIN}" for s in self.services}
        found = set()
        for argument in container.command:
            for mount in container.spec.get("volumeMounts", []):
                prefix = mount["mountPath"].rstrip("/") + "/"
                if argument.startswith(prefix):
                    path = volumes[mount["name"]] / argument.removeprefix(prefix)
                    if path.is_file():
                        found |= {name for name in names if name in path.read_text(errors="replace")}
        return found

    def materialise(self, pod, volume, fs_group):
        directory = pod.dir / "volumes" / volume["name"]
        if "emptyDir" in volume:
            directory.mkdir(parents=True)
            os.chmod(directory, 0o777)
            if fs_group is not None:
                os.chown(directory, 0, fs_group)
            return directory
        if "configMap" in volume or "secret" in volume:
            source = volume.get("configMap") or volume["secret"]
            files = self.source_files(pod, source, "secret" in volume)
            mode = source.get("defaultMode", 0o644)
        elif "projected" in volume:
            files, mode = {}, volume["projected"].get("defaultMode", 0o644)
            for projection in volume["projected"]["sources"]:
                if set(projection) - {"configMap", "secret"}:
                    raise ChartFault(f"{pod.name}: projected source {sorted(projection)} is not supported here")
                source = projection.get("configMap") or projection["secret"]
                files.update(self.source_files(pod, source, "secret" in projection))
        else:
            raise ChartFault(f"{pod.name}: volume {volume['name']} of an unsupported kind {sorted(volume)}")
        write_volume(directory, files, mode, fs_group)
        return directory

    def source_files(self, pod, source, is_secret):
        name = source.get("secretName") or source.get("name")
        if is_secret:
            data = self.secrets.get(name)
            what = f"Secret {name}"
        else:
            configmap = self.configmaps.get(name)
            data = None
            if configmap is not None:
                data = {}
                for key, text in (configmap.get("data") or {}).items():
                    text, made = translate_configmap_file(name, key, text, pod.ip, self.fixtures["ct_logs"])
                    if made:
                        self.translations.setdefault(f"{name}/{key}", set()).update(
                            m.replace(pod.ip, "the pod's address") for m in made)
                    data[key] = text.encode()
            what = f"ConfigMap {name}"
        if data is None:
            if source.get("optional"):
                return {}
            origin = "an operator's Secret this run does not make" if is_secret else "not in the rendered chart"
            raise ChartFault(f"{pod.name} mounts {what}: {origin}")
        return selected_files(data, source.get("items"), what)

    def prepare(self, pod, container, volumes, fs_group):
        spec = container.spec
        security = {**pod.spec.get("securityContext", {}), **spec.get("securityContext", {})}
        if security.get("runAsUser") is None:
            raise ChartFault(f"{container.label}: no runAsUser (the image's USER would apply; not modelled here)")
        user = (security["runAsUser"], security.get("runAsGroup", 0))
        if security.get("runAsNonRoot") and user[0] == 0:
            raise ChartFault(f"{container.label}: runAsNonRoot with user 0 (the kubelet refuses to start it)")
        groups = sorted({user[1], *([fs_group] if fs_group is not None else []),
                         *pod.spec.get("securityContext", {}).get("supplementalGroups", [])})
        mounts = []
        for mount in spec.get("volumeMounts", []):
            if mount.get("subPath"):
                source = volumes[mount["name"]] / mount["subPath"]
            else:
                source = volumes[mount["name"]]
            mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        environment = {"PATH": IMAGE_PATH, "HOSTNAME": pod.name, "HOME": "/"}
        for variable in spec.get("env", []):
            if "value" in variable:
                environment[variable["name"]] = variable["value"]
            elif variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                environment[variable["name"]] = pod.ip
            else:
                raise ChartFault(f"{container.label}: env {variable['name']} from {variable.get('valueFrom')} "
                                 "is not supported here")
        container_dir = pod.dir / "containers" / container.name
        kubelet_etc(container_dir / "etc", pod.name, pod.ip, self.namespace, self.fixtures["cluster_dns"])
        container.launcher = container_view(container_dir, self.image_dir, mounts, pod.name, user, groups,
                                            bool(security.get("readOnlyRootFilesystem")), environment)
        container.command = (spec["command"] if spec.get("command") else self.entrypoint) + spec.get("args", [])
        container.log_path = self.work / "logs" / f"{pod.name}.{container.name}.log"

    def in_container(self, container, command):
        return ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh",
                str(container.launcher), *command]

    # -- processes -----------------------------------------------------------------------------------------------

    def start(self, container, now):
        with open(container.log_path, "ab") as log:
            log.write(f"==> {time.strftime('%H:%M:%S')} start #{container.restarts}: "
                      f"{shlex.join(container.command)}\n".encode())
            container.process = subprocess.Popen(self.in_container(container, container.command),
                                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True)
        self.started.append(container.process)
        container.kill_deadline = None
        container.exit_code = None
        container.startup_done = "startup" not in container.probes
        container.ready = False
        for probe in container.probes.values():
            probe.failures = probe.successes = 0
            probe.next_at = now + probe.spec["initialDelaySeconds"]

    def stop(self, container, now, why):
        if container.process is None or container.kill_deadline is not None:
            return
        with open(container.log_path, "ab") as log:
            log.write(f"==> {time.strftime('%H:%M:%S')} stopped by the kubelet: {why}\n".encode())
        signal_group(container.process, signal.SIGTERM)
        container.kill_deadline = now + STOP_GRACE_SECONDS

    def exited(self, container, code, now):
        container.process = None
        container.exit_code = code
        container.ready = False
        container.startup_done = False
        if container.restart == "Always" or (container.restart == "OnFailure" and code != 0):
            low, high = RESTART_BACKOFF_SECONDS
            container.next_start = now + min(high, low * 2 ** container.restarts)
            container.restarts += 1
        else:
            container.done = True

    # -- the kubelet's loop --------------------------------------------------------------------------------------

    def tick(self):
        now = time.monotonic()
        for pod in self.pods:
            pod.released = pod.released or all((self.published or {}).get(name) for name in pod.needs)
            gate_open = pod.released
            for container in pod.containers:
                if container.process is None:
                    if gate_open and not container.done and now >= container.next_start:
                        self.start(container, now)
                else:
                    code = container.process.poll()
                    if code is not None:
                        self.exited(container, code, now)
                    elif container.kill_deadline is not None and now >= container.kill_deadline:
                        signal_group(container.process, signal.SIGKILL)
                    else:
                        self.probe(container, now)
                # A native sidecar holds back the containers after it until its startup probe has first passed.
                if container.sidecar:
                    container.gate_passed = container.gate_passed or container.startup_done
                    gate_open = gate_open and container.gate_passed
            if pod.ready and pod.ready_at is None:
                pod.ready_at = now
        self.publish()

    def probe(self, container, now):
        for probe in container.probes.values():
            if probe.pending is not None and probe.pending.done():
                ok, why = probe.pending.result()
                probe.pending = None
                self.record(container, probe, ok, why, now)
        if container.startup_done and "readiness" not in container.probes:
            container.ready = True
        # As the kubelet's probe workers: each ticks on its own period from the container's start; readiness and
        # liveness skip their ticks until the startup probe has passed, and the startup probe stops once it has.
        for probe in container.probes.values():
            if probe.pending is None and now >= probe.next_at:
                probe.next_at = now + probe.spec["periodSeconds"]
                if (probe.kind == "startup") != container.startup_done:
                    probe.pending = self.executor.submit(self.run_probe, container, probe.spec)

    def record(self, container, probe, ok, why, now):
        if container.process is None or container.kill_deadline is not None:
            return
        spec = probe.spec
        if ok:
            probe.failures = 0
            probe.successes += 1
            if probe.kind == "startup":
                container.startup_done = True
            elif probe.kind == "readiness" and probe.successes >= spec["successThreshold"]:
                container.ready = True
            return
        probe.successes = 0
        probe.failures += 1
        probe.last_failure = why
        if probe.failures < spec["failureThreshold"]:
            return
        if probe.kind == "readiness":
            container.ready = False
        else:
            self.stop(container, now, f"{probe.kind} probe failed {probe.failures} times: {why}")

    def run_probe(self, container, spec):
        """One probe, as the kubelet makes it; (passed, why not)."""
        timeout = spec["timeoutSeconds"]
        try:
            if "exec" in spec:
                process = subprocess.Popen(self.in_container(container, spec["exec"]["command"]),
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True)
                with self.lock:
                    self.probe_processes.add(process)
                try:
                    output, _ = process.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    signal_group(process, signal.SIGKILL)
                    process.communicate()
                    return False, f"timed out after {timeout} s"
                finally:
                    with self.lock:
                        self.probe_processes.discard(process)
                tail = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
                return process.returncode == 0, f"exit {process.returncode}: {tail[0]}"
            if "tcpSocket" in spec:
                port = container.port(spec["tcpSocket"]["port"])
                with socket.create_connection((spec["tcpSocket"].get("host", container.pod.ip), port), timeout):
                    return True, ""
            if "httpGet" in spec:
                get = spec["httpGet"]
                host, port = get.get("host", container.pod.ip), container.port(get["port"])
                if get.get("scheme", "HTTP") == "HTTPS":
                    # The kubelet does not verify the certificate of an HTTPS probe.
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
                else:
                    connection = http.client.HTTPConnection(host, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                    connection.request("GET", get.get("path", "/"), headers={"User-Agent": "kube-probe/1.33",
                                                                             **headers})
                    status = connection.getresponse().status
                finally:
                    connection.close()
                return 200 <= status < 400, f"HTTP {status}"
            raise ChartFault(f"{container.label}: probe {sorted(spec)} is not supported here")
        except (OSError, http.client.HTTPException) as error:
            return False, str(error)

    def publish(self):
        """The cluster DNS's records: each headless Service's name → its ready pods; a LoadBalancer's → the
        balancer."""
        records = {}
        for service in self.services:
            name = f"{service['metadata']['name']}.{self.namespace}.svc.{CLUSTER_DOMAIN}"
            if service["spec"].get("clusterIP") == "None":
                selector = service["spec"]["selector"]
                records[name] = [p.ip for p in self.pods
                                 if p.ready and all(p.labels.get(k) == v for k, v in selector.items())]
            elif service["spec"].get("type") == "LoadBalancer":
                records[name] = [self.fixtures["balancer"]]
            else:
                raise ChartFault(f"Service {name}: a virtual IP is not modelled here")
        if records != self.published:
            self.dns.set_records(records)
            self.published = records

    def run_until(self, done, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if done():
                return True
            time.sleep(TICK_SECONDS)
        return False

    def stop_all(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
        with self.lock:
            processes = list(self.probe_processes)
        stop_processes(self.started + processes + self.helpers)


def lane_gauges(pod):
    """The pod's `quarry_lane_rank` and `quarry_lane_replicas` from its metrics port, each None when not exported."""
    port = next((p["containerPort"] for c in pod.spec["containers"] for p in c.get("ports", [])
                 if p.get("name") == "metrics"), None)
    if port is None:
        return None, None
    connection = http.client.HTTPConnection(pod.ip, port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("quarry_lane_rank", "quarry_lane_replicas"):
            values[name] = float(value)
    return values.get("quarry_lane_rank"), values.get("quarry_lane_replicas")


def check_lanes(pods, expected, timeout):
    """Every pod of each Deployment in `expected` has found its own rank among its Deployment's pods through the
    cluster DNS (ranks 0 … n-1 of n: its `[lane]`); a pod looks again every second while it is not listed (it is
    only once ready) and for half a minute after its place changed."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for pod in pods:
            if pod.owner["kind"] == "Deployment":
                found.setdefault(pod.owner["metadata"]["name"], []).append(lane_gauges(pod))
        problems = []
        for name in expected:
            gauges = found.get(name, [])
            ranks = sorted(rank for rank, _ in gauges if rank is not None)
            if ranks != [float(i) for i in range(len(gauges))] or any(of != len(gauges) for _, of in gauges):
                problems.append(f"{name}: {gauges}")
        lanes = sorted(name for name, gauges in found.items() if any(rank is not None for rank, _ in gauges))
        if lanes != sorted(expected):
            problems.append(f"Deployments in lanes {lanes}, expected {sorted(expected)}")
        if not problems:
            return [f"{name}: ranks 0–{len(found[name]) - 1} of {len(found[name])}" for name in sorted(expected)]
        if time.monotonic() >= deadline:
            raise RuntimeError("lanes not as the replica counts say (rank, replicas): " + "; ".join(problems))
        time.sleep(0.5)


def signal_group(process, signum):
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_processes(processes):
    """SIGTERM to every process group, SIGKILL to those still there after the grace period; all reaped."""
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in alive:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        signal_group(process, signal.SIGKILL)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"process {process.pid} did not die", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# The fixtures: the internet and the load balancer

def wait_for_tcp(address, port, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} is not listening on {address}:{port} after {timeout} s")


def management(address, path, body):
    """A call to the challenge test server's management API."""
    connection = http.client.HTTPConnection(address, 8055, timeout=5)
    try:
        connection.request("POST", path, body=json.dumps(body))
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"challtestsrv {path}: HTTP {response.status} {response.read()!r}")
    finally:
        connection.close()


def start_fixtures(work, dev_tools, addresses, log_count, helpers):
    """The CT logs, the fixture internet's DNS (a signed root, the `org.` server) and the image's dns-root-data."""
    logs_dir = work / "logs"
    fixtures = {"cluster_dns": addresses["cluster_dns"], "balancer": addresses["balancer"], "ct_logs": [],
                "log_keys": []}

    def spawn(name, command):
        with open(logs_dir / f"fixture.{name}.log", "ab") as log:
            helpers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))

    for index in range(log_count):
        key = work / "pki" / "ct" / f"log-{index}.key.pem"
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key])
        address = addresses["ct_logs"][index]
        spawn(f"ct-log-{index}", [dev_tools, "fake-ct-log", "--key", key, "--listen", f"{address}:4600"])
        fixtures["ct_logs"].append((f"http://{address}:4600/", spki_base64(key)))
        fixtures["log_keys"].append(base64.b64decode(spki_base64(key)))

    # The TLD's authoritative server: the subscriber's zone, where the client's hook publishes its TXT records.
    tld = addresses["tld_dns"]
    spawn("tld-dns", [dev_tools, "challtestsrv", "--dns-addr", f"{tld}:53", "--http01-addr", f"{tld}:5002",
                      "--tlsalpn01-addr", f"{tld}:5001", "--management-addr", f"{tld}:8055"])

    # The root: unbound serving the signed zone, authoritatively only.
    dns_dir = work / "internet-dns"
    dns_dir.mkdir()
    zone_key = dns_dir / "root-zone.key.pem"
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", zone_key])
    zone, anchor, ds = signed_root_zone(zone_key, addresses["root_dns"], tld)
    (dns_dir / "root.zone").write_text(zone)
    hints = f".\t3600000\tNS\troot-servers.\nroot-servers.\t3600000\tA\t{addresses['root_dns']}\n"
    (dns_dir / "root.conf").write_text(
        "server:\n"
        f"    interface: {addresses['root_dns']}\n    port: 53\n    access-control: 127.0.0.0/8 allow\n"
        f"    username: \"\"\n    chroot: \"\"\n    directory: \"{dns_dir}\"\n    pidfile: \"\"\n"
        "    use-syslog: no\n    logfile: \"\"\n    num-threads: 1\n    module-config: \"iterator\"\n"
        f"    root-hints: \"{dns_dir / 'root.hints'}\"\n"
        f"auth-zone:\n    name: \".\"\n    zonefile: \"{dns_dir / 'root.zone'}\"\n    for-downstream: yes\n"
        "    for-upstream: no\n    fallback-enabled: no\nremote-control:\n    control-enable: no\n")
    (dns_dir / "root.hints").write_text(hints)
    spawn("root-dns", ["unbound", "-d", "-p", "-c", dns_dir / "root.conf"])

    # The image's dns-root-data, as the fixture internet has it: its root's address and key.
    image_dns = work / "image" / "usr" / "share" / "dns"
    image_dns.mkdir(parents=True)
    (image_dns / "root.hints").write_text(hints)
    (image_dns / "root.key").write_text(anchor)
    (image_dns / "root.ds").write_text(ds)

    for index, (url, _) in enumerate(fixtures["ct_logs"]):
        wait_for_tcp(addresses["ct_logs"][index], 4600, 20, f"CT log {url}")
    wait_for_tcp(tld, 8055, 20, "the challenge test server")
    wait_for_tcp(addresses["root_dns"], 53, 20, "the fixture root name server")
    # Only what is set answers: no default address for every name.
    management(tld, "/set-default-ipv4", {"ip": ""})
    management(tld, "/add-a", {"host": f"ns.{DELEGATED_TLD}.", "addresses": [tld]})
    return fixtures


def start_balancers(dev_tools, services, pods, address, helpers, logs_dir):
    """The LoadBalancer Services: `quarry-dev balance` per Service port on `address`, over the selected pods."""
    for service in services:
        if service["spec"].get("type") != "LoadBalancer":
            continue
        selected = [p for p in pods if all(p.labels.get(k) == v for k, v in service["spec"]["selector"].items())]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if not isinstance(target, int):
                container = next(c for c in selected[0].containers
                                 if any(p.get("name") == target for p in c.spec.get("ports", [])))
                target = container.port(target)
            command = [dev_tools, "balance", "--listen", f"{address}:{port['port']}"]
            for pod in selected:
                command += ["--backend", f"{pod.ip}:{target}"]
            with open(logs_dir / f"fixture.balance-{service['metadata']['name']}-{port['port']}.log", "ab") as log:
                helpers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True))
            wait_for_tcp(address, port["port"], 20, f"the balancer of {service['metadata']['name']}")


# ---------------------------------------------------------------------------------------------------------------
# The database

def create_database(admin_url):
    name = f"quarry_chart_run_{os.getpid()}_{os.urandom(3).hex()}"
    run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qc", f'CREATE DATABASE "{name}"'])
    parts = urllib.parse.urlsplit(admin_url)
    return name, urllib.parse.urlunsplit(parts._replace(path="/" + name))


# The logical Redis database the run's rate-limit buckets live in: its own, emptied first, so that buckets other
# tests filled from 127.0.0.1 (staging's limits are the real ones: 50 accounts per address in 3 hours) count nothing.
REDIS_DATABASE = 9


def fresh_redis_database(url):
    """`url` moved to the run's own logical database, emptied."""
    parts = urllib.parse.urlsplit(url)
    fresh = urllib.parse.urlunsplit(parts._replace(path=f"/{REDIS_DATABASE}"))
    run(["redis-cli", "-u", fresh, "FLUSHDB"])
    return fresh


def drop_database(admin_url, name):
    subprocess.run(["psql", admin_url, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                   capture_output=True, timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# The subscriber

def run_certbot(kubelet, work, external_host, crl_host, addresses, web_ca, timeout):
    """certbot against the public URL, dns-01 through a hook at the subscriber's DNS server, in a mount namespace
    whose /etc/hosts holds the public records of the CA's hosts (the balancer)."""
    client = work / "client"
    (client / "etc").mkdir(parents=True)
    (client / "etc" / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n{addresses['balancer']}\t{external_host} {crl_host}\n")
    tld = addresses["tld_dns"]
    hook = client / "dns-hook.sh"
    hook.write_text(
        "#!/bin/sh\n# certbot's manual hooks: publish (auth) or remove (cleanup) the dns-01 TXT record.\nset -e\n"
        f"name=\"_acme-challenge.$CERTBOT_DOMAIN.\"\n"
        "if [ \"$1\" = cleanup ]; then\n"
        f"  exec curl -sSf -X POST http://{tld}:8055/clear-txt -d \"{{\\\"host\\\":\\\"$name\\\"}}\"\n"
        "fi\n"
        f"exec curl -sSf -X POST http://{tld}:8055/set-txt "
        "-d \"{\\\"host\\\":\\\"$name\\\",\\\"value\\\":\\\"$CERTBOT_VALIDATION\\\"}\"\n")
    hook.chmod(0o755)
    launcher = client / "enter.sh"
    launcher.write_text(
        "set -e\n"
        f"mount -t overlay overlay -o lowerdir={shlex.quote(str(client / 'etc'))}:/etc /etc\n"
        f"export REQUESTS_CA_BUNDLE={shlex.quote(str(web_ca))}\n"
        "exec \"$@\"\n")
    command = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
               "--server", f"https://{external_host}/directory", "--manual", "--preferred-challenges", "dns",
               "--manual-auth-hook", f"{hook} auth", "--manual-cleanup-hook", f"{hook} cleanup",
               "--config-dir", client / "config", "--work-dir", client / "work", "--logs-dir", client / "logs",
               "--cert-name", "chart-run"]
    for name in CERT_NAMES:
        command += ["-d", name]
    log_path = work / "logs" / "client.certbot.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh",
                                    str(launcher), *map(str, command)], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    kubelet.helpers.append(process)
    if not kubelet.run_until(lambda: process.poll() is not None, timeout):
        raise RuntimeError(f"certbot did not finish within {timeout} s")
    if process.returncode != 0:
        raise RuntimeError(f"certbot failed ({process.returncode}); see {log_path} and "
                           f"{client / 'logs' / 'letsencrypt.log'}")
    return client / "config" / "live" / "chart-run"


def verify_certificate(live, root, issuers_dir, log_keys, balancer, crl_timeout, kubelet):
    """The chain up to the ceremony's root, the names, an SCT from every fixture log, and the CRL it names, signed
    by its issuer. Returns what was checked, for the report."""
    checked = []
    run(["openssl", "verify", "-CAfile", root, "-untrusted", live / "chain.pem", live / "cert.pem"])
    checked.append("chain verifies up to the ceremony's root")
    text = run(["openssl", "x509", "-in", live / "cert.pem", "-noout", "-text"]).decode()
    for name in CERT_NAMES:
        if f"DNS:{name}" not in text:
            raise RuntimeError(f"the certificate does not name {name}")
    checked.append(f"names {', '.join(CERT_NAMES)}")
    log_ids = {re.sub(r"[\s:]", "", match).upper() for match in
               re.findall(r"Log ID\s*:\s*((?:[0-9A-F]{2}:?\s*)+)", text)}
    expected = {hashlib.sha256(key).hexdigest().upper() for key in log_keys}
    if not expected <= log_ids:
        raise RuntimeError(f"SCTs from logs {sorted(log_ids)}, expected every fixture log {sorted(expected)}")
    checked.append(f"SCTs from the {len(expected)} fixture logs")
    match = re.search(r"URI:(http://[^\s]+\.crl)", text)
    if not match:
        raise RuntimeError("the certificate names no CRL")
    if crl_timeout is None:
        checked.append(f"its CRL {match.group(1)} NOT checked (pods started all at once)")
        return checked
    url = urllib.parse.urlsplit(match.group(1))
    issuer = issuers_dir / f"{url.path.strip('/').split('/')[0]}.pem"
    crl = live.parent.parent.parent / "crl.der"
    deadline = time.monotonic() + crl_timeout
    last = ""
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(balancer, url.port or 80, timeout=5)
        try:
            connection.request("GET", url.path, headers={"Host": url.netloc})
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                crl.write_bytes(body)
                break
            last = f"HTTP {response.status}"
        except OSError as error:
            last = str(error)
        finally:
            connection.close()
        kubelet.run_until(lambda: False, 2)
    else:
        raise RuntimeError(f"{match.group(1)}: no CRL within {crl_timeout} s ({last})")
    run(["openssl", "crl", "-inform", "DER", "-in", crl, "-CAfile", issuer, "-noout"])
    checked.append(f"its CRL {match.group(1)} is served and signed by {issuer.stem}")
    return checked


# ---------------------------------------------------------------------------------------------------------------

def tail(path, lines):
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def report_failure(work, kubelet):
    print("\n==== log tails ====", file=sys.stderr)
    for path in sorted((work / "logs").glob("*.log")):
        print(f"---- {path.name}", file=sys.stderr)
        for line in tail(path, LOG_TAIL_LINES):
            print(f"  {line}", file=sys.stderr)
    letsencrypt = work / "client" / "logs" / "letsencrypt.log"
    if letsencrypt.exists():
        print("---- certbot's letsencrypt.log", file=sys.stderr)
        for line in tail(letsencrypt, 40):
            print(f"  {line}", file=sys.stderr)
    if kubelet is not None:
        print("\n==== pods ====", file=sys.stderr)
        for pod in kubelet.pods:
            if not pod.released:
                waiting = [n.split(".")[0] for n in sorted(pod.needs) if not (kubelet.published or {}).get(n)]
                print(f"  {pod.name} ({pod.ip}): not started, waiting for a ready pod of {', '.join(waiting)}",
                      file=sys.stderr)
                continue
            for container in pod.containers:
                failures = "; ".join(f"{p.kind}: {p.last_failure}" for p in container.probes.values()
                                     if p.last_failure)
                state = "running" if container.process else f"exited {container.exit_code}"
                print(f"  {container.label} ({pod.ip}): {state}, ready={container.ready}, "
                      f"restarts={container.restarts}{', last probe failures: ' + failures if failures else ''}",
                      file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, default=REPO / "deploy/helm/quarry")
    parser.add_argument("--values", type=Path, default=None, help="default: the chart's values-staging.yaml")
    parser.add_argument("--quarry", type=Path, default=REPO / "target/debug/quarry")
    parser.add_argument("--quarry-dev", type=Path, default=None,
                        help="the dev tools' binary the fixtures run (CT logs, DNS, the load balancers), never a pod; "
                             "default: quarry-dev beside --quarry")
    parser.add_argument("--postgres-url", default=os.environ.get("QUARRY_TEST_POSTGRES_URL"),
                        help="an administrative URL: a fresh database is made there for the run, and dropped")
    parser.add_argument("--redis-url", default=os.environ.get("QUARRY_TEST_REDIS_URL"))
    parser.add_argument("--net", default="127.0.9", help="the /24 of loopback addresses to use (default 127.0.9)")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--client-timeout", type=float, default=180)
    parser.add_argument("--all-at-once", action="store_true",
                        help="start every pod at once, as a cluster does, instead of in the chart's dependency order; "
                             "the CRL check is then skipped (the crl-updater's first pass precedes the sa's readiness "
                             "and the next comes a period later)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, volumes, PKI)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("chart-run.py runs as root: it makes mount namespaces and runs the pods as their users")
    if not args.postgres_url or not args.redis_url:
        sys.exit("--postgres-url and --redis-url are needed (or QUARRY_TEST_POSTGRES_URL, QUARRY_TEST_REDIS_URL)")
    for tool in ("unshare", "setpriv", "openssl", "psql", "redis-cli", "certbot", "unbound", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    values_file = args.values or args.chart / "values-staging.yaml"
    if not ipaddress.ip_address(args.net + ".1").is_loopback:
        sys.exit(f"--net {args.net}: not a loopback network")
    addresses = {"cluster_dns": f"{args.net}.2", "root_dns": f"{args.net}.3", "tld_dns": f"{args.net}.4",
                 "balancer": f"{args.net}.5", "ct_logs": [f"{args.net}.{6 + i}" for i in range(4)]}

    # Stopped by a signal: the same clean-up as any failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="quarry-chart-run."))
    os.chmod(work, 0o755)
    (work / "logs").mkdir()
    kubelet, dns, database, helpers, ok = None, None, None, [], False
    try:
        print(f"==> rendering {args.chart} with {values_file.name} (work directory {work})")
        objects, values = render_chart(args.chart, values_file)
        entrypoint, image_user = image_facts(REPO / "deploy/image/Dockerfile")
        namespace, external_host = values["namespace"], values["wfe"]["externalHost"]
        deployments = [o for o in objects if o["kind"] == "Deployment"]
        jobs = [o for o in objects if o["kind"] == "Job"]
        log_count = max([len(tomllib.loads(text).get("logs", [])) for o in objects if o["kind"] == "ConfigMap"
                         for key, text in (o.get("data") or {}).items() if key.endswith(".toml")] + [0])
        if log_count > len(addresses["ct_logs"]):
            raise ChartFault(f"{log_count} CT logs: this run has addresses for {len(addresses['ct_logs'])}")

        # The image: the binary copied, since others rebuild target/debug/quarry meanwhile.
        image_bin = work / "image" / entrypoint[0].lstrip("/")
        image_bin.parent.mkdir(parents=True)
        shutil.copy2(args.quarry, image_bin)
        os.chmod(image_bin, 0o755)
        quarry = str(image_bin)
        # The fixtures' own binary, outside the image: the production image carries no dev tool.
        dev_tools = work / "fixtures-bin" / "quarry-dev"
        dev_tools.parent.mkdir(parents=True)
        shutil.copy2(args.quarry_dev or args.quarry.with_name("quarry-dev"), dev_tools)
        os.chmod(dev_tools, 0o755)

        print("==> the operator's part: a fresh database, the internal CA, the ceremony, the HTTPS certificate")
        database, database_url = create_database(args.postgres_url)
        redis_url = fresh_redis_database(args.redis_url)
        services = [d["metadata"]["name"].removeprefix("quarry-") for d in deployments]
        secrets, root_pem, issuers_dir, web_ca = make_secrets(work, quarry, values, services, external_host,
                                                              database_url, redis_url)

        print("==> the fixture internet: CT logs, a DNSSEC-signed root zone, the subscriber's DNS; the cluster DNS")
        fixtures = start_fixtures(work, str(dev_tools), addresses, log_count, helpers)
        management(addresses["tld_dns"], "/add-caa", {"host": f"{SUBSCRIBER_ZONE}.", "policies": [
            {"tag": "issue", "value": tomllib.loads(
                next(o for o in objects if o["metadata"]["name"] == "quarry-config-env")["data"]["va.toml"])
             ["caa_identities"][0]}]})
        dns = ClusterDns(addresses["cluster_dns"])
        kubelet = Kubelet(work, objects, namespace, secrets, work / "image", entrypoint, fixtures, dns, helpers)

        next_ip = iter(f"{args.net}.{n}" for n in range(10, 255))
        for job in jobs:
            pod = Pod(f"{job['metadata']['name']}-0", next(next_ip), job["spec"]["template"], job)
            kubelet.add_pod(pod)
        pods = []
        for deployment in deployments:
            for index in range(deployment["spec"].get("replicas", 1)):
                pods.append(Pod(f"{deployment['metadata']['name']}-{index}", next(next_ip),
                                deployment["spec"]["template"], deployment))
        print(f"==> {len(jobs)} Job(s), {len(deployments)} Deployments, {len(pods)} pods (image user "
              f"{image_user}, ENTRYPOINT {entrypoint}); what the pods' files became:")
        for pod in pods:
            kubelet.add_pod(pod)
        for file, made in sorted(kubelet.translations.items()):
            print(f"    {file}: {'; '.join(sorted(made))}")

        for job in jobs:
            job_pod = next(p for p in kubelet.pods if p.owner is job)
            limit = min(job["spec"].get("activeDeadlineSeconds", 600), args.ready_timeout)
            print(f"==> Job {job['metadata']['name']} (pre-install hook): "
                  f"{shlex.join(job_pod.containers[-1].command)}")
            attempts = job["spec"].get("backoffLimit", 6) + 1
            for attempt in range(attempts):
                kubelet.pods = [job_pod]
                if not kubelet.run_until(lambda: job_pod.finished is not None, limit):
                    raise RuntimeError(f"Job {job['metadata']['name']} did not finish within {limit} s")
                if job_pod.finished == 0:
                    break
                print(f"    attempt {attempt + 1} failed (exit {job_pod.finished})")
                for container in job_pod.containers:
                    container.done, container.exit_code = False, None
            else:
                raise RuntimeError(f"Job {job['metadata']['name']} failed {attempts} times")

        kubelet.pods = pods
        start_balancers(str(dev_tools), kubelet.services, pods, addresses["balancer"], helpers, work / "logs")
        order = "all at once" if args.all_at_once else "each once the Services it addresses have a ready pod"
        print(f"==> starting {len(pods)} pods, {order}; waiting for every one to be ready "
              f"(at most {args.ready_timeout:.0f} s)")
        for pod in pods:
            if args.all_at_once:
                pod.needs = set()
            after = ", ".join(sorted(name.split(".")[0] for name in pod.needs))
            print(f"    {pod.name} {pod.ip}{' after ' + after if after else ''}")
            for container in pod.containers:
                kind = "sidecar" if container.sidecar else "container"
                print(f"      {kind} {container.name}: {shlex.join(container.command)}")
        ready_started = time.monotonic()
        if not kubelet.run_until(lambda: all(p.ready for p in pods), args.ready_timeout):
            unready = [p.name for p in pods if not p.ready]
            raise RuntimeError(f"not ready after {args.ready_timeout:.0f} s: {', '.join(unready)}")
        print(f"    all {len(pods)} pods ready in {time.monotonic() - ready_started:.1f} s: " + ", ".join(
            f"{p.name} {p.ready_at - ready_started:.0f} s" for p in sorted(pods, key=lambda p: p.ready_at)))

        print(f"==> certbot, dns-01, against https://{external_host}/directory (through the balancer)")
        client_started = time.monotonic()
        crl_host = urllib.parse.urlsplit(tomllib.loads(next(
            o for o in objects if o["metadata"]["name"] == "quarry-config-env")["data"]["ca.toml"])
            ["issuers"][0]["crl_url_prefix"]).hostname
        live = run_certbot(kubelet, work, external_host, crl_host, addresses, web_ca, args.client_timeout)
        print(f"    issued in {time.monotonic() - client_started:.1f} s")
        for line in verify_certificate(live, root_pem, issuers_dir, fixtures["log_keys"], addresses["balancer"],
                                       None if args.all_at_once else 30, kubelet):
            print(f"    ok: {line}")
        lanes = check_lanes(pods, ["quarry-wfe", "quarry-ra", "quarry-ca", "quarry-va"], 40)
        print(f"    ok: every replica in its lane ({'; '.join(lanes)})")
        restarts = [f"{c.label} ×{c.restarts}" for p in pods for c in p.containers if c.restarts]
        print(f"    container restarts: {', '.join(restarts) if restarts else 'none'}")
        if dns.refused:
            print(f"    names outside the cluster the pods asked for (refused): {', '.join(sorted(dns.refused))}")
        ok = True
    except (ChartFault, RuntimeError, subprocess.SubprocessError, OSError, KeyboardInterrupt, SystemExit) as error:
        print(f"\nFAILED: {type(error).__name__}: {error}", file=sys.stderr)
        report_failure(work, kubelet)
    finally:
        if kubelet is not None:
            kubelet.stop_all()
        else:
            stop_processes(helpers)
        if dns is not None:
            dns.close()
        if database is not None:
            drop_database(args.postgres_url, database)
        if args.keep or not ok:
            print(f"work directory kept: {work}", file=sys.stderr if not ok else sys.stdout)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"==> {'passed' if ok else 'failed'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
