{{- /*
Named templates of the umbrella's Jobs (init hooks, stock refill). The Jobs
are rendered both as Helm hooks (jobs.hooks: true, the default) and, by
scripts/gen-k8s-jobs.sh with jobs.hooks: false, as the plain manifests in
k8s-jobs/. Their scripts never contain "$(": the kubelet would expand it.
*/ -}}

{{/* Metadata of a Job. Args: root, name (component), weight (hook weight). */}}
{{- define "foodchain.job.metadata" -}}
name: {{ include "foodchain.name" (dict "root" .root "name" .name) }}
labels:
  {{- include "foodchain.jobLabels" . | nindent 2 }}
{{- if .root.Values.jobs.hooks }}
annotations:
  helm.sh/hook: post-install,post-upgrade
  helm.sh/hook-weight: {{ .weight | quote }}
  helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- end -}}

{{/*
Labels of a Job and its pods: stable ones only (no chart version), so the
generated k8s-jobs/ manifests change only when the Jobs do. Args: root, name.
*/}}
{{- define "foodchain.jobLabels" -}}
{{ include "foodchain.selectorLabels" . }}
app.kubernetes.io/part-of: foodchain
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Job spec fields before the pod template. */}}
{{- define "foodchain.job.specHead" -}}
backoffLimit: {{ .Values.jobs.backoffLimit }}
activeDeadlineSeconds: {{ .Values.jobs.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ .Values.jobs.ttlSecondsAfterFinished }}
{{- end -}}

{{/* The mongo image (mongosh) and its pull policy, as container fields. */}}
{{- define "foodchain.job.mongoImage" -}}
image: {{ include "foodchain.image" (dict "root" . "image" .Values.mongodb.image) | quote }}
imagePullPolicy: {{ include "foodchain.imagePullPolicy" (dict "root" . "image" .Values.mongodb.image) }}
{{- end -}}

{{/* Pod-level fields of a mongosh pod (runs as the mongo image's user 999). */}}
{{- define "foodchain.job.mongoPodSpec" -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
{{- with (include "foodchain.imagePullSecrets" .) }}
imagePullSecrets:
  {{- . | trim | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 999
  runAsGroup: 999
  seccompProfile:
    type: RuntimeDefault
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}

{{/* Container fields shared by the Jobs' containers. */}}
{{- define "foodchain.job.containerCommon" -}}
resources:
  {{- toYaml .Values.jobs.resources | nindent 2 }}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/*
Env of the mongosh containers: namespace, members, database and the
application user's credentials.
*/}}
{{- define "foodchain.job.mongoEnv" -}}
{{ include "foodchain.job.mongoConnEnv" . }}
- name: MONGO_USERNAME
  value: {{ include "foodchain.mongodb.username" . | quote }}
- name: MONGO_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "foodchain.mongodb.secretName" . }}
      key: mongodb-password
{{- end -}}

{{/* Env of a mongosh container without credentials: namespace, members, database. */}}
{{- define "foodchain.job.mongoConnEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
# mongosh keeps its history under $HOME (the root filesystem is read-only).
- name: HOME
  value: /tmp
- name: MONGO_MEMBERS
  value: {{ include "foodchain.mongodb.hosts" . | quote }}
- name: MONGO_REPLICA_SET
  value: {{ include "foodchain.mongodb.replicaSetName" . | quote }}
- name: MONGO_DB
  value: {{ include "foodchain.mongodb.database" . | quote }}
{{- end -}}

{{/* Root credentials (init jobs only). */}}
{{- define "foodchain.job.mongoRootEnv" -}}
- name: MONGO_ROOT_USERNAME
  value: {{ include "foodchain.mongodb.rootUsername" . | quote }}
- name: MONGO_ROOT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "foodchain.mongodb.secretName" . }}
      key: mongodb-root-password
{{- end -}}

{{/* ------------------------------------------------------- restock user */}}

{{/*
Secret holding mongodb-restock-password, the password of the stock-refill
CronJob's MongoDB user (stockRefill.username).
*/}}
{{- define "foodchain.restock.secretName" -}}
{{- .Values.stockRefill.existingSecret | default (include "foodchain.name" (dict "root" . "name" "mongodb-restock")) -}}
{{- end -}}

{{/* The restock user's name, checked against the application and root users. */}}
{{- define "foodchain.restock.username" -}}
{{- $name := .Values.stockRefill.username | required "stockRefill.username is required" -}}
{{- if has $name (list (include "foodchain.mongodb.username" .) (include "foodchain.mongodb.rootUsername" .)) -}}
{{- fail (printf "stockRefill.username %q must differ from global.mongodb.username and global.mongodb.rootUsername: the CronJob gets a user of its own" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Credentials of the restock user, as <prefix>USERNAME and <prefix>PASSWORD.
Args: root, prefix ("MONGO_" in the CronJob, "MONGO_RESTOCK_" in init-user).
*/}}
{{- define "foodchain.job.restockEnv" -}}
- name: {{ .prefix }}USERNAME
  value: {{ include "foodchain.restock.username" .root | quote }}
- name: {{ .prefix }}PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "foodchain.restock.secretName" .root }}
      key: mongodb-restock-password
{{- end -}}
