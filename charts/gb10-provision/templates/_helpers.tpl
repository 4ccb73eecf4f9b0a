{{/*
Names and labels.
*/}}
{{- define "gb10-provision.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gb10-provision.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gb10-provision.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gb10-provision.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gb10-provision.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gb10-provision.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Where the config file sits in the container; the ConfigMap key is its base name.
*/}}
{{- define "gb10-provision.configDir" -}}/etc/gb10-provision{{- end }}

{{/* Where the admin token Secret is mounted (adminTokenSecret). */}}
{{- define "gb10-provision.adminTokenDir" -}}/etc/gb10-provision-admin{{- end }}

{{/* Where the BMC CA bundle ConfigMap is mounted (bmcCaConfigMap). */}}
{{- define "gb10-provision.bmcCaDir" -}}/etc/gb10-provision-bmc-ca{{- end }}

{{/*
Render-time checks with messages that say what to set. The daemon validates the
rest (address syntax, range inside the subnet, …) in `gb10-provision check`, which
the chart test runs on the rendered config.
*/}}
{{- define "gb10-provision.validate" -}}
{{- $v := .Values -}}
{{- if not $v.lanIface -}}
{{- fail "lanIface is required and has no default: set it to the NAME of the provisioning LAN interface on the node, e.g. --set lanIface=enp1s0f1. Every listener is confined to it." -}}
{{- end -}}
{{- if not (has $v.mode (list "direct" "proxy")) -}}
{{- fail (printf "mode = %q: use direct (full DHCP on an isolated LAN) or proxy (proxy-DHCP beside the site's DHCP server)" (toString $v.mode)) -}}
{{- end -}}
{{- if not (has $v.xdp.mode (list "auto" "required" "off")) -}}
{{- fail (printf "xdp.mode = %q: use auto, required or off" (toString $v.xdp.mode)) -}}
{{- end -}}
{{- if not (contains "/" (toString $v.lanIp)) -}}
{{- fail (printf "lanIp = %q: write ADDRESS/PREFIX like 10.88.0.1/24 (the seed chart's bare address needs its prefix now)" (toString $v.lanIp)) -}}
{{- end -}}
{{- if contains "," (toString $v.dhcpRange) -}}
{{- fail (printf "dhcpRange = %q: write START-END like 10.88.0.100-10.88.0.200; the lease time is leaseTime now" (toString $v.dhcpRange)) -}}
{{- end -}}
{{- if and (not $v.nodeName) (not $v.nodeSelector) -}}
{{- fail "set nodeName (or nodeSelector) to the node that owns the provisioning LAN: unpinned, this DaemonSet would start a DHCP server on every node" -}}
{{- end -}}
{{- end }}

{{/*
Which value renders each config key the chart owns; extraConfig may not set them.
*/}}
{{- define "gb10-provision.ownedKeys" -}}
{{- toJson (dict
  "lan_iface" "lanIface"
  "lan_ip" "lanIp"
  "mode" "mode"
  "data_path" "dataPath"
  "http_port" "httpPort"
  "health_port" "healthPort"
  "proxy_subnet" "proxySubnet"
  "dhcp.range" "dhcpRange"
  "dhcp.lease_time" "leaseTime"
  "xdp.mode" "xdp.mode"
  "admin.token_file" "adminTokenSecret"
  "admin.bmc_ca_file" "bmcCaConfigMap") -}}
{{- end }}

{{/*
Fails when extraConfig sets a key the chart owns. Tables the chart owns keys in
(dhcp, xdp) may take further keys; anything else under extraConfig is the user's.
Input: dict "extra" MAP "path" PREFIX "owned" OWNED-KEYS.
*/}}
{{- define "gb10-provision.checkExtra" -}}
{{- $owned := .owned -}}
{{- $prefix := .path -}}
{{- range $key, $val := .extra -}}
{{- $path := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") -}}
{{- if hasKey $owned $path -}}
{{- fail (printf "extraConfig.%s: the chart renders `%s` from the value `%s`; set that value instead (one key, one source)" $path $path (get $owned $path)) -}}
{{- end -}}
{{- $ownsInside := false -}}
{{- range $o, $_ := $owned -}}
{{- if hasPrefix (printf "%s." $path) $o -}}{{- $ownsInside = true -}}{{- end -}}
{{- end -}}
{{- if $ownsInside -}}
{{- if not (kindIs "map" $val) -}}
{{- fail (printf "extraConfig.%s: `%s` is a table the chart renders; give it a map of further keys" $path $path) -}}
{{- end -}}
{{- include "gb10-provision.checkExtra" (dict "extra" $val "path" $path "owned" $owned) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The daemon configuration as a map: the chart's keys, then extraConfig merged in.
Returned as JSON (templates return strings); fromJson gives the map back.
*/}}
{{- define "gb10-provision.configMap" -}}
{{- include "gb10-provision.validate" . -}}
{{- $v := .Values -}}
{{- $cfg := dict
  "lan_iface" $v.lanIface
  "lan_ip" (toString $v.lanIp)
  "mode" $v.mode
  "data_path" $v.dataPath
  "http_port" (int $v.httpPort)
  "health_port" (int $v.healthPort) -}}
{{- if $v.proxySubnet -}}
{{- $_ := set $cfg "proxy_subnet" $v.proxySubnet -}}
{{- end -}}
{{- $dhcp := dict "lease_time" (toString $v.leaseTime) -}}
{{- if $v.dhcpRange -}}
{{- $_ := set $dhcp "range" $v.dhcpRange -}}
{{- end -}}
{{- $_ := set $cfg "dhcp" $dhcp -}}
{{- $_ := set $cfg "xdp" (dict "mode" $v.xdp.mode) -}}
{{- $admin := dict -}}
{{- if $v.adminTokenSecret -}}
{{- $_ := set $admin "token_file" (printf "%s/token" (include "gb10-provision.adminTokenDir" .)) -}}
{{- end -}}
{{- if $v.bmcCaConfigMap -}}
{{- $_ := set $admin "bmc_ca_file" (printf "%s/ca.crt" (include "gb10-provision.bmcCaDir" .)) -}}
{{- end -}}
{{- if $admin -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- end -}}
{{- $extra := $v.extraConfig | default dict -}}
{{- if not (kindIs "map" $extra) -}}
{{- fail "extraConfig must be a map of config keys and tables (rendered as TOML), not a string" -}}
{{- end -}}
{{- include "gb10-provision.checkExtra" (dict "extra" $extra "path" "" "owned" (include "gb10-provision.ownedKeys" . | fromJson)) -}}
{{- toJson (merge (deepCopy $extra) $cfg) -}}
{{- end }}

{{/*
A TOML key: bare when it can be, else a quoted string.
*/}}
{{- define "gb10-provision.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end }}

{{/*
True ("1") when a value is a non-empty list of maps: a TOML array of tables.
*/}}
{{- define "gb10-provision.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $maps := 0 -}}
{{- range . -}}{{- if kindIs "map" . -}}{{- $maps = add1 $maps -}}{{- end -}}{{- end -}}
{{- if eq $maps (len .) -}}1{{- end -}}
{{- end -}}
{{- end }}

{{/*
Renders one table's body: its plain keys first (TOML puts them under the nearest
header above), then its sub-tables and arrays of tables with full dotted headers.
Scalars and arrays of scalars are written as JSON, which is valid TOML for strings
(JSON escapes are TOML escapes), numbers, booleans and arrays of those.
Input: dict "table" MAP "path" HEADER-PREFIX.
*/}}
{{- define "gb10-provision.tomlBody" -}}
{{- $prefix := .path -}}
{{- range $key, $val := .table -}}
{{- $qkey := include "gb10-provision.tomlKey" $key -}}
{{- $where := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") -}}
{{- if kindIs "invalid" $val -}}
{{- fail (printf "config key %s is null: TOML has no null; remove the key" $where) -}}
{{- else if kindIs "slice" $val -}}
{{- if not (include "gb10-provision.isTableArray" $val) -}}
{{- range $val -}}
{{- if kindIs "map" . -}}
{{- fail (printf "config key %s mixes tables and plain values in one list; TOML cannot say that" $where) -}}
{{- end -}}
{{- end -}}
{{- printf "%s = %s\n" $qkey (toJson $val) -}}
{{- end -}}
{{- else if not (kindIs "map" $val) -}}
{{- printf "%s = %s\n" $qkey (toJson $val) -}}
{{- end -}}
{{- end -}}
{{- range $key, $val := .table -}}
{{- $qkey := include "gb10-provision.tomlKey" $key -}}
{{- $header := ternary $qkey (printf "%s.%s" $prefix $qkey) (eq $prefix "") -}}
{{- if kindIs "map" $val -}}
{{- printf "\n[%s]\n" $header -}}
{{- include "gb10-provision.tomlBody" (dict "table" $val "path" $header) -}}
{{- else if include "gb10-provision.isTableArray" $val -}}
{{- range $val -}}
{{- printf "\n[[%s]]\n" $header -}}
{{- include "gb10-provision.tomlBody" (dict "table" . "path" $header) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The rendered config.toml. The checksum annotation hashes exactly this text.
*/}}
{{- define "gb10-provision.configToml" -}}
{{- printf "# Rendered by the %s chart %s from its values; edit the values, not this.\n" .Chart.Name .Chart.Version -}}
{{- include "gb10-provision.tomlBody" (dict "table" (include "gb10-provision.configMap" . | fromJson) "path" "") -}}
{{- end }}

{{/*
The LAN address known at render time: lanIp's address in direct mode; none in proxy
mode (the site's DHCP lease decides it).
*/}}
{{- define "gb10-provision.lanAddr" -}}
{{- if eq .Values.mode "direct" -}}
{{- (split "/" (toString .Values.lanIp))._0 -}}
{{- end -}}
{{- end }}

{{/*
The install notes (NOTES.txt is this include, so the chart test can render it offline).
*/}}
{{- define "gb10-provision.notes" -}}
{{- $addr := include "gb10-provision.lanAddr" . -}}
{{- $base := printf "http://%s:%d" $addr (int .Values.httpPort) -}}
{{- $clients := ternary (printf "%s/clients" $base) (printf "http://<address>:%d/clients" (int .Values.httpPort)) (ne $addr "") -}}
gb10-provision {{ .Chart.AppVersion }} ({{ .Values.mode }} mode) serves interface {{ .Values.lanIface }}
{{ if .Values.nodeName }}on node {{ .Values.nodeName }}{{ else }}on the nodes labelled {{ toJson .Values.nodeSelector }}{{ end }}.

{{- if $addr }}

On the provisioning LAN (the daemon listens on {{ $addr }} only, not on the node's
other addresses):
  metrics (Prometheus text):  {{ $base }}/metrics   (admin token)
  clients (JSON):             {{ $base }}/clients   (admin token)
  health:                     {{ $base }}/healthz
{{- else }}

The daemon listens on the address {{ .Values.lanIface }} holds on the node (proxy mode:
the site DHCP lease), on port {{ .Values.httpPort }}, and nowhere else:
  metrics (Prometheus text):  http://<{{ .Values.lanIface }} address>:{{ .Values.httpPort }}/metrics   (admin token)
  clients (JSON):             http://<{{ .Values.lanIface }} address>:{{ .Values.httpPort }}/clients   (admin token)
  health:                     http://<{{ .Values.lanIface }} address>:{{ .Values.httpPort }}/healthz
{{- end }}

On the node itself (what the kubelet probes; answers while the LAN has no address):
  readiness, with the reason when not ready: http://127.0.0.1:{{ .Values.healthPort }}/healthz
  liveness:                                  http://127.0.0.1:{{ .Values.healthPort }}/livez
  metrics, no token (Prometheus on the node): http://127.0.0.1:{{ .Values.healthPort }}/metrics

{{ if .Values.adminTokenSecret -}}
The admin token (every route that names clients or hosts needs it on the LAN) is the key
`token` of the Secret {{ .Values.adminTokenSecret }} (read once at start), e.g.
  curl -s -H "Authorization: Bearer $(kubectl -n {{ .Release.Namespace }} get secret {{ .Values.adminTokenSecret }} -o jsonpath='{.data.token}' | base64 -d)" {{ $clients }}
{{- else -}}
The admin token (every route that names clients or hosts needs it on the LAN) is made at
the daemon's first start in {{ .Values.dataPath }}/state/admin-token on the node (0600), e.g.
  curl -s -H "Authorization: Bearer $(cat {{ .Values.dataPath }}/state/admin-token)" {{ $clients }}
{{- end }}
  curl -s http://127.0.0.1:{{ .Values.healthPort }}/metrics | grep gb10_xdp_attached

Pod status and log:
  kubectl -n {{ .Release.Namespace }} get pods -l app.kubernetes.io/instance={{ .Release.Name }} -o wide
  kubectl -n {{ .Release.Namespace }} logs daemonset/{{ include "gb10-provision.fullname" . }}

Served files and state live on the node under {{ .Values.dataPath }} (tftp/, www/,
templates/, inventory.toml, state/).
{{- end }}
