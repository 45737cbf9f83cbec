{{/*
The services of the chart: component name -> values key, module, env prefix, gRPC port,
whether clients balance across replicas (headless Service, dns:/// round_robin), whether it
stores objects in S3, and its dependency address settings (setting -> component).
*/}}
{{- define "mtopt.components" -}}
episode-store:
  key: episodeStore
  module: mtopt.episode_store
  prefix: MTOPT_EPISODE_STORE_
  port: 50051
  headless: true
  storage: true
  deps: {}
success-detector:
  key: successDetector
  module: mtopt.success_detector
  prefix: MTOPT_SUCCESS_DETECTOR_
  port: 50052
  headless: true
  storage: true
  deps: {registry_address: model-registry}
log-replay:
  key: logReplay
  module: mtopt.log_replay
  prefix: MTOPT_LOG_REPLAY_
  port: 50053
  headless: false
  storage: true
  deps: {store_address: episode-store, success_detector_address: success-detector}
bellman:
  key: bellman
  module: mtopt.bellman
  prefix: MTOPT_BELLMAN_
  port: 50054
  headless: false
  storage: false
  deps: {log_replay_address: log-replay, trainer_address: trainer, registry_address: model-registry}
model-registry:
  key: modelRegistry
  module: mtopt.model_registry
  prefix: MTOPT_MODEL_REGISTRY_
  port: 50055
  headless: true
  storage: true
  deps: {}
trainer:
  key: trainer
  module: mtopt.trainer
  prefix: MTOPT_TRAINER_
  port: 50056
  headless: false
  storage: true
  deps: {registry_address: model-registry}
{{- end -}}

{{- define "mtopt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mtopt.fullname" -}}
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

{{- define "mtopt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels shared by every object: pass (dict "root" $ "component" "episode-store"). */}}
{{- define "mtopt.labels" -}}
helm.sh/chart: {{ include "mtopt.chart" .root }}
{{ include "mtopt.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mtopt
{{- end -}}

{{- define "mtopt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mtopt.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Object name of a component: (dict "root" $ "component" "episode-store"). */}}
{{- define "mtopt.componentName" -}}
{{- printf "%s-%s" (include "mtopt.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* gRPC target of a component for clients: dns:///<service>:<port> (round_robin over the
headless Service's pod addresses, or the ClusterIP of the others). */}}
{{- define "mtopt.target" -}}
{{- $c := index (include "mtopt.components" .root | fromYaml) .component -}}
{{- printf "dns:///%s:%v" (include "mtopt.componentName" .) $c.port -}}
{{- end -}}

{{/* An image reference: (dict "image" <component image map> "default" <global image map> "root" $). */}}
{{- define "mtopt.image" -}}
{{- $img := merge (deepCopy (default dict .image)) .default -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}

{{- define "mtopt.imagePullPolicy" -}}
{{- $img := merge (deepCopy (default dict .image)) .default -}}
{{- $img.pullPolicy -}}
{{- end -}}

{{/* Storage: the S3 endpoint and the Secret holding the credentials. */}}
{{- define "mtopt.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio:9000" (include "mtopt.fullname" .) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "mtopt.s3Secret" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio" (include "mtopt.fullname" .) -}}
{{- else -}}
{{- .Values.s3.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Refuses value combinations the schema cannot express, with a message saying what to do. */}}
{{- define "mtopt.validate" -}}
{{- if and .Values.bellman.hpa.enabled .Values.bellman.keda.enabled -}}
{{- fail "bellman.hpa.enabled and bellman.keda.enabled are both true: two autoscalers would fight over the Bellman replicas; enable only one of them" -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.s3.endpoint -}}
{{- fail "s3.endpoint is set while minio.enabled=true: set minio.enabled=false to use an external S3, or clear s3.endpoint to use the bundled MinIO" -}}
{{- end -}}
{{- if not .Values.minio.enabled -}}
{{- if not .Values.s3.endpoint -}}
{{- fail "minio.enabled=false needs an external S3: set s3.endpoint (host:port) and s3.existingSecret" -}}
{{- end -}}
{{- if not .Values.s3.existingSecret -}}
{{- fail "s3.endpoint is set but s3.existingSecret is empty: name a Secret with the keys s3.accessKeyKey and s3.secretKeyKey" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.trainer.enabled (gt (int .Values.trainer.replicas) 1) -}}
{{- fail "trainer.replicas must be 0 or 1: the trainer holds the optimiser state in one process" -}}
{{- end -}}
{{- end -}}

{{/* The S3 port of the storage endpoint, for the egress NetworkPolicy. */}}
{{- define "mtopt.s3Port" -}}
{{- $parts := splitList ":" (include "mtopt.s3Endpoint" .) -}}
{{- if gt (len $parts) 1 -}}
{{- last $parts -}}
{{- else if .Values.s3.secure -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}
