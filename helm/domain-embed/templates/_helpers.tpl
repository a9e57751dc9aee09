{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "de.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "de.fullname" -}}
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

{{- define "de.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "de.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "de.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "de.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "de.selectorLabels" -}}
app.kubernetes.io/name: {{ include "de.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "de.servingSelectorLabels" -}}
{{ include "de.selectorLabels" . }}
app.kubernetes.io/component: serving
{{- end -}}

{{/* Run identity ------------------------------------------------------------------------
The run name is a hash of .Values.pipeline.run only (corpus, base model, LLM, hyperparameters,
revision). toJson sorts map keys, so the hash is stable. Scale-out knobs (nodes, GPUs,
launcher) live outside pipeline.run and do not rename the run. */}}
{{- define "de.runName" -}}
{{- printf "r-%s" (toJson .Values.pipeline.run | sha256sum | trunc 10) -}}
{{- end -}}

{{- define "de.runDir" -}}
{{- printf "/data/runs/%s" (include "de.runName" .) -}}
{{- end -}}

{{/* Images: a digest wins over the tag; a tag is always required. */}}
{{- define "de.image" -}}
{{- $img := index .root.Values.images .name -}}
{{- $tag := required (printf "images.%s.tag is required (pin a full version)" .name) $img.tag -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Job names carry the run name, so a retune creates new Jobs instead of mutating old ones, and,
given .spec (the Job's rendered spec, or the values its pods are built from), a short hash of it: the API
server refuses any change to an existing Job's pod template, so a Job whose spec changed must be a new
Job. At most 30 + 1 + 8 + 1 + 12 + 1 + 6 = 59 characters. */}}
{{- define "de.jobName" -}}
{{- $base := printf "%s-%s-%s" (include "de.fullname" .root | trunc 30 | trimSuffix "-") .stage (include "de.runName" .root) -}}
{{- if .spec -}}
{{- printf "%s-%s" $base (.spec | sha256sum | trunc 6) -}}
{{- else -}}
{{- $base -}}
{{- end -}}
{{- end -}}

{{- define "de.claimName" -}}
{{- default (printf "%s-data" (include "de.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{/* Hydra overrides for every stage: the pipeline.run values as key=value arguments. */}}
{{- define "de.hydraOverrides" -}}
{{- $r := .Values.pipeline.run -}}
- {{ printf "name=%s" (include "de.runName" .) | quote }}
- {{ printf "model=%s" $r.modelConfig | quote }}
- {{ printf "model.path=%s" $r.baseModelPath | quote }}
- {{ printf "corpus.path=%s" $r.corpusPath | quote }}
- "llm=nim"
{{- if eq $r.llm.mode "nim" }}
- {{ printf "llm.base_url=%s" $r.llm.nimUrl | quote }}
{{- else }}
- "llm.base_url=https://integrate.api.nvidia.com/v1"
{{- end }}
- {{ printf "llm.model=%s" $r.llm.model | quote }}
{{- /* Helm reads every number as a float64, which %v prints as 5e+06 (Hydra then refuses it for an int),
and lists as [1 2]: anything but a string goes through JSON, which Hydra's override grammar reads. */}}
{{- range $k, $v := $r.overrides }}
{{- if kindIs "map" $v }}
{{- fail (printf "pipeline.run.overrides.%s is a map; give each leaf as its own dotted key (%s.<field>: value)" $k $k) }}
{{- end }}
- {{ printf "%s=%s" $k (ternary $v (toJson $v) (kindIs "string" $v)) | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level boilerplate shared by every pod. */}}
{{- define "de.podCommon" -}}
{{- include "de.podCommonAs" (dict "root" . "serviceAccount" (include "de.serviceAccountName" .)) -}}
{{- end -}}

{{/* The same, for a pod that runs as another ServiceAccount (the publish Job's restart container). */}}
{{- define "de.podCommonAs" -}}
serviceAccountName: {{ .serviceAccount }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "de.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Environment every Python container gets: no bytecode on a read-only root, HOME on /tmp,
and no hub downloads at run time. */}}
{{- define "de.pythonEnv" -}}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end -}}

{{/* An init container that waits for an upstream stage's manifest.json on the volume.
Args: root, stage (the upstream stage folder), image (images key). */}}
{{- define "de.waitFor" -}}
- name: wait-{{ .stage }}
  image: {{ include "de.image" (dict "root" .root "name" (default "pipeline" .image)) }}
  imagePullPolicy: {{ .root.Values.images.pullPolicy }}
  command: ["python", "/scripts/model_repo.py", "wait",
            "--path", {{ printf "%s/%s/manifest.json" (include "de.runDir" .root) .stage | quote }},
            {{- if .gate }}
            "--gate-report", {{ printf "%s/evaluate/report.json" (include "de.runDir" .root) | quote }},
            {{- end }}
            "--timeout", {{ .root.Values.pipeline.waitTimeoutSeconds | quote }}]
  env:
    {{- include "de.pythonEnv" .root | nindent 4 }}
  {{- include "de.containerSecurity" .root | nindent 2 }}
  resources:
    requests: {cpu: 50m, memory: 64Mi, ephemeral-storage: 64Mi}
    limits: {cpu: 200m, memory: 128Mi, ephemeral-storage: 128Mi}
  volumeMounts:
    - {name: data, mountPath: /data, readOnly: true}
    - {name: scripts, mountPath: /scripts, readOnly: true}
    - {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* A pipeline stage container. Args: root, name, image, command (list), resources, extraEnv, ports. */}}
{{- define "de.stageContainer" -}}
- name: {{ .name }}
  image: {{ include "de.image" (dict "root" .root "name" (default "pipeline" .image)) }}
  imagePullPolicy: {{ .root.Values.images.pullPolicy }}
  command:
    {{- toYaml .command | nindent 4 }}
  args:
    - "--run-dir"
    - {{ include "de.runDir" .root | quote }}
    {{- include "de.hydraOverrides" .root | nindent 4 }}
    {{- with .extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "de.pythonEnv" .root | nindent 4 }}
    {{- /* only synthesis calls the LLM: no other stage (nor any training rank) holds the key */}}
    {{- if and (eq .name "synth") (eq .root.Values.pipeline.run.llm.mode "buildNvidia") }}
    - name: NVIDIA_API_KEY
      valueFrom:
        secretKeyRef:
          name: {{ required "secrets.nvidiaApiKey.existingSecret is required when pipeline.run.llm.mode=buildNvidia" .root.Values.secrets.nvidiaApiKey.existingSecret }}
          key: {{ .root.Values.secrets.nvidiaApiKey.key }}
    {{- end }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- include "de.containerSecurity" .root | nindent 2 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  volumeMounts:
    - {name: data, mountPath: /data}
    - {name: tmp, mountPath: /tmp}
    - {name: shm, mountPath: /dev/shm}
{{- end -}}

{{- define "de.pipelineVolumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "de.claimName" . }}
- name: scripts
  configMap:
    name: {{ include "de.fullname" . }}-scripts
    defaultMode: 0555
- name: tmp
  emptyDir:
    sizeLimit: 4Gi
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: 8Gi
{{- end -}}

{{- define "de.pipelineLabels" -}}
{{ include "de.labels" .root }}
app.kubernetes.io/component: pipeline
domain-embed/run: {{ include "de.runName" .root }}
domain-embed/stage: {{ .stage }}
{{- end -}}


{{/* A Kubernetes quantity ("20Gi", "512Mi", "2G", "1000") in bytes, as an int64. */}}
{{- define "de.bytes" -}}
{{- $q := toString . -}}
{{- $m := regexFind "^[0-9]+" $q -}}
{{- if not $m }}{{ fail (printf "%q is not a storage quantity like 20Gi" $q) }}{{ end -}}
{{- $unit := trimPrefix $m $q -}}
{{- $mult := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- if not (hasKey $mult $unit) }}{{ fail (printf "%q: unit %q is not one of Ki Mi Gi Ti k M G T" $q $unit) }}{{ end -}}
{{- mul (int64 $m) (index $mult $unit) -}}
{{- end -}}
