{{/*
Helpers for the AURA chart.
*/}}

{{/* The four roles, in a fixed order. */}}
{{- define "aura.roles" -}}
gateway scheduler worker events
{{- end -}}

{{- define "aura.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name prefix. Truncated to 40 characters so that "<fullname>-scheduler-headless"
still fits the 63-character limit of Service names.
*/}}
{{- define "aura.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aura.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every resource. */}}
{{- define "aura.labels" -}}
helm.sh/chart: {{ include "aura.chart" . }}
{{ include "aura.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aura
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "aura.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aura.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component. Argument: dict "root" $ "component" "gateway". */}}
{{- define "aura.componentLabels" -}}
{{ include "aura.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aura.componentSelectorLabels" -}}
{{ include "aura.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aura.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aura.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aura.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* host:port listen address; IPv6 hosts are bracketed. Argument: list $ port. */}}
{{- define "aura.listen" -}}
{{- $root := index . 0 -}}
{{- $host := $root.Values.config.listenAddress -}}
{{- if contains ":" $host -}}
{{- printf "[%s]:%v" $host (index . 1) -}}
{{- else -}}
{{- printf "%s:%v" $host (index . 1) -}}
{{- end -}}
{{- end -}}

{{/* Service names. */}}
{{- define "aura.serviceName" -}}
{{- printf "%s-%s" (include "aura.fullname" .root) .component -}}
{{- end -}}

{{- define "aura.headlessServiceName" -}}
{{- printf "%s-%s-headless" (include "aura.fullname" .root) .component -}}
{{- end -}}

{{/*
URL clients use to reach an internal role (scheduler or events).
headless: DNS name of the headless Service (every ready pod IP, client-side balancing).
clusterIP: DNS name of the ClusterIP Service.
*/}}
{{- define "aura.internalURL" -}}
{{- $root := .root -}}
{{- $port := (index $root.Values .component).grpcPort -}}
{{- $svc := "" -}}
{{- if eq $root.Values.serviceDiscovery.mode "headless" -}}
{{- $svc = include "aura.headlessServiceName" . -}}
{{- else -}}
{{- $svc = include "aura.serviceName" . -}}
{{- end -}}
{{- printf "http://%s.%s.svc.%s:%v" $svc $root.Release.Namespace $root.Values.serviceDiscovery.clusterDomain $port -}}
{{- end -}}

{{/* ---------------- Redis ---------------- */}}

{{- define "aura.redis.fullname" -}}
{{- printf "%s-redis" (include "aura.fullname" .) -}}
{{- end -}}

{{- define "aura.redis.headlessName" -}}
{{- printf "%s-redis-headless" (include "aura.fullname" .) -}}
{{- end -}}

{{/* Name of the Secret holding the Redis password ("" when there is none). */}}
{{- define "aura.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}
{{- default (printf "%s-redis" (include "aura.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "aura.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- else -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{/*
AURA_REDIS_URL. The password is never written into the manifest: it is
referenced as $(REDIS_PASSWORD), which Kubernetes expands from the env var
of that name (defined just before, from the Secret) when the container starts.
*/}}
{{- define "aura.redis.url" -}}
{{- if .Values.redis.enabled -}}
{{- $userinfo := "" -}}
{{- if .Values.redis.auth.enabled -}}{{- $userinfo = ":$(REDIS_PASSWORD)@" -}}{{- end -}}
{{- printf "redis://%s%s.%s.svc.%s:%v" $userinfo (include "aura.redis.fullname" .) .Release.Namespace .Values.serviceDiscovery.clusterDomain .Values.redis.port -}}
{{- else -}}
{{- $ext := .Values.redis.external -}}
{{- $urls := list -}}
{{- range $raw := splitList "," $ext.url -}}
{{- $u := trim $raw -}}
{{- if $u -}}
{{- if $ext.existingSecret -}}
{{- $p := urlParse $u -}}
{{- if $p.userinfo -}}
{{- fail (printf "redis.external.url %q already contains credentials; put the password in redis.external.existingSecret only" $u) -}}
{{- end -}}
{{- $rest := $p.path -}}
{{- if $p.query -}}{{- $rest = printf "%s?%s" $rest $p.query -}}{{- end -}}
{{- $u = printf "%s://%s:$(REDIS_PASSWORD)@%s%s" $p.scheme $ext.username $p.host $rest -}}
{{- else if $ext.username -}}
{{- $p := urlParse $u -}}
{{- $rest := $p.path -}}
{{- if $p.query -}}{{- $rest = printf "%s?%s" $rest $p.query -}}{{- end -}}
{{- $u = printf "%s://%s@%s%s" $p.scheme $ext.username $p.host $rest -}}
{{- end -}}
{{- $urls = append $urls $u -}}
{{- end -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}
{{- end -}}

{{/* ---------------- Secrets ---------------- */}}

{{- define "aura.apiKeys.secretName" -}}
{{- default (printf "%s-api-keys" (include "aura.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "aura.apiKeys.secretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}api-keys{{- end -}}
{{- end -}}

{{- define "aura.llm.secretName" -}}
{{- if .Values.llm.existingSecret -}}
{{- .Values.llm.existingSecret -}}
{{- else if .Values.llm.apiKey -}}
{{- printf "%s-llm" (include "aura.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "aura.llm.secretKey" -}}
{{- if .Values.llm.existingSecret -}}{{ .Values.llm.existingSecretKey }}{{- else -}}llm-api-key{{- end -}}
{{- end -}}

{{/*
Value of a key of a Secret that already exists in the cluster (so generated
passwords and keys survive `helm upgrade`). "" under `helm template`.
Argument: dict "root" $ "name" NAME "key" KEY.
*/}}
{{- define "aura.existingSecretValue" -}}
{{- $s := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $s $s.data (hasKey $s.data .key) -}}
{{- index $s.data .key | b64dec -}}
{{- end -}}
{{- end -}}

{{/* ---------------- Per-role settings ---------------- */}}

{{/* Preload-sleep plus drain plus margin. Argument: dict "root" $ "component" role. */}}
{{- define "aura.terminationGrace" -}}
{{- $r := index .root.Values .component -}}
{{- $min := add $r.drainTimeoutSeconds $r.preStopSleepSeconds -}}
{{- if kindIs "invalid" $r.terminationGracePeriodSeconds -}}
{{- add $min 10 -}}
{{- else -}}
{{- if le (int $r.terminationGracePeriodSeconds) (int $min) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be longer than drainTimeoutSeconds + preStopSleepSeconds (%v), or pods are killed mid-drain" .component $r.terminationGracePeriodSeconds $min) -}}
{{- end -}}
{{- $r.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* Whether a role's probes use gRPC (false: TCP, for the TLS gateway). */}}
{{- define "aura.grpcProbes" -}}
{{- if and (eq .component "gateway") .root.Values.tls.enabled -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{/*
Environment of one role, stored in its ConfigMap. Its sha256 is the pod's
checksum/config annotation, so any change here rolls that role's pods.
*/}}
{{- define "aura.roleConfig" -}}
{{- $root := .root -}}
{{- $role := .component -}}
{{- $r := index $root.Values $role -}}
AURA_LISTEN: {{ include "aura.listen" (list $root $r.grpcPort) | quote }}
AURA_METRICS_LISTEN: {{ include "aura.listen" (list $root $r.metricsPort) | quote }}
AURA_LOG: {{ default $root.Values.config.logLevel $r.logLevel | quote }}
AURA_DRAIN_TIMEOUT_SECS: {{ $r.drainTimeoutSeconds | quote }}
AURA_PARTITIONS: {{ $root.Values.config.partitions | quote }}
AURA_SCHEDULER_URL: {{ include "aura.internalURL" (dict "root" $root "component" "scheduler") | quote }}
AURA_EVENTS_URL: {{ include "aura.internalURL" (dict "root" $root "component" "events") | quote }}
OTEL_SERVICE_NAME: {{ printf "aura-%s" $role | quote }}
{{- with $root.Values.config.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if eq $role "worker" }}
AURA_WORKER_CONCURRENCY: {{ $r.concurrency | quote }}
{{- end }}
{{- if eq $role "gateway" }}
AURA_RATE_LIMIT_RPS: {{ $r.rateLimit.rps | quote }}
AURA_RATE_LIMIT_BURST: {{ $r.rateLimit.burst | quote }}
{{- with $r.rateLimit.groups }}
AURA_RATE_LIMIT_GROUPS: {{ join "," . | quote }}
{{- end }}
{{- with $r.rateLimit.costs }}
AURA_RATE_LIMIT_COSTS: {{ join "," . | quote }}
{{- end }}
{{- if $r.rateLimit.failClosed }}
AURA_RATE_LIMIT_FAIL_CLOSED: "true"
{{- end }}
AURA_MAX_MESSAGE_BYTES: {{ $r.maxMessageBytes | int64 | quote }}
AURA_MAX_IN_FLIGHT: {{ $r.maxInFlight | int64 | quote }}
{{- if $root.Values.auth.enabled }}
AURA_API_KEYS_FILE: "/etc/aura/auth/api-keys"
{{- else }}
AURA_INSECURE_NO_AUTH: "true"
{{- end }}
{{- if $root.Values.tls.enabled }}
AURA_TLS_CERT: "/etc/aura/tls/tls.crt"
AURA_TLS_KEY: "/etc/aura/tls/tls.key"
{{- end }}
{{- end }}
{{- range $k, $v := $root.Values.config.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* Checksum of the Secret inputs the chart controls (not generated values). */}}
{{- define "aura.secretInputsChecksum" -}}
{{- list .Values.auth .Values.llm .Values.tls .Values.redis.enabled .Values.redis.auth .Values.redis.external | toJson | sha256sum -}}
{{- end -}}

{{/* NetworkPolicy peer: pods of this release's AURA roles (not Redis). */}}
{{- define "aura.netpol.auraPods" -}}
- podSelector:
    matchLabels:
      {{- include "aura.selectorLabels" . | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [gateway, scheduler, worker, events]
{{- end -}}

{{/* Fail early on contradictory values that the JSON schema cannot express. */}}
{{- define "aura.validate" -}}
{{- if and .Values.redis.enabled .Values.redis.external.url -}}
{{- fail "redis.enabled=true deploys the bundled Redis: set redis.enabled=false to use redis.external.url" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not (trim .Values.redis.external.url)) -}}
{{- fail "redis.enabled=false requires redis.external.url (the URL of your Redis or Redis Cluster)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled=true requires tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)" -}}
{{- end -}}
{{- if and .Values.auth.existingSecret .Values.auth.apiKeys -}}
{{- fail "set either auth.apiKeys or auth.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.llm.existingSecret .Values.llm.apiKey -}}
{{- fail "set either llm.apiKey or llm.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.gateway.grpcRoute.enabled (not .Values.gateway.grpcRoute.parentRefs) -}}
{{- fail "gateway.grpcRoute.enabled=true requires gateway.grpcRoute.parentRefs" -}}
{{- end -}}
{{- range $role := splitList " " (include "aura.roles" .) -}}
{{- $r := index $.Values $role -}}
{{- if eq (int $r.grpcPort) (int $r.metricsPort) -}}
{{- fail (printf "%s.grpcPort and %s.metricsPort must differ" $role $role) -}}
{{- end -}}
{{- $_ := include "aura.terminationGrace" (dict "root" $ "component" $role) -}}
{{- end -}}
{{- range $role := list "gateway" "worker" -}}
{{- $a := (index $.Values $role).autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas must not exceed maxReplicas" $role) -}}
{{- end -}}
{{- end -}}
{{- end -}}
