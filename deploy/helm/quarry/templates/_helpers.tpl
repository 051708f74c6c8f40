{{/* The labels every object carries; `component` names the service. */}}
{{- define "quarry.labels" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
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

{{/* The image every container runs, by digest: a tag can be moved, a digest names one build. */}}
{{- define "quarry.image" -}}
{{- if hasKey .Values.image "tag" -}}
{{- fail "image.tag is not accepted: pin the image by image.digest (sha256:…), from deploy/releases/<tier>.yaml" -}}
{{- end -}}
{{- $digest := required "image.digest: pass the tier's release file, -f deploy/releases/<tier>.yaml" .Values.image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $digest) -}}
{{- fail (printf "image.digest %q is not sha256:<64 hex digits>" $digest) -}}
{{- end -}}
{{ .Values.image.repository }}@{{ $digest }}
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

{{/* The names the wfe's LoadBalancer answers to, comma-separated: the external host, then every host of the
     environment's issuer and CRL URLs (deploy/env/<environment>/ca.toml). */}}
{{- define "quarry.publicHosts" -}}
{{- $hosts := list (required "set wfe.externalHost in the environment's values file" .Values.wfe.externalHost) -}}
{{- $ca := .Files.Get (printf "env/%s/ca.toml" (include "quarry.environment" .)) -}}
{{- range regexFindAll "(issuer_url|crl_url_prefix) = \"http://[^/\"]+" $ca -1 -}}
{{- $hosts = append $hosts (regexReplaceAll "^.*http://" . "") -}}
{{- end -}}
{{- $hosts | uniq | join "," -}}
{{- end }}
