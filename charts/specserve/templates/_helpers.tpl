{{/* Names and labels shared by every template. */}}

{{- define "specserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "specserve.fullname" -}}
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

{{/* A component's object name: <fullname>-<component>, at most 63 characters. */}}
{{- define "specserve.componentName" -}}
{{- printf "%s-%s" (include "specserve.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "specserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "specserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: specserve
{{- end -}}

{{/* Selector labels of one component (immutable in a Deployment: keep them minimal). */}}
{{- define "specserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "specserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "specserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "specserve.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "specserve.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "specserve.gatewayServiceAccount" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "specserve.componentName" (dict "root" . "component" "gateway")) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The label that selects SpecServe engine pods (set by the operator on every engine pod). */}}
{{- define "specserve.enginePodSelector" -}}
app.kubernetes.io/name: specserve-engine
{{- end -}}

{{/*
Least-privilege rules of the operator: exactly the verbs of operator/specserve_operator
(kopf: list/watch/patch on the resource, patch on its status, create events, list/watch on the
children it keeps in indexes; handlers: get, create, patch, delete on the children it owns).
tests/chart checks them against the kinds the operator's manifests produce.
*/}}
{{- define "specserve.operatorRules" -}}
# Watch SpecServeDeployments; kopf patches them (its finalizer, which guards the timers, and
# progress annotations).
- apiGroups: ["specserve.io"]
  resources: ["specservedeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["specserve.io"]
  resources: ["specservedeployments/status"]
  verbs: ["patch"]
# The children's owner references set blockOwnerDeletion: true; with the
# OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and many managed
# clusters) that needs update on the owner's finalizers, else creating a child is refused (403).
- apiGroups: ["specserve.io"]
  resources: ["specservedeployments/finalizers"]
  verbs: ["update"]
# The children of each SpecServeDeployment (no delete: the garbage collector removes them
# through their owner references; the one exception is below). list/watch: kopf keeps them in
# memory (only those with the operator's managed-by label) for the status timer's drift check.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The engine pods' PodDisruptionBudget; delete only when a resource's spec turns it off
# (disruptionBudget.enabled: false), and only the one that resource owns.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# (The control-token Secrets: specserve.operatorSecretRules, granted next to these.)
# The SLO loop pushes the policy to every ready engine pod: kopf lists and watches them (only
# the engine pods, by label) into memory; the loop lists them itself when that lags.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events on the resources (Created, Updated, InvalidSpec, kopf's warnings).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.operator.manageServiceMonitors }}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- if and .Values.operator.peering.enabled .Values.watchNamespaces }}
# Peering (which replica acts): kopf watches the KopfPeering of each watched namespace and
# patches its own keep-alive into it.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
The control-token Secret of each resource: created once, read to push, never patched. RBAC
cannot narrow this by name (`create` has no name to match, and the names are per resource) nor
by label, only by namespace: granted in each of watchNamespaces, or, watching all of them, in
each of operator.secretNamespaces; cluster-wide only with operator.clusterWideSecrets
(docs/helm.md#secrets).
*/}}
{{- define "specserve.operatorSecretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
{{- end -}}

{{/*
Where the Secret rights cover every watched namespace (watchNamespaces, or all namespaces with
operator.clusterWideSecrets), kopf also lists and watches the control-token Secrets (only those
with the operator's managed-by label, server-side; RBAC cannot narrow it) so that the SLO loop
reads its token from memory: SPECSERVE_WATCH_SECRETS. Not with operator.secretNamespaces (a
cluster-wide watch there would be refused): the loop GETs the token.
*/}}
{{- define "specserve.operatorWatchesSecrets" -}}
{{- if or .Values.watchNamespaces (and .Values.operator.clusterWideSecrets (not .Values.operator.secretNamespaces)) -}}
true
{{- end -}}
{{- end -}}

{{- define "specserve.operatorSecretWatchRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* kopf notices CRDs being added or removed (read-only, cluster-scoped by nature). */}}
{{- define "specserve.operatorClusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# At start-up the operator reads its own CRD's schema version (and refuses an older CRD).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["specservedeployments.specserve.io"]
  verbs: ["get"]
{{- if and .Values.operator.peering.enabled (not .Values.watchNamespaces) }}
# Peering (which replica acts) of an operator watching all namespaces: the ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* The peering object's name: operator.peering.name, else the operator's own name. */}}
{{- define "specserve.peeringName" -}}
{{- default (include "specserve.componentName" (dict "root" . "component" "operator")) .Values.operator.peering.name -}}
{{- end -}}

{{/* The gateway only reads: which models exist and which engine pods are ready. */}}
{{- define "specserve.gatewayRules" -}}
- apiGroups: ["specserve.io"]
  resources: ["specservedeployments"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* The gateway pod's terminationGracePeriodSeconds: its preStop sleep, the longest wait for a
backend's next bytes (readTimeoutSeconds, rounded up) and 10 s to close. */}}
{{- define "specserve.gatewayGracePeriod" -}}
{{- add (int .Values.gateway.preStopSleepSeconds) (int (ceil .Values.gateway.readTimeoutSeconds)) 10 -}}
{{- end -}}

{{/* The namespaces with engine pods: networkPolicy.namespaces, else watchNamespaces, else
operator.secretNamespaces (the only ones the operator can reconcile in then). */}}
{{- define "specserve.engineNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default .Values.operator.secretNamespaces -}}
{{- toJson ($ns | default list) -}}
{{- end -}}
