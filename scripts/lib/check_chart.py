#!/usr/bin/env python3
"""The checks of scripts/check-chart.sh: the rendered Helm chart against the
real service binaries, with no cluster.

  check_chart.py static  <render.yaml> <label>
      (a) every variable a service Deployment sets is one the service reads
          (`<bin> --list-env`), or a helper only used inside another value as
          $(NAME) (Kubernetes dependent variables);
      (c) every Service's targetPort is a port of the containers it selects;
          every ServiceMonitor endpoint port is a port of the Service it selects;
      (d) every Ingress path reaches real routes: each path has at least one
          route of its backend's OpenAPI document (docs/openapi/<svc>.json)
          under it (prefix) or matching it (regex), and every /api/ and /ws/
          route of the exposed services is routed (longest match, as
          ingress-nginx orders them) to the service that serves it.
  check_chart.py probes  <render.yaml> <label>
      (b) starts each service binary with exactly its Deployment's environment
          (secret-sourced values and mounted secret files replaced by dummies
          of the same shape, fieldRefs by pod-like values; REDIS_URL and
          MONGO_URL pointed at the local servers of $REDIS_URL / $MONGO_URL),
          then requires liveness 200 on the probe's port and path, and
          readiness 200 or 503 with a JSON body (startup probe like liveness).
  check_chart.py selftest <render.yaml>
      the same checks on a copy of the render with one planted fault per
      check: each must be reported, else the checker is broken.

Environment: BIN_DIR (directory of the four binaries, default target/release),
OPENAPI_DIR (default docs/openapi), WORK (a scratch directory).
"""
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

SERVICES = ("order-svc", "delivery-svc", "notify-svc", "simulator")
BIN_DIR = os.environ.get("BIN_DIR", "target/release")
OPENAPI_DIR = os.environ.get("OPENAPI_DIR", "docs/openapi")
WORK = os.environ.get("WORK", "/tmp")
REF = re.compile(r"(\$\$)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

_list_env_cache = {}


def list_env(svc):
    if svc not in _list_env_cache:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": "0",
               "REDIS_URL": "redis://127.0.0.1:1", "MONGO_URL": "mongodb://127.0.0.1:1"}
        p = subprocess.run([os.path.join(BIN_DIR, svc), "--list-env"], env=env, capture_output=True,
                           text=True, timeout=10)
        names = p.stdout.split()
        if p.returncode != 0 or not names or not all(re.fullmatch(r"[A-Z][A-Z0-9_]*", n) for n in names):
            raise SystemExit("%s/%s --list-env did not list variable names (exit %d): %s"
                             % (BIN_DIR, svc, p.returncode, (p.stdout + p.stderr)[:300]))
        _list_env_cache[svc] = set(names)
    return _list_env_cache[svc]


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def name(d):
    return d["metadata"]["name"]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_deployments(docs):
    """(deployment, container) of each of the four services."""
    out = []
    for d in by_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] in SERVICES:
                out.append((d, c))
    return out


# ------------------------------------------------------------ (a) env names
def check_env_names(docs, label):
    errors = []
    for d, c in service_deployments(docs):
        svc, env = c["name"], c.get("env") or []
        reads = list_env(svc)
        names = [e["name"] for e in env]
        referenced = set()
        for e in env:
            for m in REF.finditer(e.get("value") or ""):
                if m.group(2):
                    referenced.add(m.group(2))
        for i, e in enumerate(env):
            for m in REF.finditer(e.get("value") or ""):
                if m.group(2) and m.group(2) not in names[:i]:
                    errors.append("%s %s: %s refers to $(%s), not defined before it (Kubernetes leaves it literal)"
                                  % (label, name(d), e["name"], m.group(2)))
        for n in names:
            if n not in reads and n not in referenced:
                errors.append("%s %s: sets %s, which %s does not read (%s --list-env)"
                              % (label, name(d), n, svc, svc))
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                cm = next((x for x in by_kind(docs, "ConfigMap") if name(x) == src["configMapRef"]["name"]), None)
                for k in (cm or {}).get("data", {}):
                    if (src.get("prefix", "") + k) not in reads:
                        errors.append("%s %s: envFrom ConfigMap %s sets %s, which %s does not read"
                                      % (label, name(d), name(cm), k, svc))
            else:
                errors.append("%s %s: envFrom %s cannot be checked offline" % (label, name(d), list(src)))
        helpers = sorted(n for n in names if n not in reads)
        if not errors:
            print("[check-chart] %s %s: %d variables, all read by %s%s"
                  % (label, name(d), len(names), svc,
                     (" (helpers only used as $(NAME): %s)" % ", ".join(helpers)) if helpers else ""))
    return errors


# ---------------------------------------------------------- (c) ports
def container_ports(docs, selector):
    ports = []
    for d in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        tpl = d["spec"]["template"]
        if selects(selector, tpl["metadata"].get("labels") or {}):
            for c in tpl["spec"]["containers"]:
                ports += [(p.get("name"), p["containerPort"], d) for p in c.get("ports") or []]
    return ports


def check_ports(docs, label):
    errors, checked = [], 0
    for s in by_kind(docs, "Service"):
        selector = s["spec"].get("selector") or {}
        cports = container_ports(docs, selector)
        if not cports:
            errors.append("%s Service %s selects no pod template with ports (selector %r)" % (label, name(s), selector))
            continue
        for p in s["spec"].get("ports") or []:
            tp = p.get("targetPort", p["port"])
            ok = any(n == tp for n, _, _ in cports) if isinstance(tp, str) else any(num == tp for _, num, _ in cports)
            if not ok:
                errors.append("%s Service %s: targetPort %r matches no container port of %s (%s)"
                              % (label, name(s), tp, sorted({name(d) for _, _, d in cports}),
                                 ", ".join("%s=%s" % (n, num) for n, num, _ in cports)))
            checked += 1
    for sm in by_kind(docs, "ServiceMonitor"):
        sel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
        svcs = [s for s in by_kind(docs, "Service") if selects(sel, s["metadata"].get("labels") or {})]
        if not svcs:
            errors.append("%s ServiceMonitor %s selects no Service" % (label, name(sm)))
        for ep in sm["spec"].get("endpoints") or []:
            for s in svcs:
                if ep.get("port") not in [p.get("name") for p in s["spec"].get("ports") or []]:
                    errors.append("%s ServiceMonitor %s: port %r is not a port of Service %s"
                                  % (label, name(sm), ep.get("port"), name(s)))
    if not errors:
        print("[check-chart] %s: %d Service port(s) reach container ports; %d ServiceMonitor(s) use Service ports"
              % (label, checked, len(by_kind(docs, "ServiceMonitor"))))
    return errors


# -------------------------------------------------------- (d) ingress
def backend_service(docs, svc_name):
    """The foodchain service (container name) behind a Service."""
    s = next((x for x in by_kind(docs, "Service") if name(x) == svc_name), None)
    if not s:
        return None, None
    for _, _, d in container_ports(docs, s["spec"].get("selector") or {}):
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] in SERVICES:
                return c["name"], s
    return None, s


def openapi_paths(svc):
    with open(os.path.join(OPENAPI_DIR, svc + ".json")) as f:
        return list(json.load(f)["paths"])


def concrete(route):
    return re.sub(r"\{[^}]+\}", "0123456789abcdef01234567", route)


def path_matches(path, ptype, route):
    url = concrete(route)
    if ptype == "ImplementationSpecific" and re.search(r"[\[\]()*+?^$\\|]", path):
        return re.match(path, url) is not None
    prefix = path.rstrip("/")
    if ptype == "Exact":
        return url == path
    return prefix == "" or url == prefix or url.startswith(prefix + "/")


def check_ingress(docs, label):
    errors, rules = [], []
    ingresses = by_kind(docs, "Ingress")
    for ing in ingresses:
        for rule in ing["spec"].get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                be = p["backend"]["service"]
                svc, s = backend_service(docs, be["name"])
                where = "%s Ingress %s %s %s" % (label, name(ing), rule.get("host", "*"), p["path"])
                if s is None:
                    errors.append("%s: backend Service %s does not exist" % (where, be["name"]))
                    continue
                port = be.get("port") or {}
                sports = s["spec"].get("ports") or []
                if ("name" in port and port["name"] not in [x.get("name") for x in sports]) or \
                        ("number" in port and port["number"] not in [x["port"] for x in sports]):
                    errors.append("%s: backend port %r is not a port of Service %s" % (where, port, be["name"]))
                if svc is None:
                    errors.append("%s: backend %s is not one of the services" % (where, be["name"]))
                    continue
                routes = [r for r in openapi_paths(svc) if path_matches(p["path"], p.get("pathType"), r)]
                if not routes:
                    errors.append("%s -> %s: no route of docs/openapi/%s.json under this path"
                                  % (where, svc, svc))
                rules.append((rule.get("host"), p["path"], p.get("pathType"), svc, where))
    # Every public route of the exposed services reaches its own service.
    exposed = sorted({r[3] for r in rules})
    for host in sorted({r[0] for r in rules}, key=str):
        candidates = [r for r in rules if r[0] == host]
        for svc in exposed:
            for route in openapi_paths(svc):
                if not (route.startswith("/api/") or route.startswith("/ws/")):
                    continue
                hits = [r for r in candidates if path_matches(r[1], r[2], route)]
                if not hits:
                    errors.append("%s host %s: route %s of %s is not routed by any Ingress path"
                                  % (label, host, route, svc))
                    continue
                winner = max(hits, key=lambda r: len(r[1]))
                if winner[3] != svc:
                    errors.append("%s host %s: route %s of %s goes to %s (by path %s)"
                                  % (label, host, route, svc, winner[3], winner[1]))
    if not errors:
        if ingresses:
            print("[check-chart] %s: %d Ingress path(s) reach routes of their backends; every /api/ and /ws/ "
                  "route of %s is routed to its own service" % (label, len(rules), ", ".join(exposed)))
        else:
            print("[check-chart] %s: no Ingress" % label)
    return errors


# ----------------------------------------------------------- (b) probes
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_port(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def runtime_env(docs, d, c, fsroot):
    """The container's environment as the kubelet would build it, with dummies
    for what only a cluster has. Mounted secret files are created under fsroot
    and paths into them rewritten."""
    pod = d["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = []
    for m in c.get("volumeMounts") or []:
        v = volumes.get(m["name"], {})
        local = os.path.join(fsroot, m["mountPath"].lstrip("/"))
        os.makedirs(local, exist_ok=True)
        if "secret" in v:
            items = v["secret"].get("items") or []
            for it in items:
                path = os.path.join(local, it["path"])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("dummy0token0of0the0right0shape0%016x\n" % abs(hash(it["key"])))
        mounts.append((m["mountPath"], local, "secret" in v))
    env, notes = {}, []
    for e in c.get("env") or []:
        n = e["name"]
        if "value" in e:
            val = REF.sub(lambda m: "$" if m.group(1) else env.get(m.group(2), m.group(0)), e["value"])
        else:
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                val = "dummyA1b2C3d4E5f6G7h8I9j0"  # URL-safe, as the chart requires of passwords
                notes.append("%s=<dummy secret>" % n)
            elif "fieldRef" in vf:
                fp = vf["fieldRef"]["fieldPath"]
                val = {"metadata.name": name(d) + "-5d8f7c9b6-x2k4q", "metadata.namespace": "foodchain",
                       "status.podIP": "127.0.0.1", "spec.nodeName": "node-1"}.get(fp, "dummy")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = next((x for x in by_kind(docs, "ConfigMap") if name(x) == ref["name"]), {})
                val = (cm.get("data") or {}).get(ref["key"], "")
            elif "resourceFieldRef" in vf:
                val = "1"
            else:
                val = "dummy"
        for mount, local, secret in mounts:
            if val == mount or val.startswith(mount.rstrip("/") + "/"):
                val = local + val[len(mount.rstrip("/")):]
                notes.append("%s=<mounted %s file>" % (n, "secret" if secret else "volume"))
        env[n] = val
    return env, notes


def http_get(port, path, timeout=3):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def probe_checks(c, port_of, body_ok=True):
    """[(kind, path, port)] of the container's httpGet probes."""
    out = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        pr = c.get(kind)
        if not pr:
            continue
        hg = pr.get("httpGet")
        if not hg:
            out.append((kind, None, None))
            continue
        out.append((kind, hg.get("path", "/"), port_of(hg.get("port"))))
    return out


def check_probes(docs, label, planted=None):
    errors = []
    redis_url, mongo_url = os.environ["REDIS_URL"], os.environ["MONGO_URL"]
    for d, c in service_deployments(docs):
        svc = c["name"]
        fsroot = os.path.join(WORK, "fs", label, svc)
        env, notes = runtime_env(docs, d, c, fsroot)
        env["REDIS_URL"], env["MONGO_URL"] = redis_url, mongo_url
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        probes = probe_checks(c, lambda p: resolve_port(c, p))
        if planted and svc in planted:
            probes.append(planted[svc])
        where = "%s %s" % (label, name(d))
        if not any(k == "livenessProbe" for k, _, _ in probes):
            errors.append("%s: no livenessProbe" % where)
        if not any(k == "readinessProbe" for k, _, _ in probes):
            errors.append("%s: no readinessProbe" % where)
        listen = env.get("PORT")
        for kind, path, port in probes:
            if path is None:
                errors.append("%s: %s is not an httpGet probe" % (where, kind))
            elif port is None:
                errors.append("%s: %s port names no container port" % (where, kind))
            elif str(port) != listen:
                errors.append("%s: %s probes port %s but the service listens on PORT=%s" % (where, kind, port, listen))
        log = open(os.path.join(WORK, "%s-%s.log" % (label, svc)), "w")
        proc = subprocess.Popen([os.path.join(BIN_DIR, svc)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            port = int(listen or 0)
            deadline = time.monotonic() + 30
            live = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    live = http_get(port, "/healthz")
                    if live[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            if proc.poll() is not None:
                log.flush()
                tail = open(log.name).read()[-1500:]
                errors.append("%s: %s exited %d with the rendered environment:\n%s" % (where, svc, proc.returncode, tail))
                continue
            results = []
            for kind, path, pport in probes:
                if path is None or pport is None:
                    continue
                try:
                    st, body = http_get(pport, path)
                    # readiness: give the consumers a few seconds to start
                    until = time.monotonic() + 8
                    while kind == "readinessProbe" and st == 503 and time.monotonic() < until:
                        time.sleep(0.25)
                        st, body = http_get(pport, path)
                except OSError as e:
                    errors.append("%s: %s %s:%s: %s" % (where, kind, path, pport, e))
                    continue
                if kind == "readinessProbe":
                    try:
                        json.loads(body)
                        is_json = True
                    except ValueError:
                        is_json = False
                    if st not in (200, 503) or not is_json:
                        errors.append("%s: readiness %s:%s answered %s %r (want 200 or 503 with JSON)"
                                      % (where, path, pport, st, body[:100]))
                    # the real dependencies are local here: say what it reported
                    why = ""
                    if st == 503 and is_json:
                        checks = (json.loads(body) or {}).get("checks") or {}
                        why = " (%s)" % ", ".join("%s: %s" % kv for kv in checks.items() if kv[1] != "ok")
                    results.append("%s %s %s%s" % (kind, path, st, why))
                else:
                    if st != 200:
                        errors.append("%s: %s %s:%s answered %s (want 200)" % (where, kind, path, pport, st))
                    results.append("%s %s %s" % (kind, path, st))
            if not any(e.startswith(where) for e in errors):
                print("[check-chart] %s: %s started with the rendered env (%d vars; %s): %s"
                      % (where, svc, len(env) - 1, ", ".join(notes) or "no secrets", "; ".join(results)))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    return errors


# ---------------------------------------------------------- self-test
def planted(docs):
    """A copy of the render with one fault per check, and what must be reported."""
    bad = copy.deepcopy(docs)
    deps = {c["name"]: (d, c) for d, c in service_deployments(bad)}
    d, c = deps["order-svc"]
    c.setdefault("env", []).append({"name": "ORDER_RATE_PER_SECOND", "value": "5"})  # a typo of ORDER_RATE_PER_SEC
    svc = next(s for s in by_kind(bad, "Service") if name(s).endswith("delivery-svc"))
    svc["spec"]["ports"][0]["targetPort"] = "metrics"
    ing = by_kind(bad, "Ingress")
    if ing:
        ing[0]["spec"]["rules"][0]["http"]["paths"][0]["path"] = "/api/v2/deliveries"
    expect = ["ORDER_RATE_PER_SECOND", "targetPort 'metrics'"] + (["/api/v2/deliveries"] if ing else [])
    probe = {"notify-svc": ("livenessProbe", "/healthz/nothere", resolve_port(deps["notify-svc"][1], "http"))}
    return bad, expect, probe


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    what, path = argv[1], argv[2]
    label = argv[3] if len(argv) > 3 else os.path.basename(path)
    docs = load(path)
    if not service_deployments(docs):
        print("[check-chart] %s: no Deployment of the services" % label, file=sys.stderr)
        return 1
    if what == "static":
        errors = check_env_names(docs, label) + check_ports(docs, label) + check_ingress(docs, label)
    elif what == "probes":
        errors = check_probes(docs, label)
    elif what == "selftest":
        bad, expect, probe = planted(docs)
        with open(os.devnull, "w") as null:
            out, sys.stdout = sys.stdout, null
            try:
                found = check_env_names(bad, "selftest") + check_ports(bad, "selftest") + check_ingress(bad, "selftest")
                if os.environ.get("SELFTEST_PROBES") == "1":
                    found += check_probes(bad, "selftest", planted=probe)
                    expect = expect + ["/healthz/nothere"]
            finally:
                sys.stdout = out
        missed = [e for e in expect if not any(e in f for f in found)]
        if missed:
            print("[check-chart] self-test: planted faults NOT reported: %s\n  reported: %s"
                  % (missed, found), file=sys.stderr)
            return 1
        print("[check-chart] self-test: all %d planted faults reported (%s)" % (len(expect), "; ".join(expect)))
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for e in errors:
        print("[check-chart] ERROR " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
