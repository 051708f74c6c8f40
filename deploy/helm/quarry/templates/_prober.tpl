{{/* The Pushgateway job `quarry probe --push-gateway` pushes under (with the environment in its grouping key): fixed
     by the probe, not a setting, so the alerts and the dashboard name it too. */}}
{{- define "quarry.prober.pushJob" -}}
quarry-probe
{{- end }}

{{/* The minutes between two probes: N of the only schedule form accepted, "every N minutes", since the alerts'
     windows (two failed probes in a row, three missed) are counted in it. */}}
{{- define "quarry.prober.intervalMinutes" -}}
{{- $schedule := .Values.prober.schedule -}}
{{- if not (regexMatch "^\\*/[1-9][0-9]? \\* \\* \\* \\*$" $schedule) -}}
{{- fail (printf "prober.schedule %q: use */N * * * * (every N minutes), which the probe alerts' windows derive from" $schedule) -}}
{{- end -}}
{{- regexFind "[0-9]+" $schedule -}}
{{- end }}

{{/* The name the probe certifies: under the environment's own ACME host, so that each environment's probe has its
     own name (and its own _acme-challenge TXT record) without a setting that could differ between them. */}}
{{- define "quarry.prober.name" -}}
{{ .Values.prober.namePrefix }}.{{ required "set wfe.externalHost in the environment's values file" .Values.wfe.externalHost }}
{{- end }}

{{/* The probe's pod, shared by the CronJob and the `helm test` Pod so that a test run is exactly a scheduled one. */}}
{{- define "quarry.prober.podSpec" -}}
restartPolicy: Never
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  fsGroup: 10001
containers:
  - name: probe
    image: {{ include "quarry.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    # The public URL, as subscribers reach it: the probe goes through the load balancer, DNS and the certificate
    # they see, then checks what they rely on afterwards (SCTs, the revocation in a CRL).
    args:
      - probe
      - https://{{ required "set wfe.externalHost in the environment's values file" .Values.wfe.externalHost }}/directory
      - --environment
      - {{ include "quarry.environment" . }}
      - --image-digest
      - {{ .Values.image.digest | quote }}
      - --account-key
      - /etc/quarry/prober/account/account.key
      - --dns-hook
      - /etc/quarry/prober/hook/dns-hook
      - --name
      - {{ include "quarry.prober.name" . }}
      - --report-json
      - /tmp/report.json
      - --push-gateway
      - {{ .Values.prober.pushGateway | quote }}
      - --crl-wait-secs
      - {{ .Values.prober.crlWaitSecs | quote }}
      - --min-scts
      - {{ .Values.prober.minScts | quote }}
    env:
      # The operator's hook may keep state or credentials caches in $HOME; the root filesystem is read-only.
      - name: HOME
        value: /tmp
    resources:
      {{- toYaml .Values.prober.resources | nindent 6 }}
    securityContext:
      {{- include "quarry.containerSecurity" . | nindent 6 }}
    volumeMounts:
      - name: account
        mountPath: /etc/quarry/prober/account
        readOnly: true
      - name: dns-hook
        mountPath: /etc/quarry/prober/hook
        readOnly: true
      - name: tmp
        mountPath: /tmp
volumes:
  # `account.key`: the prober's own ACME account (P-256, PKCS#8 PEM), the same every run: a new account each time
  # would soon exceed NewRegistrationsPerIPAddress from the cluster's egress address.
  - name: account
    secret:
      secretName: {{ .Values.prober.secrets.account }}
      defaultMode: 0440
  # `dns-hook` and whatever credentials it reads; the hook must be executable, and nothing else runs in the pod.
  - name: dns-hook
    secret:
      secretName: {{ .Values.prober.secrets.dnsHook }}
      defaultMode: 0555
  - name: tmp
    emptyDir: {}
{{- end }}
