{{/* The labels every object carries; `component` names the service. */}}
{{- define "quarry.labels" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selects the pods of one component. */}}
{{- define "quarry.selector" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The environment the release runs, which must have its directory under env/. */}}
{{- define "quarry.environment" -}}
{{- $env := required "set environment (staging or production) in the environment's values file" .Values.environment -}}
{{- if not (.Files.Get (printf "env/%s/wfe.toml" $env)) -}}
{{- fail (printf "env/%s/ does not exist: environment must name a directory of deploy/env" $env) -}}
{{- end -}}
{{- $env -}}
{{- end }}

{{/* A service's configuration arguments: its base file, then its environment's overlay, as `quarry env check`
     merges them. */}}
{{- define "quarry.configArgs" -}}
- --config
- /etc/quarry/base/{{ . }}.toml
- --config
- /etc/quarry/env/{{ . }}.toml
{{- end }}

{{/* The image every container runs. */}}
{{- define "quarry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The restricted security context of every container. */}}
{{- define "quarry.containerSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The replica count of service `.name` (spec `.svc`): values.yaml's, or the environment's `scale` for it. */}}
{{- define "quarry.replicas" -}}
{{- $scaled := index (.root.Values.scale | default dict) .name -}}
{{- if $scaled -}}{{ $scaled }}{{- else -}}{{ .svc.replicas }}{{- end -}}
{{- end }}
