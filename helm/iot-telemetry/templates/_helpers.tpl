{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "iot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: "<release>-<chart>" unless the release name already contains the chart name.
Component objects append "-<component>", so keep room for the longest suffix.
*/}}
{{- define "iot.fullname" -}}
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

{{/* Name of a component's objects: (dict "ctx" $ "component" "storage"). */}}
{{- define "iot.componentName" -}}
{{- printf "%s-%s" (include "iot.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "iot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object. */}}
{{- define "iot.labels" -}}
helm.sh/chart: {{ include "iot.chart" . }}
{{ include "iot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: iot-telemetry
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "iot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component: (dict "ctx" $ "component" "storage"). */}}
{{- define "iot.componentLabels" -}}
{{ include "iot.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of a component; also used as NetworkPolicy peers. */}}
{{- define "iot.componentSelectorLabels" -}}
{{ include "iot.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "iot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "iot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of a service: (dict "ctx" $ "component" "storage"). */}}
{{- define "iot.image" -}}
{{- $v := index .ctx.Values .component -}}
{{- $repo := $v.image.repository -}}
{{- if not $repo -}}
{{- $repo = printf "%s/%s" .ctx.Values.image.repositoryPrefix .component -}}
{{- if .ctx.Values.image.registry -}}
{{- $repo = printf "%s/%s" .ctx.Values.image.registry $repo -}}
{{- end -}}
{{- end -}}
{{- $tag := $v.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* ---------- in-cluster addresses ---------- */}}

{{- define "iot.storageUrl" -}}
{{- printf "http://%s:%d" (include "iot.componentName" (dict "ctx" . "component" "storage")) (int .Values.storage.grpcPort) -}}
{{- end -}}

{{- define "iot.sessionUrl" -}}
{{- printf "http://%s:%d" (include "iot.componentName" (dict "ctx" . "component" "session")) (int .Values.session.grpcPort) -}}
{{- end -}}

{{- define "iot.mqttHost" -}}
{{- include "iot.componentName" (dict "ctx" . "component" "mosquitto") -}}
{{- end -}}

{{/* Ingest and api use the plain listener when there is one, else the TLS listener. */}}
{{- define "iot.mqttTls" -}}
{{- if not .Values.mosquitto.plainListener -}}true{{- end -}}
{{- end -}}

{{- define "iot.mqttPort" -}}
{{- ternary .Values.mosquitto.service.tlsPort .Values.mosquitto.service.port (eq (include "iot.mqttTls" .) "true") -}}
{{- end -}}

{{/* TLS settings of an in-cluster MQTT client: (dict "ctx" $ "prefix" "INGEST"). */}}
{{- define "iot.mqttTlsEnv" -}}
{{- if eq (include "iot.mqttTls" .ctx) "true" }}
- name: {{ .prefix }}_MQTT_TLS
  value: "true"
- name: {{ .prefix }}_MQTT_CA_FILE
  value: /etc/iot/mqtt-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "iot.otlpEndpoint" -}}
{{- if .Values.otelCollector.enabled -}}
{{- printf "http://%s:4317" (include "iot.componentName" (dict "ctx" . "component" "otel-collector")) -}}
{{- else -}}
{{- .Values.tracing.otlpEndpoint -}}
{{- end -}}
{{- end -}}

{{/* ---------- Secrets: the chart's own or existing ones ---------- */}}

{{- define "iot.databaseSecretName" -}}
{{- if .Values.mariadb.enabled -}}
{{- default (include "iot.componentName" (dict "ctx" . "component" "mariadb")) .Values.mariadb.auth.existingSecret -}}
{{- else -}}
{{- default (include "iot.componentName" (dict "ctx" . "component" "database")) .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "iot.databaseSecretKey" -}}
{{- if .Values.mariadb.enabled -}}url{{- else -}}{{ .Values.externalDatabase.existingSecretUrlKey }}{{- end -}}
{{- end -}}

{{- define "iot.redisSecretName" -}}
{{- if .Values.redis.enabled -}}
{{- default (include "iot.componentName" (dict "ctx" . "component" "redis")) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- default (include "iot.componentName" (dict "ctx" . "component" "redis-url")) .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "iot.redisSecretKey" -}}
{{- if .Values.redis.enabled -}}url{{- else -}}{{ .Values.externalRedis.existingSecretUrlKey }}{{- end -}}
{{- end -}}

{{- define "iot.mqttSecretName" -}}
{{- default (include "iot.componentName" (dict "ctx" . "component" "mqtt")) .Values.mosquitto.auth.existingSecret -}}
{{- end -}}

{{/*
A password that is generated once and then kept: reuse the value stored in the live Secret
(lookup returns nothing under `helm template`, then a fresh one is generated).
(dict "ctx" $ "secret" NAME "key" KEY "value" EXPLICIT)
*/}}
{{- define "iot.password" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---------- pod pieces shared by the services ---------- */}}

{{/* Environment every service gets: log format and OpenTelemetry. (dict "ctx" $ "component" c) */}}
{{- define "iot.commonEnv" -}}
- name: LOG_FORMAT
  value: {{ .ctx.Values.logFormat | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "iot-%s" .component | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.namespace=iot-telemetry,service.version={{ .ctx.Chart.AppVersion }},k8s.namespace.name=$(K8S_NAMESPACE_NAME),k8s.pod.name=$(K8S_POD_NAME)"
{{- with (include "iot.otlpEndpoint" .ctx) }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $.ctx.Values.tracing.samplerRatio | quote }}
{{- end }}
{{- end -}}

{{/*
The pod spec of a service: (dict "ctx" $ "component" "storage" "env" (include ...) "ports" (include ...)).
Probes, resources, security contexts and scheduling come from the component's values block.
*/}}
{{- define "iot.servicePodSpec" -}}
{{- $v := index .ctx.Values .component -}}
serviceAccountName: {{ include "iot.serviceAccountName" .ctx }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
containers:
  - name: {{ .component }}
    image: {{ include "iot.image" . | quote }}
    imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
    {{- with $v.args }}
    args:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    ports:
      {{- .ports | nindent 6 }}
    env:
      {{- include "iot.commonEnv" . | nindent 6 }}
      {{- .env | nindent 6 }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    livenessProbe:
      {{- toYaml $v.livenessProbe | nindent 6 }}
    readinessProbe:
      {{- toYaml $v.readinessProbe | nindent 6 }}
    {{- with $v.startupProbe }}
    startupProbe:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- toYaml .ctx.Values.containerSecurityContext | nindent 6 }}
    {{- if and (has .component (list "ingest" "api")) (eq (include "iot.mqttTls" .ctx) "true") }}
    volumeMounts:
      - {name: mqtt-ca, mountPath: /etc/iot/mqtt-ca, readOnly: true}
{{- end }}
{{- if and (has .component (list "ingest" "api")) (eq (include "iot.mqttTls" .ctx) "true") }}
volumes:
  # The CA of the broker's TLS listener (ca.crt of its kubernetes.io/tls Secret).
  - name: mqtt-ca
    secret:
      secretName: {{ .ctx.Values.mosquitto.tls.existingSecret }}
      items:
        - {key: ca.crt, path: ca.crt}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else }}
# Spread replicas over nodes when the scheduler can; never block scheduling on it.
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "iot.componentSelectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* A container security context for third-party images with their own user. */}}
{{- define "iot.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}
