#!/usr/bin/env python3
"""Checks for the AURA Helm chart (helm/aura).

Run through tests/helm/run.sh, which installs helm, kubernetes-validate and
PyYAML first. For every value set in tests/helm/values/*.yaml it runs
`helm lint --strict` and `helm template`, validates every rendered object with
kubernetes-validate (strict) against one Kubernetes version, and then checks
what schemas cannot see:

  * each Deployment runs `aura serve <role>` (only that) with a role the binary
    accepts ($AURA_BIN serve <role> --help must exit 0 when AURA_BIN is set);
  * container ports = configured gRPC/metrics ports = AURA_LISTEN/AURA_METRICS_LISTEN;
  * every probe targets the gRPC port (native grpc probes; TCP on the TLS gateway);
  * terminationGracePeriodSeconds > drain timeout + preStop sleep;
  * non-root, read-only root fs, no privilege escalation, capabilities dropped, /tmp emptyDir;
  * the bundled Redis URL names the Redis Service and its port, that Service selects the
    Redis StatefulSet, and Redis runs with --appendonly yes --appendfsync <value>;
    an external Redis URL is assembled with $(REDIS_PASSWORD) from the Secret;
  * AURA_SCHEDULER_URL / AURA_EVENTS_URL name Services that select the right pods on the
    gRPC port; every Service / PDB / HPA / Ingress / GRPCRoute / ServiceMonitor points at
    something that exists;
  * NetworkPolicies: only the gateway is open beyond the release, Redis only to AURA pods;
  * Secrets: TLS, API keys and LLM key are wired from the configured Secrets;
  * the config checksum changes exactly when a role's config changes;
  * invalid value sets (tests/helm/values/invalid/*.yaml, e.g. replicas: "two") are rejected
    with the error named in their "# expect-error:" line;
  * every value in values.yaml is declared in values.schema.json and listed in the README;
  * NOTES.txt renders the grpcurl commands;
  * the Dockerfile (parsed with Docker's own parser; Docker cannot run here) builds
    `aura` in release mode into a non-root image whose entrypoint, binary path and
    exposed ports match what the chart uses, and .dockerignore lets the sources in.

Exit status is non-zero when anything fails.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dockerfile
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError as KVValidationError

ROLES = ("gateway", "scheduler", "worker", "events")
AURA_COMMAND = ["/usr/local/bin/aura"]
NAMESPACE = "aura-test"
RELEASE = "aura"

# Minimal schemas for the CRD kinds the chart can render (kubernetes-validate
# only knows built-in kinds). They cover the fields the chart sets.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"},
                                       "matchNames": {"type": "array", "items": {"type": "string"}}}},
                    "selector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                       "matchExpressions": {"type": "array"}}},
                    "endpoints": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"}, "targetPort": {},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                "relabelings": {"type": "array", "items": {"type": "object"}},
                                "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                                "honorLabels": {"type": "boolean"},
                                "tlsConfig": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "parentRefs": {
                        "type": "array", "maxItems": 32,
                        "items": {"type": "object", "additionalProperties": False, "required": ["name"],
                                  "properties": {"group": {"type": "string"}, "kind": {"type": "string"},
                                                 "namespace": {"type": "string"}, "name": {"type": "string"},
                                                 "sectionName": {"type": "string"},
                                                 "port": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
                    "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string"}},
                    "rules": {
                        "type": "array", "maxItems": 16,
                        "items": {"type": "object", "additionalProperties": False,
                                  "properties": {
                                      "name": {"type": "string"},
                                      "matches": {"type": "array"}, "filters": {"type": "array"},
                                      "backendRefs": {
                                          "type": "array",
                                          "items": {"type": "object", "additionalProperties": False, "required": ["name"],
                                                    "properties": {"group": {"type": "string"}, "kind": {"type": "string"},
                                                                   "name": {"type": "string"}, "namespace": {"type": "string"},
                                                                   "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                                                   "weight": {"type": "integer", "minimum": 0},
                                                                   "filters": {"type": "array"}}}}}}},
                },
            },
        },
    },
}


# --------------------------------------------------------------------------- reporting

class Report:
    def __init__(self, verbose=False):
        self.passed = 0
        self.failed = []
        self.section = ""
        self.verbose = verbose

    def start(self, section):
        self.section = section
        print(f"--- {section}", flush=True)

    def check(self, cond, what):
        if cond:
            self.passed += 1
            if self.verbose:
                print(f"  ok   {what}")
        else:
            self.failed.append(f"[{self.section}] {what}")
            print(f"  FAIL {what}", flush=True)
        return cond

    def info(self, msg):
        print(f"  {msg}", flush=True)


# --------------------------------------------------------------------------- helpers

def deep_merge(base, override):
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def run(cmd, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def helm_template(helm, chart, values_file=None, sets=(), extra=()):
    cmd = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    if values_file:
        cmd += ["-f", str(values_file)]
    for s in sets:
        cmd += ["--set", s]
    cmd += list(extra)
    return run(cmd)


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def index(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload):
    return workload["spec"]["template"]["spec"]["containers"]


def port_of(addr):
    m = re.search(r":(\d+)$", addr)
    return int(m.group(1)) if m else None


def container_env(idx, container):
    """Resolve a container's environment: ConfigMap envFrom, then env (valueFrom shown as a marker)."""
    env = {}
    order = []
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref:
            cm = idx.get(("ConfigMap", ref["name"]))
            if cm:
                for k, v in (cm.get("data") or {}).items():
                    env[k] = v
                    order.append(k)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                env[e["name"]] = ("secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"])
            else:
                env[e["name"]] = ("valueFrom", json.dumps(vf))
        order.append(e["name"])
    return env, order


def workloads_selected(docs, selector):
    return [w for w in docs if w["kind"] in ("Deployment", "StatefulSet") and selects(selector, pod_labels(w))]


def service_port_target_ok(svc_port, workload):
    target = svc_port.get("targetPort", svc_port["port"])
    for c in containers(workload):
        for p in c.get("ports", []):
            if target == p.get("name") or target == p["containerPort"]:
                return p["containerPort"]
    return None


def url_service(url, cluster_domain):
    """http://name.ns.svc.domain:port -> (name, ns, port) or None."""
    m = re.match(r"^(?:https?|rediss?)://(?:[^@/]*@)?([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.%s:(\d+)$" % re.escape(cluster_domain), url)
    if not m:
        return None
    return m.group(1), m.group(2), int(m.group(3))


def resolve_ref(schema, root):
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = root["definitions"][name]
    return schema


# --------------------------------------------------------------------------- aura binary

def accepted_roles(report):
    """Roles the binary accepts. Without AURA_BIN: the four documented role names."""
    aura_bin = os.environ.get("AURA_BIN", "").strip()
    fallback = set(ROLES)
    if not aura_bin:
        report.info("AURA_BIN not set: roles checked against the documented list " + ", ".join(ROLES))
        return fallback, None
    path = shutil.which(aura_bin) or (aura_bin if os.path.exists(aura_bin) else None)
    if not report.check(path is not None and os.access(path, os.X_OK),
                        f"AURA_BIN={aura_bin} exists and is executable"):
        return fallback, None
    try:
        res = run([path, "serve", "--help"], timeout=30)
    except Exception as e:  # noqa: BLE001
        report.check(False, f"`{aura_bin} serve --help` runs ({e})")
        return fallback, None
    report.check(res.returncode == 0, f"`{aura_bin} serve --help` exits 0 (got {res.returncode}: {res.stderr.strip()[:200]})")
    text = res.stdout + res.stderr
    roles = set()
    m = re.search(r"possible values:\s*([^\]]+)\]", text)
    if m:
        roles = {r.strip() for r in m.group(1).split(",") if r.strip()}
    else:
        m = re.search(r"^Commands:\s*$(.*?)(?:^\S|\Z)", text, re.M | re.S)
        if m:
            roles = {line.split()[0] for line in m.group(1).splitlines() if line.strip()} - {"help"}
    if roles & fallback:
        report.info(f"roles parsed from `aura serve --help`: {', '.join(sorted(roles))}")
    else:
        report.info("could not parse a role list from `aura serve --help`; using the documented list")
        roles = fallback
    return roles, path


# --------------------------------------------------------------------------- checks on one rendering

def check_validation(report, docs, kube_version):
    counts = {}
    for d in docs:
        kind = d.get("kind")
        name = d.get("metadata", {}).get("name")
        key = (d.get("apiVersion"), kind)
        try:
            kubernetes_validate.validate(d, kube_version, strict=True)
            ok, why = True, ""
        except KVValidationError as e:
            ok, why = False, f"{'.'.join(str(p) for p in e.path)}: {e.message}"
        except SchemaNotFoundError:
            if key in CRD_SCHEMAS:
                try:
                    jsonschema.validate(d, CRD_SCHEMAS[key])
                    ok, why = True, ""
                except jsonschema.ValidationError as e:
                    ok, why = False, f"{'.'.join(str(p) for p in e.path)}: {e.message}"
            else:
                ok, why = False, f"no schema for {key} in Kubernetes {kube_version}"
        report.check(ok, f"{kind}/{name} validates against Kubernetes {kube_version} (strict){': ' + why if why else ''}")
        counts[kind] = counts.get(kind, 0) + 1
    report.info("validated: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


def check_deployments(report, docs, idx, vals, roles_ok):
    deployments = of_kind(docs, "Deployment")
    by_role = {}
    for d in deployments:
        by_role[d["metadata"]["labels"].get("app.kubernetes.io/component")] = d
    report.check(sorted(by_role) == sorted(ROLES), f"one Deployment per role (found {sorted(by_role)})")
    seen_roles = []
    for role in ROLES:
        d = by_role.get(role)
        if d is None:
            continue
        r = vals[role]
        name = d["metadata"]["name"]
        cs = containers(d)
        report.check(len(cs) == 1, f"{name}: exactly one container")
        c = cs[0]
        args = c.get("args", [])
        report.check(c.get("command") == AURA_COMMAND, f"{name}: command is {AURA_COMMAND}")
        report.check(len(args) == 2 and args[0] == "serve", f"{name}: args are exactly ['serve', <role>] (got {args})")
        report.check(len(args) == 2 and args[1] == role, f"{name}: role arg is '{role}' (got {args[1:]})")
        report.check(len(args) == 2 and args[1] in roles_ok, f"{name}: role '{args[-1] if args else ''}' is accepted by `aura serve`")
        if len(args) == 2:
            seen_roles.append(args[1])

        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        report.check(ports.get("grpc") == r["grpcPort"], f"{name}: container port grpc = {r['grpcPort']} (got {ports.get('grpc')})")
        report.check(ports.get("metrics") == r["metricsPort"], f"{name}: container port metrics = {r['metricsPort']} (got {ports.get('metrics')})")
        env, order = container_env(idx, c)
        listen = env.get("AURA_LISTEN", "")
        mlisten = env.get("AURA_METRICS_LISTEN", "")
        report.check(port_of(listen) == ports.get("grpc"), f"{name}: AURA_LISTEN {listen!r} uses the grpc container port")
        report.check(port_of(mlisten) == ports.get("metrics"), f"{name}: AURA_METRICS_LISTEN {mlisten!r} uses the metrics container port")
        report.check(env.get("AURA_DRAIN_TIMEOUT_SECS") == str(r["drainTimeoutSeconds"]),
                     f"{name}: AURA_DRAIN_TIMEOUT_SECS = {r['drainTimeoutSeconds']}")
        report.check(env.get("AURA_PARTITIONS") == str(vals["config"]["partitions"]), f"{name}: AURA_PARTITIONS from config.partitions")
        report.check(env.get("AURA_LOG") == (r.get("logLevel") or vals["config"]["logLevel"]), f"{name}: AURA_LOG from the role/config log level")
        otlp = vals["config"]["otlpEndpoint"]
        report.check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == (otlp or None), f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT follows config.otlpEndpoint")
        if role == "worker":
            report.check(env.get("AURA_WORKER_CONCURRENCY") == str(r["concurrency"]), f"{name}: AURA_WORKER_CONCURRENCY = {r['concurrency']}")
        for k, v in vals["config"]["extraEnv"].items():
            report.check(env.get(k) == str(v), f"{name}: config.extraEnv {k} is set")

        # probes
        tls_gateway = role == "gateway" and vals["tls"]["enabled"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = c.get(kind)
            if not r[kind]["enabled"]:
                report.check(p is None, f"{name}: {kind} disabled")
                continue
            if not report.check(p is not None, f"{name}: {kind} present"):
                continue
            if tls_gateway:
                tcp = p.get("tcpSocket", {})
                report.check(tcp.get("port") in ("grpc", ports.get("grpc")),
                             f"{name}: {kind} checks the gRPC port over TCP (kubelet gRPC probes cannot speak TLS)")
            else:
                g = p.get("grpc")
                report.check(g is not None, f"{name}: {kind} is a native gRPC probe")
                report.check(g is not None and g.get("port") == ports.get("grpc"),
                             f"{name}: {kind} points at the gRPC port {ports.get('grpc')} (got {g and g.get('port')})")
                report.check(g is not None and g.get("service", "") == r[kind]["grpcService"],
                             f"{name}: {kind} asks grpc.health.v1 for service {r[kind]['grpcService']!r}")

        # graceful shutdown
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        report.check(pre == r["preStopSleepSeconds"], f"{name}: preStop sleep = {r['preStopSleepSeconds']}s")
        report.check(grace > r["drainTimeoutSeconds"] + pre,
                     f"{name}: terminationGracePeriodSeconds {grace} > drain {r['drainTimeoutSeconds']}s + preStop {pre}s")

        # replicas / HPA
        hpa_on = r.get("autoscaling", {}).get("enabled", False)
        hpa = idx.get(("HorizontalPodAutoscaler", name))
        if hpa_on:
            report.check("replicas" not in d["spec"], f"{name}: no fixed replicas while the HPA owns scaling")
            report.check(hpa is not None, f"{name}: HPA exists")
            if hpa:
                ref = hpa["spec"]["scaleTargetRef"]
                report.check(ref["kind"] == "Deployment" and ref["name"] == name, f"{name}: HPA targets this Deployment")
                report.check(hpa["spec"]["minReplicas"] == r["autoscaling"]["minReplicas"]
                             and hpa["spec"]["maxReplicas"] == r["autoscaling"]["maxReplicas"], f"{name}: HPA min/max from values")
        else:
            report.check(d["spec"].get("replicas") == r["replicas"], f"{name}: replicas = {r['replicas']}")
            report.check(hpa is None, f"{name}: no HPA when autoscaling is off")

        # PDB
        pdb = idx.get(("PodDisruptionBudget", name))
        if r["pdb"]["enabled"]:
            report.check(pdb is not None and selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(d)),
                         f"{name}: PodDisruptionBudget selects its pods")
        else:
            report.check(pdb is None, f"{name}: no PDB when pdb.enabled is false")

        # security
        psc = spec.get("securityContext", {})
        csc = c.get("securityContext", {})
        report.check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        report.check(csc.get("readOnlyRootFilesystem") is True, f"{name}: read-only root filesystem")
        report.check(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        report.check("ALL" in (csc.get("capabilities", {}).get("drop") or []), f"{name}: capabilities drop ALL")
        report.check(csc.get("privileged") in (None, False), f"{name}: not privileged")
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        report.check(bool(tmp) and "emptyDir" in vols.get(tmp[0]["name"], {}), f"{name}: emptyDir mounted at /tmp")
        report.check(spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks false (no injected *_PORT env vars)")
        report.check(spec.get("serviceAccountName") == (
            (vals["serviceAccount"]["name"] or d["metadata"]["name"].rsplit("-", 1)[0]) if vals["serviceAccount"]["create"]
            else (vals["serviceAccount"]["name"] or "default")), f"{name}: uses the chart ServiceAccount")
        if vals["serviceAccount"]["create"]:
            report.check(("ServiceAccount", spec.get("serviceAccountName")) in idx, f"{name}: its ServiceAccount is rendered")

        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        report.check(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")) is not None, f"{name}: checksum/config annotation")

        # placement values reach the pod
        for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
            if r[key]:
                report.check(spec.get(key) == r[key], f"{name}: {key} from values")

        # Redis URL and secrets
        check_redis_env(report, docs, idx, vals, name, env, order)
        check_internal_urls(report, docs, idx, vals, name, env)
        if role == "gateway":
            check_gateway_secrets(report, idx, vals, d, c, env)
        if role == "worker":
            llm = env.get("AURA_LLM_API_KEY")
            if vals["llm"]["existingSecret"]:
                report.check(llm == ("secret", vals["llm"]["existingSecret"], vals["llm"]["existingSecretKey"]),
                             f"{name}: AURA_LLM_API_KEY from existing Secret {vals['llm']['existingSecret']}")
            elif vals["llm"]["apiKey"]:
                ok = isinstance(llm, tuple) and llm[0] == "secret" and ("Secret", llm[1]) in idx \
                    and llm[2] in (idx[("Secret", llm[1])].get("data") or {})
                report.check(ok, f"{name}: AURA_LLM_API_KEY from the chart-managed Secret")
            else:
                report.check(llm is None, f"{name}: no AURA_LLM_API_KEY without an LLM key")
    return seen_roles


def check_redis_env(report, docs, idx, vals, name, env, order):
    url = env.get("AURA_REDIS_URL")
    if not report.check(isinstance(url, str) and url, f"{name}: AURA_REDIS_URL is set"):
        return
    uses_pw = "$(REDIS_PASSWORD)" in url
    if uses_pw:
        pw = env.get("REDIS_PASSWORD")
        report.check(isinstance(pw, tuple) and pw[0] == "secret", f"{name}: REDIS_PASSWORD comes from a Secret")
        report.check("REDIS_PASSWORD" in order and order.index("REDIS_PASSWORD") < order.index("AURA_REDIS_URL"),
                     f"{name}: REDIS_PASSWORD is defined before AURA_REDIS_URL (needed for $(VAR) expansion)")
    for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", url):
        report.check(ref == "REDIS_PASSWORD", f"{name}: AURA_REDIS_URL references only $(REDIS_PASSWORD) (found $({ref}))")

    domain = vals["serviceDiscovery"]["clusterDomain"]
    rv = vals["redis"]
    if rv["enabled"]:
        m = re.match(r"^redis://(:\$\(REDIS_PASSWORD\)@)?([^:/@]+):(\d+)$", url)
        if not report.check(m is not None, f"{name}: bundled AURA_REDIS_URL has the form redis://[:$(REDIS_PASSWORD)@]host:port ({url})"):
            return
        report.check(bool(m.group(1)) == rv["auth"]["enabled"], f"{name}: Redis URL carries the password iff redis.auth.enabled")
        parsed = url_service(url, domain)
        if not report.check(parsed is not None, f"{name}: Redis host is <service>.<namespace>.svc.{domain}"):
            return
        svc_name, ns, port = parsed
        report.check(ns == NAMESPACE, f"{name}: Redis host is in the release namespace")
        svc = idx.get(("Service", svc_name))
        if not report.check(svc is not None, f"{name}: Redis URL host names a rendered Service ({svc_name})"):
            return
        sports = [p for p in svc["spec"]["ports"] if p["port"] == port]
        report.check(bool(sports), f"{name}: Redis URL port {port} is a port of Service {svc_name}")
        sts = workloads_selected(docs, svc["spec"]["selector"])
        report.check(len(sts) == 1 and sts[0]["kind"] == "StatefulSet",
                     f"{name}: Service {svc_name} selects exactly the Redis StatefulSet")
        if sports and len(sts) == 1:
            report.check(service_port_target_ok(sports[0], sts[0]) is not None, f"{name}: Redis Service port reaches the Redis container port")
        if uses_pw:
            pw = env.get("REDIS_PASSWORD")
            want = rv["auth"]["existingSecret"] or None
            if want:
                report.check(pw == ("secret", want, rv["auth"]["existingSecretKey"]), f"{name}: Redis password from existing Secret {want}")
            else:
                report.check(isinstance(pw, tuple) and ("Secret", pw[1]) in idx
                             and pw[2] in (idx[("Secret", pw[1])].get("data") or {}),
                             f"{name}: Redis password from the chart-managed Secret")
    else:
        ext = rv["external"]
        parts = []
        for raw in ext["url"].split(","):
            u = raw.strip()
            if not u:
                continue
            if ext["existingSecret"] or ext["username"]:
                scheme, rest = u.split("://", 1)
                cred = f"{ext['username']}:$(REDIS_PASSWORD)" if ext["existingSecret"] else ext["username"]
                u = f"{scheme}://{cred}@{rest}"
            parts.append(u)
        expect = ",".join(parts)
        report.check(url == expect, f"{name}: external AURA_REDIS_URL is {expect!r} (got {url!r})")
        if ext["existingSecret"]:
            report.check(env.get("REDIS_PASSWORD") == ("secret", ext["existingSecret"], ext["existingSecretKey"]),
                         f"{name}: external Redis password from Secret {ext['existingSecret']}/{ext['existingSecretKey']}")
        else:
            report.check("REDIS_PASSWORD" not in env, f"{name}: no REDIS_PASSWORD without redis.external.existingSecret")


def check_internal_urls(report, docs, idx, vals, name, env):
    domain = vals["serviceDiscovery"]["clusterDomain"]
    headless = vals["serviceDiscovery"]["mode"] == "headless"
    for var, target in (("AURA_SCHEDULER_URL", "scheduler"), ("AURA_EVENTS_URL", "events")):
        urls = [u.strip() for u in str(env.get(var, "")).split(",") if u.strip()]
        if not report.check(bool(urls), f"{name}: {var} is set"):
            continue
        for u in urls:
            parsed = url_service(u, domain)
            if not report.check(parsed is not None and u.startswith("http://"), f"{name}: {var} {u!r} is http://<svc>.<ns>.svc.{domain}:<port>"):
                continue
            svc_name, ns, port = parsed
            svc = idx.get(("Service", svc_name))
            if not report.check(svc is not None and ns == NAMESPACE, f"{name}: {var} names rendered Service {svc_name} in {NAMESPACE}"):
                continue
            report.check((svc["spec"].get("clusterIP") == "None") == headless,
                         f"{name}: {var} uses a {'headless' if headless else 'ClusterIP'} Service (serviceDiscovery.mode)")
            sel = workloads_selected(docs, svc["spec"]["selector"])
            ok_sel = len(sel) == 1 and pod_labels(sel[0]).get("app.kubernetes.io/component") == target
            report.check(ok_sel, f"{name}: {var} Service selects the {target} pods")
            sp = [p for p in svc["spec"]["ports"] if p["port"] == port]
            cport = service_port_target_ok(sp[0], sel[0]) if sp and ok_sel else None
            report.check(cport == vals[target]["grpcPort"], f"{name}: {var} port {port} reaches the {target} gRPC port {vals[target]['grpcPort']}")


def check_gateway_secrets(report, idx, vals, d, c, env):
    name = d["metadata"]["name"]
    spec = d["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}

    def file_source(path_env):
        """(secretName, key) of the file an env var points at, via the volume mounts."""
        path = env.get(path_env)
        if not isinstance(path, str):
            return None
        for vname, m in mounts.items():
            mp = m["mountPath"].rstrip("/") + "/"
            if path.startswith(mp):
                rel = path[len(mp):]
                sec = vols.get(vname, {}).get("secret")
                if not sec:
                    return None
                items = sec.get("items")
                if items:
                    for it in items:
                        if it["path"] == rel:
                            return sec["secretName"], it["key"]
                    return None
                return sec["secretName"], rel
        return None

    auth = vals["auth"]
    if auth["enabled"]:
        report.check("AURA_INSECURE_NO_AUTH" not in env, f"{name}: auth on: AURA_INSECURE_NO_AUTH not set")
        src = file_source("AURA_API_KEYS_FILE")
        if auth["existingSecret"]:
            report.check(src == (auth["existingSecret"], auth["existingSecretKey"]),
                         f"{name}: AURA_API_KEYS_FILE is key {auth['existingSecretKey']} of existing Secret {auth['existingSecret']} (got {src})")
        else:
            sec = idx.get(("Secret", src[0])) if src else None
            ok = sec is not None and src[1] in (sec.get("data") or {})
            report.check(ok, f"{name}: AURA_API_KEYS_FILE is a key of the chart-managed API-key Secret (got {src})")
            if ok and auth["apiKeys"]:
                import base64
                content = base64.b64decode(sec["data"][src[1]]).decode()
                want = "".join(f"{k['tenant']}:{k['key']}\n" for k in auth["apiKeys"])
                report.check(content == want, f"{name}: API-key file holds one tenant:key line per auth.apiKeys entry")
    else:
        report.check(env.get("AURA_INSECURE_NO_AUTH") == "true", f"{name}: auth off sets AURA_INSECURE_NO_AUTH=true")
        report.check("AURA_API_KEYS_FILE" not in env, f"{name}: auth off: no AURA_API_KEYS_FILE")

    if vals["tls"]["enabled"]:
        sn = vals["tls"]["secretName"]
        report.check(file_source("AURA_TLS_CERT") == (sn, "tls.crt"), f"{name}: AURA_TLS_CERT is tls.crt of Secret {sn}")
        report.check(file_source("AURA_TLS_KEY") == (sn, "tls.key"), f"{name}: AURA_TLS_KEY is tls.key of Secret {sn}")
    else:
        report.check("AURA_TLS_CERT" not in env and "AURA_TLS_KEY" not in env, f"{name}: no TLS env without tls.enabled")


def check_services(report, docs, idx, vals):
    for svc in of_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        sel = workloads_selected(docs, svc["spec"].get("selector", {}))
        if not report.check(len(sel) == 1, f"Service {name} selects exactly one workload ({[w['metadata']['name'] for w in sel]})"):
            continue
        for p in svc["spec"]["ports"]:
            report.check(service_port_target_ok(p, sel[0]) is not None,
                         f"Service {name} port {p.get('name')} targets a container port of {sel[0]['metadata']['name']}")
    gw = [s for s in of_kind(docs, "Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
          and s["spec"].get("clusterIP") != "None"]
    if report.check(len(gw) == 1, "one non-headless gateway Service"):
        g = gw[0]
        want = vals["gateway"]["service"]
        report.check(g["spec"]["type"] == want["type"], f"gateway Service type {want['type']}")
        report.check([p["port"] for p in g["spec"]["ports"]] == [want["port"]], "gateway Service exposes only the gRPC port")
        if want["nodePort"] and want["type"] != "ClusterIP":
            report.check(g["spec"]["ports"][0].get("nodePort") == want["nodePort"], "gateway nodePort from values")
    for s in of_kind(docs, "Service"):
        comp = s["metadata"]["labels"].get("app.kubernetes.io/component")
        if comp in ("scheduler", "worker", "events", "redis"):
            report.check(s["spec"].get("type", "ClusterIP") == "ClusterIP", f"internal Service {s['metadata']['name']} is ClusterIP")
    for role in ROLES:
        report.check(any(s["spec"].get("clusterIP") == "None" and s["metadata"]["labels"].get("app.kubernetes.io/component") == role
                         for s in of_kind(docs, "Service")), f"headless Service for {role}")


def check_redis(report, docs, idx, vals):
    rv = vals["redis"]
    sts = of_kind(docs, "StatefulSet")
    if not rv["enabled"]:
        report.check(not sts, "external Redis: no bundled Redis StatefulSet")
        report.check(not [s for s in of_kind(docs, "Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"],
                     "external Redis: no Redis Service")
        return
    if not report.check(len(sts) == 1, "bundled Redis: one StatefulSet"):
        return
    s = sts[0]
    report.check(s["spec"]["replicas"] == 1, "bundled Redis is single-node")
    c = containers(s)[0]
    report.check(c["image"] == f"{rv['image']['repository']}:{rv['image']['tag']}", f"Redis image {rv['image']['repository']}:{rv['image']['tag']}")
    args = c.get("args", [])
    pairs = list(zip(args, args[1:]))
    report.check(("--appendonly", "yes") in pairs, "Redis runs with --appendonly yes")
    report.check(("--appendfsync", rv["appendfsync"]) in pairs, f"Redis runs with --appendfsync {rv['appendfsync']}")
    report.check(("--maxmemory-policy", "noeviction") in pairs, "Redis never evicts queue keys (noeviction)")
    report.check(("--dir", "/data") in pairs and any(m["mountPath"] == "/data" for m in c.get("volumeMounts", [])), "Redis data dir /data is mounted")
    if rv["auth"]["enabled"]:
        report.check(("--requirepass", "$(REDIS_PASSWORD)") in pairs, "Redis requires the password from its Secret")
        env, _ = container_env(idx, c)
        want = rv["auth"]["existingSecret"]
        if want:
            report.check(env.get("REDIS_PASSWORD") == ("secret", want, rv["auth"]["existingSecretKey"]), "Redis password from the existing Secret")
        else:
            pw = env.get("REDIS_PASSWORD")
            report.check(isinstance(pw, tuple) and ("Secret", pw[1]) in idx, "Redis password from the chart-managed Secret")
    else:
        report.check("--requirepass" not in args, "redis.auth.enabled=false: no password")
    vct = s["spec"].get("volumeClaimTemplates", [])
    if rv["persistence"]["enabled"]:
        report.check(len(vct) == 1 and vct[0]["spec"]["resources"]["requests"]["storage"] == rv["persistence"]["size"],
                     f"Redis PVC template of {rv['persistence']['size']}")
        sc = rv["persistence"]["storageClass"]
        if sc:
            report.check(vct and vct[0]["spec"].get("storageClassName") == ("" if sc == "-" else sc), "Redis PVC storageClass from values")
    else:
        report.check(not vct, "redis.persistence.enabled=false: no PVC")
    psc = s["spec"]["template"]["spec"].get("securityContext", {})
    csc = c.get("securityContext", {})
    report.check(psc.get("runAsNonRoot") is True and csc.get("readOnlyRootFilesystem") is True
                 and csc.get("allowPrivilegeEscalation") is False and "ALL" in csc.get("capabilities", {}).get("drop", []),
                 "Redis runs non-root, read-only root fs, no escalation, caps dropped")
    headless = idx.get(("Service", s["spec"]["serviceName"]))
    report.check(headless is not None and headless["spec"].get("clusterIP") == "None", "Redis StatefulSet serviceName is a headless Service")


def check_network_policies(report, docs, idx, vals):
    nps = of_kind(docs, "NetworkPolicy")
    if not vals["networkPolicy"]["enabled"]:
        report.check(not nps, "networkPolicy.enabled=false: no NetworkPolicy")
        return
    inst = {"app.kubernetes.io/instance": RELEASE}

    def is_release_aura_peer(peer):
        ps = peer.get("podSelector")
        if not ps or set(peer) != {"podSelector"}:
            return False
        if not all(ps.get("matchLabels", {}).get(k) == v for k, v in inst.items()):
            return False
        exprs = ps.get("matchExpressions", [])
        return any(e["key"] == "app.kubernetes.io/component" and e["operator"] == "In" and set(e["values"]) <= set(ROLES)
                   for e in exprs)

    workloads = [w for w in docs if w["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        labels = pod_labels(w)
        mine = [n for n in nps if selects(n["spec"]["podSelector"].get("matchLabels", {}), labels)]
        report.check(len(mine) >= 1, f"{w['metadata']['name']}: pods are covered by a NetworkPolicy")
    allowed_extra = {"gateway": vals["networkPolicy"]["gatewayFrom"]}
    for n in nps:
        name = n["metadata"]["name"]
        comp = n["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        report.check("Ingress" in n["spec"].get("policyTypes", []), f"NetworkPolicy {name} restricts ingress")
        for rule in n["spec"].get("ingress", []):
            ports = [p.get("port") for p in rule.get("ports", [])]
            peers = rule.get("from")
            report.check(bool(ports), f"NetworkPolicy {name}: every rule names its ports ({ports})")
            if comp == "gateway" and ports == ["grpc"]:
                want = allowed_extra["gateway"]
                report.check((peers or []) == want, f"NetworkPolicy {name}: gateway gRPC open to networkPolicy.gatewayFrom (or anyone when empty)")
                continue
            if not report.check(bool(peers), f"NetworkPolicy {name}: rule on {ports} has a 'from' list (not open to all)"):
                continue
            if comp == "redis":
                report.check(all(is_release_aura_peer(p) for p in peers), f"NetworkPolicy {name}: Redis only from this release's AURA pods")
                continue
            extra = vals["networkPolicy"]["metricsFrom"] if ports == ["metrics"] else vals["networkPolicy"]["internalFrom"]
            outside = [p for p in peers if not is_release_aura_peer(p)]
            report.check(outside == list(extra), f"NetworkPolicy {name}: {ports} reachable only from the release (+ configured peers)")


def check_extras(report, docs, idx, vals):
    # ServiceMonitor
    sms = of_kind(docs, "ServiceMonitor")
    if vals["metrics"]["serviceMonitor"]["enabled"]:
        if report.check(len(sms) == 1, "ServiceMonitor rendered"):
            sm = sms[0]
            sel = sm["spec"]["selector"]["matchLabels"]
            svcs = [s for s in of_kind(docs, "Service") if selects(sel, s["metadata"].get("labels", {}))]
            roles = sorted(s["metadata"]["labels"].get("app.kubernetes.io/component") for s in svcs)
            report.check(roles == sorted(ROLES), f"ServiceMonitor selects one Service per role (got {roles})")
            for ep in sm["spec"]["endpoints"]:
                report.check(all(any(p.get("name") == ep["port"] for p in s["spec"]["ports"]) for s in svcs),
                             f"ServiceMonitor endpoint port '{ep['port']}' exists on every selected Service")
                report.check(ep.get("path") == "/metrics", "ServiceMonitor scrapes /metrics")
            for k, v in vals["metrics"]["serviceMonitor"]["labels"].items():
                report.check(sm["metadata"]["labels"].get(k) == v, f"ServiceMonitor label {k}")
    else:
        report.check(not sms, "no ServiceMonitor unless enabled")
    if vals["metrics"]["podAnnotations"]:
        for d in of_kind(docs, "Deployment"):
            ann = d["spec"]["template"]["metadata"].get("annotations", {})
            port = {p["name"]: p["containerPort"] for p in containers(d)[0]["ports"]}["metrics"]
            report.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port),
                         f"{d['metadata']['name']}: prometheus.io annotations name the metrics port")

    # Ingress
    ings = of_kind(docs, "Ingress")
    if vals["gateway"]["ingress"]["enabled"]:
        if report.check(len(ings) == 1, "Ingress rendered"):
            ing = ings[0]
            ann = ing["metadata"].get("annotations", {})
            report.check(ann.get("nginx.ingress.kubernetes.io/backend-protocol") in ("GRPC", "GRPCS"), "Ingress tells nginx the backend speaks gRPC")
            for rule in ing["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    b = p["backend"]["service"]
                    svc = idx.get(("Service", b["name"]))
                    report.check(svc is not None and any(sp.get("name") == b["port"].get("name") for sp in svc["spec"]["ports"]),
                                 f"Ingress backend {b['name']}:{b['port']} exists")
    else:
        report.check(not ings, "no Ingress unless enabled")

    # GRPCRoute
    routes = of_kind(docs, "GRPCRoute")
    if vals["gateway"]["grpcRoute"]["enabled"]:
        if report.check(len(routes) == 1, "GRPCRoute rendered"):
            for rule in routes[0]["spec"]["rules"]:
                for b in rule["backendRefs"]:
                    svc = idx.get(("Service", b["name"]))
                    report.check(svc is not None and any(sp["port"] == b["port"] for sp in svc["spec"]["ports"]),
                                 f"GRPCRoute backend {b['name']}:{b['port']} exists")
    else:
        report.check(not routes, "no GRPCRoute unless enabled")

    # no plaintext secret material outside Secrets
    for d in docs:
        if d["kind"] in ("ConfigMap", "Deployment", "StatefulSet"):
            text = json.dumps(d)
            for secret_val in [vals["llm"]["apiKey"], vals["redis"]["auth"]["password"]] + [k["key"] for k in vals["auth"]["apiKeys"]]:
                if secret_val:
                    report.check(secret_val not in text, f"{d['kind']}/{d['metadata']['name']}: no secret value in plain text")


# --------------------------------------------------------------------------- whole-chart checks

def value_paths(values, schema, root, prefix=""):
    """(path, closed_parent) for every key of values.yaml, following the schema."""
    out = []
    s = resolve_ref(schema, root)
    props = s.get("properties", {}) if isinstance(s, dict) else {}
    closed = isinstance(s, dict) and s.get("additionalProperties") is False
    for k, v in values.items():
        path = f"{prefix}{k}"
        child = props.get(k)
        cs = resolve_ref(child, root) if child is not None else None
        group = isinstance(v, dict) and isinstance(cs, dict) and cs.get("additionalProperties") is False
        # a group (closed object) is documented through its keys
        out.append((path, closed and not group, child is not None))
        if group:
            out.extend(value_paths(v, cs, root, path + "."))
    return out


def check_docs_and_schema(report, chart):
    values = yaml.safe_load((chart / "values.yaml").read_text())
    schema = json.loads((chart / "values.schema.json").read_text())
    readme = (chart / "README.md").read_text()
    paths = value_paths(values, schema, schema)
    undocumented = [p for p, closed, _ in paths if closed and f"`{p}`" not in readme]
    undeclared = [p for p, _, known in paths if not known]
    report.check(not undeclared, f"every values.yaml key is declared in values.schema.json (missing: {undeclared[:10]})")
    report.check(not undocumented, f"README.md lists every value ({len(paths)} keys; missing: {undocumented[:10]})")
    values_section = readme.split("\n## Values", 1)[-1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\|\s*`([^`]+)`", values_section, re.M))
    known = {p for p, _, _ in paths}
    report.check(bool(listed), "README.md has a values table")
    stale = sorted(p for p in listed if p not in known)
    report.check(not stale, f"README.md lists no value that values.yaml lacks (stale: {stale[:10]})")
    jsonschema.Draft7Validator.check_schema(schema)
    report.check(True, "values.schema.json is a valid draft-07 schema")
    report.check(schema.get("additionalProperties") is False, "values.schema.json rejects unknown top-level keys")


def check_checksums(report, helm, chart):
    def checksums(sets):
        res = helm_template(helm, chart, sets=sets)
        if res.returncode != 0:
            report.check(False, f"helm template {sets} succeeds: {res.stderr.strip()[:300]}")
            return {}
        return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in load_docs(res.stdout) if d["kind"] == "Deployment"}
    base = checksums([])
    same = checksums(["scheduler.replicas=7"])
    log = checksums(["config.logLevel=debug"])
    worker = checksums(["worker.concurrency=99"])
    if not (base and same and log and worker):
        return
    report.check(base == checksums([]), "config checksum is deterministic")
    report.check(base == same, "a non-config change (replicas) does not roll pods")
    report.check(all(base[r] != log[r] for r in ROLES), "config.logLevel change rolls every role (checksum/config changes)")
    report.check(base["worker"] != worker["worker"] and all(base[r] == worker[r] for r in ROLES if r != "worker"),
                 "worker.concurrency change rolls only the worker")


def check_notes(report, helm, chart, values_file, vals):
    res = run([helm, "install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client", "-f", str(values_file)])
    if not report.check(res.returncode == 0, f"helm install --dry-run=client renders ({res.stderr.strip()[:300]})"):
        return
    notes = res.stdout.split("NOTES:", 1)[-1] if "NOTES:" in res.stdout else ""
    report.check("grpcurl" in notes and "grpc.health.v1.Health/Check" in notes and " list" in notes,
                 "NOTES.txt shows grpcurl commands (health check, list)")
    if vals["tls"]["enabled"]:
        flag = "-insecure "
    elif vals["gateway"]["ingress"]["enabled"] or vals["gateway"]["grpcRoute"]["enabled"]:
        flag = ""  # TLS terminated by the Ingress / Gateway
    else:
        flag = "-plaintext "
    report.check(f"grpcurl {flag}-H" in notes, f"NOTES.txt grpcurl uses {flag.strip() or 'TLS (no flag)'}")
    if vals["auth"]["enabled"]:
        report.check("authorization: Bearer" in notes, "NOTES.txt shows how to pass the API key")


def check_invalid(report, helm, chart, inv_dir):
    old = helm_template(helm, chart, extra=["--kube-version", "1.29.0"])
    report.check(old.returncode != 0 and "kubeVersion" in old.stderr,
                 "Kubernetes 1.29 is refused (chart needs 1.30+ for the preStop sleep hook)")
    ok = helm_template(helm, chart, extra=["--kube-version", "1.30.0"])
    report.check(ok.returncode == 0, "Kubernetes 1.30 is accepted")
    files = sorted(inv_dir.glob("*.yaml"))
    report.check(any("replicas" in f.read_text() and '"two"' in f.read_text() for f in files),
                 'an invalid value set with replicas: "two" exists')
    for f in files:
        m = re.search(r"^#\s*expect-error:\s*(.+?)\s*$", f.read_text(), re.M)
        if not report.check(m is not None, f"{f.name}: has an '# expect-error:' line"):
            continue
        res = helm_template(helm, chart, f)
        report.check(res.returncode != 0, f"{f.name}: helm template fails")
        report.check(m.group(1) in res.stderr, f"{f.name}: error mentions {m.group(1)!r} (got: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else '<none>'})")
        if re.search(r"^#\s*rejected-by:\s*template", f.read_text(), re.M):
            continue  # `helm lint` deliberately ignores template fail(); install/template still fail
        lint = run([helm, "lint", str(chart), "-f", str(f)])
        report.check(lint.returncode != 0, f"{f.name}: helm lint fails (schema)")


def check_dockerfile(report, root, defaults):
    path = root / "Dockerfile"
    if not report.check(path.exists(), "Dockerfile exists"):
        return
    try:
        cmds = dockerfile.parse_file(str(path))
    except Exception as e:  # noqa: BLE001
        report.check(False, f"Dockerfile parses ({e})")
        return
    report.check(True, "Dockerfile parses with Docker's parser")
    args = {}
    for c in cmds:
        if c.cmd == "ARG" and "=" in c.value[0]:
            k, v = c.value[0].split("=", 1)
            args.setdefault(k, v)
    stages, cur = [], None
    for c in cmds:
        if c.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), c.value[0])
            cur = {"image": image, "name": c.value[2] if len(c.value) > 2 else None, "cmds": []}
            stages.append(cur)
        elif cur is not None:
            cur["cmds"].append(c)
    if not report.check(len(stages) >= 2, f"Dockerfile is multi-stage ({len(stages)} stages)"):
        return
    build, final = stages[0], stages[-1]
    report.check(build["image"].startswith("rust:"), f"builder stage uses a rust image ({build['image']})")
    runs = " ".join(" ".join(c.value) for c in build["cmds"] if c.cmd == "RUN")
    report.check(re.search(r"cargo build\b[^&;|]*--release", runs) is not None and "--bin aura" in runs,
                 "builder runs `cargo build --release --bin aura`")
    report.check("distroless/cc" in final["image"] or "bookworm-slim" in final["image"],
                 f"runtime stage is a minimal glibc image ({final['image']})")
    fc = final["cmds"]
    copies = [c for c in fc if c.cmd == "COPY" and any(f.startswith("--from=") for f in c.flags)]
    report.check(any(c.value[-1] == AURA_COMMAND[0] for c in copies), f"runtime stage copies the binary to {AURA_COMMAND[0]}")
    users = [c.value[0] for c in fc if c.cmd == "USER"]
    uid = users[-1].split(":")[0] if users else "0"
    report.check(uid.isdigit() and int(uid) != 0, f"runtime stage runs as a numeric non-root user (USER {users[-1] if users else 'unset'})")
    psc_uid = defaults["podSecurityContext"].get("runAsUser")
    report.check(psc_uid is None or str(psc_uid) == uid, f"chart podSecurityContext.runAsUser {psc_uid} matches the image user {uid}")
    ep = [c.value for c in fc if c.cmd == "ENTRYPOINT"]
    report.check(bool(ep) and list(ep[-1]) == AURA_COMMAND, f"ENTRYPOINT is {AURA_COMMAND} like the chart's command")
    exposed = {int(p.split("/")[0]) for c in fc if c.cmd == "EXPOSE" for p in c.value}
    wanted = {defaults[r][k] for r in ROLES for k in ("grpcPort", "metricsPort")}
    report.check(wanted <= exposed, f"EXPOSE lists every default gRPC/metrics port (missing {sorted(wanted - exposed)})")

    ign = root / ".dockerignore"
    if report.check(ign.exists(), ".dockerignore exists"):
        lines = [l.strip() for l in ign.read_text().splitlines() if l.strip() and not l.startswith("#")]
        if "*" in lines:
            needed = ["Cargo.toml", "Cargo.lock", "build.rs", "src/", "proto/", "crates/", "services/", "tests/"]
            missing = [n for n in needed if f"!{n}" not in lines and f"!{n.rstrip('/')}" not in lines]
            report.check(not missing, f".dockerignore allow-list lets the build inputs in (missing {missing})")
        report.check(any(l.rstrip("/") in ("target", "**/target", "/target") for l in lines) or "*" in lines,
                     ".dockerignore keeps target/ out of the build context")


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", default="helm/aura")
    ap.add_argument("--values-dir", default="tests/helm/values")
    ap.add_argument("--repo-root", default=".", help="where Dockerfile and .dockerignore live")
    ap.add_argument("--kube-version", default=os.environ.get("AURA_KUBE_VERSION", "1.35.0"))
    ap.add_argument("--out", default=None, help="keep rendered manifests here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    t0 = time.time()
    report = Report(verbose=args.verbose)
    chart = Path(args.chart)
    vdir = Path(args.values_dir)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="aura-helm-"))
    out.mkdir(parents=True, exist_ok=True)
    defaults = yaml.safe_load((chart / "values.yaml").read_text())

    helm_ver = run([args.helm, "version", "--short"]).stdout.strip()
    print(f"helm {helm_ver}, kubernetes-validate {kubernetes_validate.__version__}, Kubernetes {args.kube_version}, rendered into {out}")

    report.start("aura binary roles")
    roles_ok, aura_bin = accepted_roles(report)

    report.start("chart: schema and README")
    check_docs_and_schema(report, chart)

    report.start("Dockerfile and .dockerignore")
    check_dockerfile(report, Path(args.repo_root), defaults)

    value_files = sorted(vdir.glob("*.yaml"))
    report.start("value sets")
    report.check(len(value_files) >= 4, f"at least four value sets ({len(value_files)} found)")

    used_roles = set()
    for vf in value_files:
        label = vf.stem
        report.start(f"{label}: helm lint --strict")
        lint = run([args.helm, "lint", "--strict", str(chart), "-f", str(vf)])
        report.check(lint.returncode == 0, f"helm lint --strict -f {vf.name}" + ("" if lint.returncode == 0 else f"\n{lint.stdout}{lint.stderr}"))

        report.start(f"{label}: helm template")
        res = helm_template(args.helm, chart, vf)
        if not report.check(res.returncode == 0, f"helm template -f {vf.name}" + ("" if res.returncode == 0 else f": {res.stderr.strip()}")):
            continue
        (out / f"{label}.yaml").write_text(res.stdout)
        docs = load_docs(res.stdout)
        idx = index(docs)
        vals = deep_merge(defaults, yaml.safe_load(vf.read_text()) or {})
        report.check(len(idx) == len(docs), "no two rendered objects share kind and name")
        report.check(all(d["metadata"].get("namespace") in (NAMESPACE, vals["metrics"]["serviceMonitor"]["namespace"] or NAMESPACE)
                         for d in docs), "every object is in the release namespace")

        report.start(f"{label}: kubernetes-validate")
        check_validation(report, docs, args.kube_version)
        report.start(f"{label}: semantics")
        used_roles.update(check_deployments(report, docs, idx, vals, roles_ok))
        check_services(report, docs, idx, vals)
        check_redis(report, docs, idx, vals)
        check_network_policies(report, docs, idx, vals)
        check_extras(report, docs, idx, vals)
        report.start(f"{label}: NOTES.txt")
        check_notes(report, args.helm, chart, vf, vals)

    if aura_bin:
        report.start("aura binary: serve <role> --help")
        for role in sorted(used_roles):
            try:
                r = run([aura_bin, "serve", role, "--help"], timeout=30)
                report.check(r.returncode == 0, f"`{aura_bin} serve {role} --help` exits 0 (got {r.returncode}: {(r.stderr or r.stdout).strip()[:200]})")
            except Exception as e:  # noqa: BLE001
                report.check(False, f"`{aura_bin} serve {role} --help` runs ({e})")

    report.start("config checksum")
    check_checksums(report, args.helm, chart)

    report.start("invalid value sets are rejected")
    check_invalid(report, args.helm, chart, vdir / "invalid")

    dt = time.time() - t0
    print()
    print("=" * 70)
    if report.failed:
        print(f"FAILED checks ({len(report.failed)}):")
        for f in report.failed:
            print(f"  - {f.splitlines()[0]}")
    print(f"helm chart checks: {len(value_files)} value sets, Kubernetes {args.kube_version}, {dt:.1f}s")
    print(f"{report.passed} passed, {len(report.failed)} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
