{{/* The namespace the server runs in. */}}
{{- define "tailscale-gateway.namespace" -}}
{{- required "namespace.name is required" .Values.namespace.name -}}
{{- end -}}

{{/* "true" when cert-manager issues the serving certificate; fails on an unknown mode. */}}
{{- define "tailscale-gateway.certManager" -}}
{{- $mode := .Values.certificates.mode -}}
{{- if eq $mode "certManager" -}}true
{{- else if eq $mode "selfManaged" -}}false
{{- else -}}{{- fail (printf "certificates.mode must be selfManaged or certManager, not %q" $mode) -}}
{{- end -}}
{{- end -}}

{{/* metadata.annotations for objects whose caBundle cert-manager's cainjector fills. */}}
{{- define "tailscale-gateway.injectCA" -}}
{{- if eq (include "tailscale-gateway.certManager" .) "true" }}
annotations:
  cert-manager.io/inject-ca-from: {{ include "tailscale-gateway.namespace" . }}/tailscale-gateway-serving
{{- end -}}
{{- end -}}

{{- define "tailscale-gateway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" .Chart.AppVersion) }}
{{- end -}}
