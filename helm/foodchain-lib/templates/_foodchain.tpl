{{- /*
Shared named templates of the foodchain charts.

This library chart (helm/foodchain-lib, `type: library`) is their only copy:
the umbrella (helm/foodchain) and every subchart (helm/<name>) list it in
their Chart.yaml dependencies (`repository: file://../foodchain-lib`), so
each also lints and renders on its own. Templates run with the calling
chart's context: .Chart, .Values and .Release are the caller's. After editing
this file, rerun scripts/helm-deps.sh (it rebuilds the packaged copies in the
charts' git-ignored charts/ directories); scripts/validate-deploy.sh does so
itself.

Values shared by the umbrella and all subcharts live under `global` (see
helm/foodchain/values.yaml); every global read here has a default, so a
subchart rendered alone (without the umbrella's globals) still works.
*/ -}}

{{/* The `global` values, or an empty map. */}}
{{- define "foodchain.global" -}}
{{- toYaml (.Values.global | default dict) -}}
{{- end -}}

{{/* Name of a component of this release: <release>-<name>, 63 chars max. */}}
{{- define "foodchain.name" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of this (sub)chart's objects: <release>-<chart>. */}}
{{- define "foodchain.fullname" -}}
{{- include "foodchain.name" (dict "root" . "name" .Chart.Name) -}}
{{- end -}}

{{/* Selector labels of a component. Args: root, name. */}}
{{- define "foodchain.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Common labels of a component. Args: root, name. */}}
{{- define "foodchain.labels" -}}
{{ include "foodchain.selectorLabels" . }}
app.kubernetes.io/part-of: foodchain
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Kubernetes cluster DNS domain. */}}
{{- define "foodchain.clusterDomain" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $g.clusterDomain | default "cluster.local" -}}
{{- end -}}

{{/* ---------------------------------------------------------------- MongoDB */}}

{{/* Secret holding mongodb-root-password, mongodb-password, mongodb-keyfile. */}}
{{- define "foodchain.mongodb.secretName" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "existingSecret" "" $g | default (include "foodchain.name" (dict "root" . "name" "mongodb")) -}}
{{- end -}}

{{- define "foodchain.mongodb.replicaSetName" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "replicaSetName" "rs0" $g -}}
{{- end -}}

{{- define "foodchain.mongodb.replicas" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "replicas" 3 $g | int -}}
{{- end -}}

{{- define "foodchain.mongodb.port" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "port" 27017 $g | int -}}
{{- end -}}

{{- define "foodchain.mongodb.database" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "database" "foodchain" $g -}}
{{- end -}}

{{- define "foodchain.mongodb.username" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "username" "foodchain" $g -}}
{{- end -}}

{{- define "foodchain.mongodb.rootUsername" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "mongodb" "rootUsername" "root" $g -}}
{{- end -}}

{{/* Headless Service of the MongoDB StatefulSet. */}}
{{- define "foodchain.mongodb.headless" -}}
{{- include "foodchain.name" (dict "root" . "name" "mongodb-headless") -}}
{{- end -}}

{{/*
Comma-separated host:port seed list of the replica set: every member's stable
DNS name, or global.mongodb.hosts when set (an external replica set). The
namespace is written as $(POD_NAMESPACE), expanded by the kubelet from the
container's own POD_NAMESPACE variable (see foodchain.appEnv), so rendered
manifests (and k8s-jobs/) work in any namespace. Use only in container env.
*/}}
{{- define "foodchain.mongodb.hosts" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $external := dig "mongodb" "hosts" list $g -}}
{{- if $external -}}
{{- join "," $external -}}
{{- else -}}
{{- $sts := include "foodchain.name" (dict "root" . "name" "mongodb") -}}
{{- $svc := include "foodchain.mongodb.headless" . -}}
{{- $domain := include "foodchain.clusterDomain" . -}}
{{- $port := include "foodchain.mongodb.port" . -}}
{{- $hosts := list -}}
{{- range $i := until (include "foodchain.mongodb.replicas" . | int) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.$(POD_NAMESPACE).svc.%s:%s" $sts $i $svc $domain $port) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------ Redis */}}

{{/* Secret holding redis-password. */}}
{{- define "foodchain.redis.secretName" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "redis" "existingSecret" "" $g | default (include "foodchain.name" (dict "root" . "name" "redis")) -}}
{{- end -}}

{{- define "foodchain.redis.port" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- dig "redis" "port" 6379 $g | int -}}
{{- end -}}

{{/*
Redis host: global.redis.host, else the chart's redis Service. Args: root,
namespace (a name, or "$(POD_NAMESPACE)" inside container env).
*/}}
{{- define "foodchain.redis.host" -}}
{{- $g := fromYaml (include "foodchain.global" .root) -}}
{{- dig "redis" "host" "" $g | default (printf "%s.%s.svc.%s" (include "foodchain.name" (dict "root" .root "name" "redis")) .namespace (include "foodchain.clusterDomain" .root)) -}}
{{- end -}}

{{/*
Nodes of an external Redis Cluster (global.redis.clusterNodes, "host:port"
strings), comma-separated; empty = a single Redis (global.redis.host or the
bundled one). A cluster needs at least two entries: the services take a
REDIS_URL with one URL for a single Redis and a comma-separated list of node
URLs for a cluster. Fails on anything that is not such a list.
*/}}
{{- define "foodchain.redis.clusterNodes" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $nodes := dig "redis" "clusterNodes" list $g | default list -}}
{{- if not (kindIs "slice" $nodes) -}}
{{- fail (printf "global.redis.clusterNodes must be a list of host:port strings (got %v)" $nodes) -}}
{{- end -}}
{{- if eq (len $nodes) 1 -}}
{{- fail "global.redis.clusterNodes: list at least two nodes of the Redis Cluster (with one URL in REDIS_URL the services would treat it as a single Redis)" -}}
{{- end -}}
{{- range $nodes -}}
{{- if not (regexMatch "^[^\\s,/@]+:[0-9]+$" (toString .)) -}}
{{- fail (printf "global.redis.clusterNodes: %q is not host:port" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- join "," $nodes -}}
{{- end -}}

{{/*
STREAM_PARTITIONS (global.streamPartitions, an integer 1..1024, default 1):
how many Redis keys each stream is split into, as a string. Fails on
anything else.
*/}}
{{- define "foodchain.streamPartitions" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $n := dig "streamPartitions" 1 $g -}}
{{- if or (kindIs "invalid" $n) (not (regexMatch "^[0-9]+$" (toString $n))) (lt (int64 (toString $n)) 1) (gt (int64 (toString $n)) 1024) -}}
{{- fail (printf "global.streamPartitions must be an integer from 1 to 1024 (got %v)" $n) -}}
{{- end -}}
{{- int64 (toString $n) | toString -}}
{{- end -}}

{{/*
Redis keys of a stream, one per partition (see foodchain.streamPartitions),
comma-separated: <keyPrefix><stream> with one partition, else
<keyPrefix><stream>:{p<i>} for i in 0..P-1 (each partition's keys carry its
own hash tag, {p<i>}). Args: root, stream (the stream's name).
*/}}
{{- define "foodchain.redis.streamKeys" -}}
{{- $prefix := include "foodchain.redis.keyPrefix" .root -}}
{{- $n := include "foodchain.streamPartitions" .root | int -}}
{{- if eq $n 1 -}}
{{- printf "%s%s" $prefix .stream -}}
{{- else -}}
{{- $keys := list -}}
{{- range $i := until $n -}}
{{- $keys = append $keys (printf "%s%s:{p%d}" $prefix $.stream $i) -}}
{{- end -}}
{{- join "," $keys -}}
{{- end -}}
{{- end -}}

{{/*
Prefix of every Redis key of this deployment, as the services compute it
(contract::streams::Namespace::for_redis): global.streamPrefix as given on a
single Redis, and on a cluster with several partitions (each partition key
then carries its own hash tag {p<i>}, so the streams spread over the
cluster's primaries); on a cluster (global.redis.clusterNodes) with one
partition, one hash tag, {<prefix>}, or {foodchain} when the prefix is empty,
so that all keys share one slot. A prefix that already holds a hash tag is
kept as given.
*/}}
{{- define "foodchain.redis.keyPrefix" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $prefix := dig "streamPrefix" "" $g | toString -}}
{{- $partitions := include "foodchain.streamPartitions" . | int -}}
{{- if and (include "foodchain.redis.clusterNodes" .) (eq $partitions 1) (not (regexMatch "^[^{]*\\{[^}]+\\}" $prefix)) -}}
{{- printf "{%s}" ($prefix | default "foodchain") -}}
{{- else -}}
{{- $prefix -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_MIN_REPLICAS_ACKED (global.redis.minReplicasAcked, an integer >= 0), as
a string; empty when unset (the services' default: 1 on a cluster, 0 on a
single Redis).
*/}}
{{- define "foodchain.redis.minReplicasAcked" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- $n := dig "redis" "minReplicasAcked" "" $g -}}
{{- if not (or (kindIs "invalid" $n) (eq (toString $n) "")) -}}
{{- if not (regexMatch "^[0-9]+$" (toString $n)) -}}
{{- fail (printf "global.redis.minReplicasAcked must be an integer >= 0 or empty (got %v)" $n) -}}
{{- end -}}
{{- toString $n -}}
{{- end -}}
{{- end -}}

{{/* --------------------------------------------------------- Admin token */}}

{{/*
Secret holding order-svc's admin API token (key admin-token): the existing
Secret named by order-svc's adminToken.existingSecret, else the one the
order-svc chart generates, <release>-order-svc-admin. Args: root,
existingSecret (the order-svc value).
*/}}
{{- define "foodchain.adminToken.secretName" -}}
{{- .existingSecret | default (include "foodchain.name" (dict "root" .root "name" "order-svc-admin")) -}}
{{- end -}}

{{/* ------------------------------------------------------------ Proxying */}}

{{/*
TRUST_FORWARDED_FOR of a service that faces clients (order-svc, notify-svc):
"true" when global.ingress.enabled (the Ingress controller is then the
trusted proxy in front of the pods and sets X-Forwarded-For), else "false";
empty when the service's env or global.env gives TRUST_FORWARDED_FOR itself
(that value is used instead).
*/}}
{{- define "foodchain.trustForwardedFor" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- if not (or (hasKey (.Values.env | default dict) "TRUST_FORWARDED_FOR") (hasKey (dig "env" dict $g) "TRUST_FORWARDED_FOR")) -}}
{{- ternary "true" "false" (eq (dig "ingress" "enabled" false $g | toString) "true") -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------- Images */}}

{{/*
Image reference. Args: root, image (a map with repository, tag, pullPolicy).
global.image.registry is prepended; the tag defaults to global.image.tag,
then to the chart's appVersion.
*/}}
{{- define "foodchain.image" -}}
{{- $g := fromYaml (include "foodchain.global" .root) -}}
{{- $registry := dig "image" "registry" "" $g -}}
{{- $tag := .image.tag | default (dig "image" "tag" "" $g) | default .root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%v" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%v" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Pull policy. Args: root, image. */}}
{{- define "foodchain.imagePullPolicy" -}}
{{- $g := fromYaml (include "foodchain.global" .root) -}}
{{- .image.pullPolicy | default (dig "image" "pullPolicy" "IfNotPresent" $g) -}}
{{- end -}}

{{/*
Pod imagePullSecrets entries (global.imagePullSecrets: list of Secret
names), as a YAML list, or nothing.
*/}}
{{- define "foodchain.imagePullSecrets" -}}
{{- $g := fromYaml (include "foodchain.global" .) -}}
{{- range (dig "imagePullSecrets" list $g) }}
- name: {{ . }}
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------- Application env */}}

{{/*
Environment of a foodchain binary (services and the seeding job): the
passwords from the Secrets, the URLs composed from them with Kubernetes'
$(VAR) expansion (so no password is ever written into a manifest), and the
shared settings. Args: root, env (map of extra NAME: value; a name given
there replaces the chart's own variable of that name).
*/}}
{{- define "foodchain.appEnv" -}}
{{- $root := .root -}}
{{- $g := fromYaml (include "foodchain.global" $root) -}}
{{- $extra := .env | default dict -}}
{{- $db := include "foodchain.mongodb.database" $root -}}
{{- $own := dict
  "MONGO_DB" $db
  "STREAM_PREFIX" (dig "streamPrefix" "" $g)
  "STREAM_PARTITIONS" (include "foodchain.streamPartitions" $root)
  "APP_ENV" (dig "appEnv" "production" $g)
  "LOG_FORMAT" (dig "logFormat" "json" $g)
  "RUST_LOG" (dig "rustLog" "info" $g)
  "LOKI_URL" (dig "lokiUrl" "" $g)
  "REDIS_MIN_REPLICAS_ACKED" (include "foodchain.redis.minReplicasAcked" $root)
-}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: MONGO_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "foodchain.mongodb.secretName" $root }}
      key: mongodb-password
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "foodchain.redis.secretName" $root }}
      key: redis-password
{{- if not (hasKey $extra "MONGO_URL") }}
- name: MONGO_URL
  value: {{ printf "mongodb://%s:$(MONGO_PASSWORD)@%s/?replicaSet=%s&authSource=%s" (include "foodchain.mongodb.username" $root) (include "foodchain.mongodb.hosts" $root) (include "foodchain.mongodb.replicaSetName" $root) $db | quote }}
{{- end }}
{{- if not (hasKey $extra "REDIS_URL") }}
{{- $cluster := include "foodchain.redis.clusterNodes" $root }}
- name: REDIS_URL
{{- if $cluster }}
  {{- /* A Redis Cluster: one URL per node, each with the password. */}}
  {{- $urls := list }}
  {{- range splitList "," $cluster }}
  {{- $urls = append $urls (printf "redis://:$(REDIS_PASSWORD)@%s" .) }}
  {{- end }}
  value: {{ join "," $urls | quote }}
{{- else }}
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%s" (include "foodchain.redis.host" (dict "root" $root "namespace" "$(POD_NAMESPACE)")) (include "foodchain.redis.port" $root) | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := $own }}
{{- if and $value (not (hasKey $extra $name)) }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := $extra }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------ Service workload */}}

{{/*
Deployment + Service (+ ServiceMonitor, + KEDA objects) of one foodchain
service; each service subchart's templates call this with its own values.
Args: root, env (service-specific env computed by the subchart, optional),
volumes and volumeMounts (lists of extra Volume and VolumeMount objects of
the pod and its container, e.g. a Secret mounted as files; optional).
*/}}
{{- define "foodchain.service" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $g := fromYaml (include "foodchain.global" $root) -}}
{{- $name := $root.Chart.Name -}}
{{- $fullname := include "foodchain.fullname" $root -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- $keda := false -}}
{{- if $v.autoscaling }}{{ if $v.autoscaling.keda }}{{ $keda = $v.autoscaling.keda.enabled }}{{ end }}{{ end -}}
{{- $env := merge (dict) (.env | default dict) ($v.env | default dict) (dig "env" dict $g) -}}
{{- $_ := set $env "PORT" ($v.port | toString) -}}
{{- /* STREAM_PARTITIONS must be one value for every service and the KEDA
triggers: only global.streamPartitions sets it. */ -}}
{{- range $e := prepend ($v.extraEnv | default list) (dict "name" "") -}}
{{- if or (hasKey $env "STREAM_PARTITIONS") (eq (toString (get (kindIs "map" $e | ternary $e dict) "name")) "STREAM_PARTITIONS") -}}
{{- fail (printf "%s: do not set STREAM_PARTITIONS in env, extraEnv or global.env; set global.streamPartitions (the same for every service and the KEDA triggers)" $name) -}}
{{- end -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "foodchain.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: service
spec:
  {{- if not $keda }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "foodchain.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "foodchain.selectorLabels" $ctx | nindent 8 }}
        app.kubernetes.io/part-of: foodchain
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- if dig "metrics" "podAnnotations" true $g }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $v.port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- with (include "foodchain.imagePullSecrets" $root) }}
      imagePullSecrets:
        {{- . | trim | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "foodchain.image" (dict "root" $root "image" $v.image) | quote }}
          imagePullPolicy: {{ include "foodchain.imagePullPolicy" (dict "root" $root "image" $v.image) }}
          ports:
            - name: http
              containerPort: {{ $v.port }}
              protocol: TCP
          env:
            # Unique consumer name inside each Redis consumer group.
            - name: CONSUMER_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- include "foodchain.appEnv" (dict "root" $root "env" $env) | nindent 12 }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $v.livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml $v.readinessProbe | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "foodchain.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: service
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "foodchain.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.service.port }}
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- if dig "serviceMonitor" "enabled" false $g }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "foodchain.labels" $ctx | nindent 4 }}
    {{- with (dig "serviceMonitor" "labels" dict $g) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "foodchain.selectorLabels" $ctx | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      interval: {{ dig "serviceMonitor" "interval" "30s" $g }}
      scrapeTimeout: {{ dig "serviceMonitor" "scrapeTimeout" "10s" $g }}
      # outbox_backlog carries its own `service` label: keep it.
      honorLabels: true
      relabelings:
        # `service` = the foodchain service name (order-svc, ...), as in
        # compose, instead of the Kubernetes Service name.
        - sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]
          targetLabel: service
{{- end }}
{{- if $keda }}
{{- $k := $v.autoscaling.keda }}
{{- $cluster := include "foodchain.redis.clusterNodes" $root }}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata:
  name: {{ $fullname }}-redis
  labels:
    {{- include "foodchain.labels" $ctx | nindent 4 }}
spec:
  secretTargetRef:
    - parameter: password
      name: {{ include "foodchain.redis.secretName" $root }}
      key: redis-password
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $fullname }}
  labels:
    {{- include "foodchain.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ $fullname }}
  minReplicaCount: {{ $k.minReplicas }}
  maxReplicaCount: {{ $k.maxReplicas }}
  pollingInterval: {{ $k.pollingInterval }}
  cooldownPeriod: {{ $k.cooldownPeriod }}
  triggers:
    {{- /* One per stream and partition (global.streamPartitions):
    redis-streams on a single Redis, redis-cluster-streams on a Redis Cluster
    (global.redis.clusterNodes); the stream keys carry the deployment's key
    prefix (a hash tag on a cluster with one partition) and, with several
    partitions, the partition's tag, <prefix><stream>:{p<i>}. */}}
    {{- range $stream := $k.streams }}
    {{- range splitList "," (include "foodchain.redis.streamKeys" (dict "root" $root "stream" $stream)) }}
    {{- if $cluster }}
    - type: redis-cluster-streams
      metadata:
        addresses: {{ $cluster | quote }}
    {{- else }}
    - type: redis-streams
      metadata:
        address: {{ printf "%s:%s" (include "foodchain.redis.host" (dict "root" $root "namespace" $root.Release.Namespace)) (include "foodchain.redis.port" $root) | quote }}
    {{- end }}
        stream: {{ . | quote }}
        consumerGroup: {{ $k.consumerGroup | default $name | quote }}
        {{- if eq $k.metric "lagCount" }}
        lagCount: {{ $k.target | quote }}
        {{- else if eq $k.metric "pendingEntriesCount" }}
        pendingEntriesCount: {{ $k.target | quote }}
        {{- else }}
        {{- fail "autoscaling.keda.metric must be lagCount or pendingEntriesCount" }}
        {{- end }}
      authenticationRef:
        name: {{ $fullname }}-redis
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}
