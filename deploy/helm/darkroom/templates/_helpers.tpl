{{/* The chart's name. */}}
{{- define "darkroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name: the release name, and the chart's unless it contains it. */}}
{{- define "darkroom.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "darkroom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "darkroom.labels" -}}
helm.sh/chart: {{ include "darkroom.chart" . }}
app.kubernetes.io/name: {{ include "darkroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: darkroom
{{- end -}}

{{/* A service's objects: dict "root" $ "name" <service>. */}}
{{- define "darkroom.serviceName" -}}
{{- printf "%s-%s" (include "darkroom.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "darkroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "darkroom.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "darkroom.serviceLabels" -}}
{{ include "darkroom.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "darkroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "darkroom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "darkroom.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the four secret variables come from: the chart's, or existingSecret. */}}
{{- define "darkroom.secretName" -}}
{{- default (include "darkroom.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* The settings every service shares (the ConfigMaps' common part), as a dict. */}}
{{- define "darkroom.commonConfig" -}}
MONGO_DB: {{ .Values.mongo.database | quote }}
AMQP_NAMESPACE: {{ .Values.amqp.namespace | quote }}
S3_ENDPOINT_URL: {{ required "s3.endpointUrl is required" .Values.s3.endpointUrl | quote }}
{{- if .Values.s3.publicEndpointUrl }}
S3_PUBLIC_ENDPOINT_URL: {{ .Values.s3.publicEndpointUrl | quote }}
{{- end }}
S3_REGION: {{ .Values.s3.region | quote }}
S3_BUCKET: {{ .Values.s3.bucket | quote }}
PUBLIC_BASE_URL: {{ .Values.publicBaseUrl | quote }}
HTTP_HOST: "0.0.0.0"
LOG_LEVEL: {{ .Values.config.logLevel | quote }}
LOG_JSON: {{ .Values.config.logJson | toString | quote }}
SHUTDOWN_GRACE_SECONDS: {{ .Values.config.shutdownGraceSeconds | toString | quote }}
{{- end -}}

{{/* The secret variables: never in a ConfigMap. */}}
{{- define "darkroom.secretVars" -}}
MONGO_URL AMQP_URL S3_ACCESS_KEY S3_SECRET_KEY
{{- end -}}

{{/* One service's settings (its ConfigMap's data), as YAML: dict "root" $ "name" <service>
"svc" <its values>. Later wins: the common settings, config.extra, the service's own env, its
HTTP_PORT. */}}
{{- define "darkroom.serviceConfig" -}}
{{- $data := fromYaml (include "darkroom.commonConfig" .root) -}}
{{- range $key, $value := .root.Values.config.extra }}
{{- $_ := set $data $key ($value | toString) -}}
{{- end }}
{{- range $key, $value := .svc.env }}
{{- $_ := set $data $key ($value | toString) -}}
{{- end }}
{{- $_ := set $data "HTTP_PORT" (.svc.port | toString) -}}
{{- $secretVars := splitList " " (include "darkroom.secretVars" .root) -}}
{{- range $key, $_ := $data }}
{{- if or (has $key $secretVars) (has $key (keys $.root.Values.secret.extra)) }}
{{- fail (printf "%s is a secret: set it in secret (or existingSecret), not in config.extra or services.%s.env" $key $.name) }}
{{- end }}
{{- end }}
{{- toYaml $data -}}
{{- end -}}
