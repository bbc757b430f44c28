{{/* Chart name. */}}
{{- define "anomaly-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name. */}}
{{- define "anomaly-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "anomaly-sidecar.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "anomaly-sidecar.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "anomaly-sidecar.labels" -}}
app.kubernetes.io/name: {{ include "anomaly-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "anomaly-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* "true" when the standalone pods are a sharded StatefulSet. */}}
{{- define "anomaly-sidecar.sharded" -}}
{{- if and .Values.standalone.enabled (gt (int .Values.standalone.shards) 1) }}true{{ end }}
{{- end }}

{{/* The warm-start query's matchers: as set; else, in a service's pod, this pod's copy of
its neighbour's series. Standalone, the sidecar's own pod name matches nothing it scrapes:
each discovered pod's namespace and pod pin its queries instead. */}}
{{- define "anomaly-sidecar.warmupSelector" -}}
{{- if .Values.warmup.from }}
{{- .Values.warmup.selector | default (ternary "" "pod=\"$(POD_NAME)\"" .Values.standalone.enabled) }}
{{- end }}
{{- end }}

{{/* "true" when a discovery entry reads the Kubernetes API. */}}
{{- define "anomaly-sidecar.kubernetesSd" -}}
{{- range .Values.discovery }}{{ if .kubernetes_sd }}true{{ end }}{{ end }}
{{- end }}

{{/* "true" when the chart makes the ServiceAccount and RBAC that kubernetes_sd, or
--shard auto following its StatefulSet, needs. */}}
{{- define "anomaly-sidecar.rbac" -}}
{{- if and .Values.standalone.enabled .Values.rbac.create (or (include "anomaly-sidecar.kubernetesSd" .) (include "anomaly-sidecar.sharded" .)) }}true{{ end }}
{{- end }}

{{/* The namespaces kubernetes_sd entries watch, comma-separated (the release's for an entry
naming none, as the sidecar defaults to its own). */}}
{{- define "anomaly-sidecar.watchedNamespaces" -}}
{{- $ns := dict }}
{{- range .Values.discovery }}
{{- with .kubernetes_sd }}
{{- range (.namespaces | default (list $.Release.Namespace)) }}
{{- $_ := set $ns . "" }}
{{- end }}
{{- end }}
{{- end }}
{{- keys $ns | sortAlpha | join "," }}
{{- end }}

{{/* What kubernetes_sd reads in namespace .namespace (every namespace when empty), and
nothing else: pods (the pod role, and the Service roles' join), and the endpoints or
EndpointSlices of the roles that entries watching it use. Called with (dict "root" $
"namespace" NS). */}}
{{- define "anomaly-sidecar.discoveryRules" -}}
{{- $ns := .namespace }}
{{- $roles := list }}
{{- range .root.Values.discovery }}{{- with .kubernetes_sd }}
{{- if or (not $ns) (has $ns (.namespaces | default (list $.root.Release.Namespace))) }}
{{- $roles = append $roles .role }}
{{- end }}
{{- end }}{{- end -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- if has "endpoints" $roles }}
- apiGroups: [""]
  resources: [endpoints]
  verbs: [get, list, watch]
{{- end }}
{{- if has "endpointslice" $roles }}
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
{{- end }}
{{- end }}

{{/* The standalone pods' template: the Deployment's and the sharded StatefulSet's. */}}
{{- define "anomaly-sidecar.podTemplate" -}}
metadata:
  labels:
    {{- include "anomaly-sidecar.selectorLabels" . | nindent 4 }}
    {{- with .Values.standalone.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.standalone.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if include "anomaly-sidecar.rbac" . }}
  serviceAccountName: {{ include "anomaly-sidecar.fullname" . }}
  # The token is what kubernetes_sd (and --shard auto) reads the API with.
  automountServiceAccountToken: true
  {{- else }}
  {{- with .Values.standalone.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- /* Your own account for kubernetes_sd (rbac.create off) needs its token mounted. */}}
  automountServiceAccountToken: {{ if and .Values.standalone.serviceAccountName (include "anomaly-sidecar.kubernetesSd" .) }}true{{ else }}false{{ end }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    {{- include "anomaly-sidecar.container" . | nindent 4 }}
  volumes:
    {{- include "anomaly-sidecar.volumes" . | nindent 4 }}
  {{- with .Values.standalone.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.standalone.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.standalone.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The anomaly-sidecar container. A service's own chart includes it in its pod spec:
  containers:
    - name: app
      ...
    {{- include "anomaly-sidecar.container" (index .Subcharts "anomaly-sidecar") | nindent 4 }}
  volumes:
    {{- include "anomaly-sidecar.volumes" (index .Subcharts "anomaly-sidecar") | nindent 4 }}
*/}}
{{- define "anomaly-sidecar.container" -}}
- name: {{ .Values.containerName }}
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --rules=/etc/anomaly-sidecar/rules.yaml
    - --data-dir=/var/lib/anomaly-sidecar
    - --listen=0.0.0.0:{{ .Values.port }}
    - --scrape-interval={{ .Values.scrape.interval }}
    {{- with .Values.scrape.timeout }}
    - --scrape-timeout={{ . }}
    {{- end }}
    - --retention={{ .Values.retention }}
    - --max-series={{ .Values.maxSeries }}
    - --rules-check-interval={{ .Values.rulesCheckInterval }}
    {{- range .Values.targets }}
    - --target={{ . }}
    {{- end }}
    {{- if .Values.webEnableLifecycle }}
    - --web.enable-lifecycle
    {{- end }}
    {{- /* Webhook URLs often carry a token: they come from a Secret, as an environment
    variable (see env), never as args that `kubectl describe` and `ps` show. */}}
    {{- if or .Values.notify.webhooks .Values.notify.webhooksSecret.existingSecret }}
    - --webhook-format={{ .Values.notify.webhookFormat }}
    {{- end }}
    {{- range .Values.notify.alertmanagers }}
    - --alertmanager={{ . }}
    {{- end }}
    {{- if .Values.notify.webhookSecret.existingSecret }}
    - --webhook-secret-file=/var/run/secrets/anomaly-sidecar/webhook-secret
    {{- end }}
    {{- if .Values.webConfig.existingSecret }}
    - --web.config.file=/etc/anomaly-sidecar-web/{{ .Values.webConfig.key }}
    {{- end }}
    {{- if and .Values.discovery .Values.targetsFile.existingSecret }}
    {{- fail "discovery and targetsFile.existingSecret: put the discovery entries in the Secret's targets file" }}
    {{- end }}
    {{- if .Values.targetsFile.existingSecret }}
    - --targets-file=/etc/anomaly-sidecar-targets/{{ .Values.targetsFile.key }}
    {{- else if .Values.discovery }}
    - --targets-file=/etc/anomaly-sidecar-targets/targets.yml
    {{- end }}
    {{- if include "anomaly-sidecar.sharded" . }}
    {{- if .Values.rbac.create }}
    # I from the pod name, N from the StatefulSet's replicas (followed: scaling reshards).
    - --shard=auto
    {{- else }}
    # No RBAC to read the StatefulSet: N is fixed here, and changing it restarts the pods.
    - --shard=auto/{{ .Values.standalone.shards }}
    {{- end }}
    {{- end }}
    {{- with .Values.notify.llmUrl }}
    - --llm-url={{ . }}
    - --llm-model={{ $.Values.notify.llmModel }}
    {{- end }}
    {{- with .Values.warmup.from }}
    - --warmup-from={{ . }}
    {{- with include "anomaly-sidecar.warmupSelector" $ }}
    - --warmup-selector={{ . }}
    {{- end }}
    - --warmup-timeout={{ $.Values.warmup.timeout }}
    {{- end }}
    {{- range .Values.extraArgs }}
    - {{ . }}
    {{- end }}
  {{- $webhooks := or .Values.notify.webhooks .Values.notify.webhooksSecret.existingSecret }}
  {{- $selector := include "anomaly-sidecar.warmupSelector" . }}
  {{- $podName := or (contains "$(POD_NAME)" $selector) (include "anomaly-sidecar.sharded" .) }}
  {{- if or $podName $webhooks }}
  env:
    {{- if $podName }}
    # $(POD_NAME) in --warmup-selector: this pod's copy of each series in Prometheus; and
    # the StatefulSet ordinal --shard auto reads.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- end }}
    {{- if include "anomaly-sidecar.sharded" . }}
    # Where --shard auto finds its StatefulSet.
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- end }}
    {{- if $webhooks }}
    # Comma-separated webhook URLs, from a Secret (the chart's, or notify.webhooksSecret).
    - name: ANOMALY_SIDECAR_WEBHOOK
      valueFrom:
        secretKeyRef:
          {{- with .Values.notify.webhooksSecret.existingSecret }}
          name: {{ . }}
          key: {{ $.Values.notify.webhooksSecret.key }}
          {{- else }}
          name: {{ include "anomaly-sidecar.fullname" . }}-webhooks
          key: webhooks
          {{- end }}
    {{- end }}
  {{- end }}
  ports:
    - name: http-metrics
      containerPort: {{ .Values.port }}
      protocol: TCP
  {{- if .Values.webConfig.existingSecret }}
  # Behind the web config every endpoint may need credentials or TLS a kubelet probe lacks.
  livenessProbe:
    tcpSocket:
      port: http-metrics
    periodSeconds: 10
    failureThreshold: 6
  readinessProbe:
    tcpSocket:
      port: http-metrics
    periodSeconds: 5
  {{- else }}
  livenessProbe:
    httpGet:
      path: /-/healthy
      port: http-metrics
    periodSeconds: 10
    failureThreshold: 6
  readinessProbe:
    httpGet:
      path: /-/ready
      port: http-metrics
    periodSeconds: 5
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: anomaly-sidecar-rules
      mountPath: /etc/anomaly-sidecar
      readOnly: true
    - name: anomaly-sidecar-data
      mountPath: /var/lib/anomaly-sidecar
    {{- if .Values.notify.webhookSecret.existingSecret }}
    # Not under /etc/anomaly-sidecar: a mount point inside the read-only ConfigMap volume
    # cannot be created.
    - name: anomaly-sidecar-secret
      mountPath: /var/run/secrets/anomaly-sidecar
      readOnly: true
    {{- end }}
    {{- if .Values.webConfig.existingSecret }}
    # The whole Secret: the web config names its certificate and key relative to itself.
    - name: anomaly-sidecar-web
      mountPath: /etc/anomaly-sidecar-web
      readOnly: true
    {{- end }}
    {{- if or .Values.targetsFile.existingSecret .Values.discovery }}
    - name: anomaly-sidecar-targets
      mountPath: /etc/anomaly-sidecar-targets
      readOnly: true
    {{- end }}
{{- end }}

{{/* Volumes of the container above: the rules ConfigMap, the data dir, the Secrets. */}}
{{- define "anomaly-sidecar.volumes" -}}
- name: anomaly-sidecar-rules
  configMap:
    name: {{ include "anomaly-sidecar.fullname" . }}-rules
{{- if not (and (include "anomaly-sidecar.sharded" .) .Values.persistence.enabled) }}
{{- /* A sharded StatefulSet's claims come from its volumeClaimTemplates, one per replica. */}}
- name: anomaly-sidecar-data
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "anomaly-sidecar.fullname" .)) }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}
  {{- end }}
{{- end }}
{{- if .Values.notify.webhookSecret.existingSecret }}
- name: anomaly-sidecar-secret
  secret:
    secretName: {{ .Values.notify.webhookSecret.existingSecret }}
    items:
      - key: {{ .Values.notify.webhookSecret.key }}
        path: webhook-secret
{{- end }}
{{- with .Values.webConfig.existingSecret }}
- name: anomaly-sidecar-web
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.targetsFile.existingSecret }}
- name: anomaly-sidecar-targets
  secret:
    secretName: {{ . }}
{{- else }}
{{- if .Values.discovery }}
- name: anomaly-sidecar-targets
  configMap:
    name: {{ include "anomaly-sidecar.fullname" . }}-targets
{{- end }}
{{- end }}
{{- end }}
