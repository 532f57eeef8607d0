{{/* Names and labels, as `helm create` makes them. */}}
{{- define "customer-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "customer-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "customer-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "customer-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "customer-service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "customer-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "customer-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "customer-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "customer-service.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "customer-service.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.create }}
{{- include "customer-service.fullname" . }}
{{- end }}
{{- end }}

{{/*
The settings as container env, sorted; "overrides" (a dict) wins over .Values.settings.
Null values are left out, so that the service's own default applies.
*/}}
{{- define "customer-service.env" -}}
{{- /* Not merge: it would take an override of false for "empty" and drop it. */}}
{{- $settings := deepCopy .root.Values.settings }}
{{- range $name, $value := .overrides }}
{{- $_ := set $settings $name $value }}
{{- end }}
{{- range $name := keys $settings | sortAlpha }}
{{- $value := get $settings $name }}
{{- if not (kindIs "invalid" $value) }}
{{- /* YAML numbers arrive as float64: 1048576 would print as 1.048576e+06. */}}
{{- if and (kindIs "float64" $value) (eq (floor $value) $value) }}
{{- $value = int64 $value }}
{{- end }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Secret settings and the read-only root's /tmp, shared by every pod. */}}
{{- define "customer-service.envFrom" -}}
{{- $secret := include "customer-service.secretName" . }}
{{- if $secret }}
envFrom:
  - secretRef:
      name: {{ $secret }}
{{- end }}
{{- end }}

{{- define "customer-service.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "customer-service.volumes" -}}
volumes:
  - name: tmp
    emptyDir: {}
{{- with .Values.extraVolumes }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The probes: what the service serves on HTTP_PORT (the "http" port). */}}
{{- define "customer-service.probes" -}}
startupProbe:
  httpGet: {path: /livez, port: http}
  periodSeconds: 5
  failureThreshold: {{ div (int .Values.startupSeconds) 5 }}
livenessProbe:
  httpGet: {path: /livez, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Refuse values the service cannot run with, naming them. */}}
{{- define "customer-service.validate" -}}
{{- $s := .Values.settings }}
{{- if not $s.HTTP_ENABLED }}
{{- fail "settings.HTTP_ENABLED must be true: the probes and the metrics scrape use the HTTP endpoints" }}
{{- end }}
{{- if eq (int $s.HTTP_PORT) 0 }}
{{- fail "settings.HTTP_PORT must be a fixed port: the probes and the Service name it" }}
{{- end }}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.create) }}
{{- fail "set secret.existingSecret (a Secret with DATABASE_URL) or secret.create with secret.data" }}
{{- end }}
{{- if and .Values.secret.existingSecret .Values.secret.create }}
{{- fail "set secret.existingSecret or secret.create, not both" }}
{{- end }}
{{- $processes := toString .Values.worker.processes }}
{{- if not (regexMatch "^(auto|[1-9][0-9]*)$" $processes) }}
{{- fail (printf "worker.processes (%v) must be a whole number from 1, or auto" .Values.worker.processes) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (eq $processes "auto") (not .Values.autoscaling.maxReplicas) }}
{{- fail "set autoscaling.maxReplicas with worker.processes auto: the chart cannot know how many consumers a pod runs" }}
{{- end }}
{{- if and (not .Values.autoscaling.enabled) (ne $processes "auto") (gt (mul (int .Values.worker.replicas) (int $processes)) (int $s.TOPIC_PARTITIONS)) }}
{{- fail (printf "worker.replicas x worker.processes (%v x %v) must not exceed TOPIC_PARTITIONS (%v): a consumer without a partition sits idle, and a pod of them stays unready" .Values.worker.replicas $processes $s.TOPIC_PARTITIONS) }}
{{- end }}
{{- /* The relay's last Kafka commit may take the service's TRANSACTION_TIMEOUT (30 s). */}}
{{- $drain := addf (float64 $s.BATCH_TIMEOUT) (float64 $s.RELAY_DRAIN_TIMEOUT) 30.0 }}
{{- if not (gt (float64 .Values.worker.terminationGracePeriodSeconds) $drain) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be above BATCH_TIMEOUT + RELAY_DRAIN_TIMEOUT + 30 s for the last Kafka commit (%v), or a shutdown is cut short" .Values.worker.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and (ne (toString .Values.worker.processes) "1") (le (float64 .Values.worker.terminationGracePeriodSeconds) 120.0) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be above 120 with worker.processes > 1: the supervisor gives each process 120 s to drain" .Values.worker.terminationGracePeriodSeconds) }}
{{- end }}
{{- if and .Values.relay.enabled (not (gt (float64 .Values.relay.terminationGracePeriodSeconds) (addf (float64 $s.RELAY_DRAIN_TIMEOUT) 30.0))) }}
{{- fail (printf "relay.terminationGracePeriodSeconds (%v) must be above RELAY_DRAIN_TIMEOUT + 30 s for the last Kafka commit (%v)" .Values.relay.terminationGracePeriodSeconds (addf (float64 $s.RELAY_DRAIN_TIMEOUT) 30.0)) }}
{{- end }}
{{- end }}
