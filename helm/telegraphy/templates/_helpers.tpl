{{/* Names and labels. */}}
{{- define "telegraphy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "telegraphy.fullname" -}}
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

{{- define "telegraphy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "telegraphy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "telegraphy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "telegraphy.labels" -}}
helm.sh/chart: {{ include "telegraphy.chart" . }}
{{ include "telegraphy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "telegraphy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "telegraphy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "telegraphy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding TELEGRAPHY_API_KEYS and TELEGRAPHY_BUS. */}}
{{- define "telegraphy.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "telegraphy.fullname" . }}
{{- end }}
{{- end }}

{{/*
A gateway duration ("500ms", "30s", "1m 30s", "2h", "1d") in milliseconds.
Only the units ms, s, m, h and d are accepted (values.schema.json says the same).
*/}}
{{- define "telegraphy.durationMs" -}}
{{- $s := toString . }}
{{- if not (regexMatch `^\s*([0-9]+\s*(ms|s|m|h|d)\s*)+$` $s) }}
{{- fail (printf "telegraphy: duration %q: write a number and a unit (ms, s, m, h, d), e.g. \"30s\" or \"1m 30s\"" $s) }}
{{- end }}
{{- $total := 0 }}
{{- range regexFindAll `[0-9]+\s*(ms|s|m|h|d)` $s -1 }}
{{- $n := regexFind `^[0-9]+` . | int64 }}
{{- $unit := regexFind `(ms|s|m|h|d)$` . }}
{{- $factor := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit }}
{{- $total = add $total (mul $n $factor) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* A Kubernetes memory quantity ("1Gi", "512Mi", "1G", "1048576") in bytes; "" if it has another form. */}}
{{- define "telegraphy.memoryBytes" -}}
{{- $q := toString . }}
{{- if regexMatch `^[0-9]+(Ki|Mi|Gi|Ti|k|K|M|G|T)?$` $q }}
{{- $n := regexFind `^[0-9]+` $q | int64 }}
{{- $unit := trimPrefix (toString $n) $q }}
{{- $factors := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- mul $n (get $factors $unit) }}
{{- end }}
{{- end }}

{{/*
Checks the values together; a template calls it so `helm template` and
`helm install` stop with a clear message instead of deploying a broken setup.
*/}}
{{- define "telegraphy.validate" -}}
{{- $bus := .Values.bus.type }}
{{- if eq $bus "memory" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "telegraphy: bus.type=memory is a single-node bus (memory://): replicaCount must be 1, not %d. Use bus.type=redis or bus.type=amqp to run several pods." (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "telegraphy: bus.type=memory is a single-node bus (memory://): autoscaling.enabled needs bus.type=redis or bus.type=amqp, so every pod sees every event." }}
{{- end }}
{{- else if not .Values.existingSecret }}
{{- $url := index .Values.bus $bus "url" }}
{{- if not $url }}
{{- fail (printf "telegraphy: bus.type=%s needs bus.%s.url, or existingSecret naming a Secret with the key %s." $bus $bus .Values.existingSecretKeys.bus) }}
{{- end }}
{{- /* Redis also takes a Redis Cluster (redis+cluster://) and Sentinel (redis+sentinel://). */}}
{{- $forms := ternary "(\\+cluster|\\+sentinel)?" "" (eq $bus "redis") }}
{{- if not (regexMatch (printf "^%ss?%s://" $bus $forms) $url) }}
{{- if eq $bus "redis" }}
{{- fail "telegraphy: bus.redis.url must start with redis://, redis+cluster:// (a Redis Cluster) or redis+sentinel:// (Sentinel), or their rediss forms for TLS." }}
{{- else }}
{{- fail (printf "telegraphy: bus.%s.url must start with %s:// (or %ss:// for TLS)." $bus $bus $bus) }}
{{- end }}
{{- end }}
{{- if and .Values.bus.tls.secretName (not (regexMatch (printf "^%ss%s://" $bus $forms) $url)) }}
{{- fail (printf "telegraphy: bus.tls.secretName is set but bus.%s.url is not a %ss:// URL; TLS files are for TLS connections." $bus $bus) }}
{{- end }}
{{- end }}
{{- $delay := include "telegraphy.durationMs" .Values.config.shutdown.drain_delay | int64 }}
{{- $timeout := include "telegraphy.durationMs" .Values.config.shutdown.drain_timeout | int64 }}
{{- $grace := mul (int64 .Values.terminationGracePeriodSeconds) 1000 }}
{{- if le $grace $timeout }}
{{- fail (printf "telegraphy: terminationGracePeriodSeconds (%ds) must be longer than config.shutdown.drain_timeout (%s), or Kubernetes kills pods before their sessions are drained." (int64 .Values.terminationGracePeriodSeconds) .Values.config.shutdown.drain_timeout) }}
{{- end }}
{{- if le $timeout $delay }}
{{- fail (printf "telegraphy: config.shutdown.drain_timeout (%s) must be longer than config.shutdown.drain_delay (%s)." .Values.config.shutdown.drain_timeout .Values.config.shutdown.drain_delay) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "telegraphy: autoscaling.minReplicas must not exceed autoscaling.maxReplicas." }}
{{- end }}
{{- end }}

{{/* One TOML value: integers stay integers (Helm reads YAML numbers as floats). */}}
{{- define "telegraphy.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "telegraphy.tomlValue" $v }}{{ end }}]
{{- else if kindIs "invalid" . }}{{ fail "telegraphy: a config value is null; remove the key instead" }}
{{- else }}{{ fail (printf "telegraphy: config value %v of type %s cannot be written to TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* The gateway configuration: values' `config` plus the keys the chart owns. */}}
{{- define "telegraphy.configMap" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.http)) }}
{{- $_ := set $cfg "admin_listen" (printf "0.0.0.0:%d" (int .Values.containerPorts.admin)) }}
{{- $_ := set $cfg "dev" false }}
{{- if eq .Values.bus.type "memory" }}
{{- $_ := set $cfg "bus" "memory://" }}
{{- else if eq .Values.bus.type "redis" }}
{{- $_ := set $cfg "redis" (dict "key_prefix" .Values.bus.redis.keyPrefix "buffer_bytes" (int64 .Values.bus.redis.bufferBytes)) }}
{{- else if eq .Values.bus.type "amqp" }}
{{- $_ := set $cfg "amqp" (dict "exchange" .Values.bus.amqp.exchange "prefetch" .Values.bus.amqp.prefetch "queue_max_length" .Values.bus.amqp.queueMaxLength) }}
{{- end }}
{{- with .Values.bus.tls }}
{{- if .secretName }}
{{- $tls := dict }}
{{- if .ca }}{{- $_ := set $tls "ca_file" (printf "/etc/telegraphy-bus-tls/%s" .ca) }}{{- end }}
{{- if .cert }}{{- $_ := set $tls "cert_file" (printf "/etc/telegraphy-bus-tls/%s" .cert) }}{{- end }}
{{- if .key }}{{- $_ := set $tls "key_file" (printf "/etc/telegraphy-bus-tls/%s" .key) }}{{- end }}
{{- $_ := set $cfg "bus_tls" $tls }}
{{- end }}
{{- end }}
{{- $cfg | toJson }}
{{- end }}

{{/* The gateway's TOML file. */}}
{{- define "telegraphy.toml" -}}
{{- $cfg := include "telegraphy.configMap" . | fromJson -}}
# Rendered by the telegraphy Helm chart from its values; see docs/configuration.md.
# The bus URL and API keys come from the environment (Secret {{ include "telegraphy.secretName" . }}).
{{- range $k, $v := $cfg }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "telegraphy.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $cfg }}
{{- if and (kindIs "map" $v) $v }}

[{{ $k }}]
{{- range $k2, $v2 := $v }}
{{- if kindIs "map" $v2 }}
{{- fail (printf "telegraphy: config.%s.%s: the gateway has no settings nested this deep" $k $k2) }}
{{- end }}
{{ $k2 }} = {{ include "telegraphy.tomlValue" $v2 }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
