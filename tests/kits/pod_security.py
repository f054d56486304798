"""What Pod Security Admission and OpenShift's SCC admission would say of a pod spec.

kmock admits any pod; a real cluster with the namespace label
`pod-security.kubernetes.io/enforce: restricted` (or OpenShift, whose default SCC for a
namespace's pods is `restricted-v2`) refuses the engine pods the Deployment asks for, and the
Deployment then reports only a ReplicaFailure. These checks encode both, so a manifest test
fails where the cluster would.

Sources:
  restricted    Kubernetes docs, "Pod Security Standards" (concepts/security/pod-security-
                standards, v1.32): the Baseline policy's controls (host namespaces, privileged,
                capabilities, hostPath, hostPorts, AppArmor, SELinux, /proc mount, seccomp,
                sysctls) plus the Restricted policy's (volume types, privilege escalation,
                running as non-root, non-root user, seccomp, capabilities). Implemented by
                k8s.io/pod-security-admission/policy (check_*.go); a container-level field
                overrides the pod-level one (runAsNonRoot, seccompProfile).
  restricted-v2 OpenShift docs, "Managing security context constraints" (4.14+): the
                restricted-v2 SCC: runAsUser MustRunAsRange, seLinuxContext MustRunAs,
                fsGroup MustRunAs, supplementalGroups RunAsAny, allowPrivilegeEscalation false,
                requiredDropCapabilities [ALL], allowedCapabilities [NET_BIND_SERVICE],
                seccompProfiles [runtime/default], no host namespaces/ports/privileged,
                volumes [configMap, csi, downwardAPI, emptyDir, ephemeral,
                persistentVolumeClaim, projected, secret]. The UID (and fsGroup) come from
                the namespace's `openshift.io/sa.scc.uid-range` annotation: a pod that sets
                none is given the range's first; one that sets a value outside it is refused.
"""

from __future__ import annotations

from typing import Any

# Restricted: "Volume Types" (every other type, hostPath included, is refused).
RESTRICTED_VOLUMES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                "persistentVolumeClaim", "projected", "secret"})
# Baseline: "Capabilities" (what a container may add); Restricted allows only NET_BIND_SERVICE.
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Baseline: "Sysctls" (the safe set).
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
# An OpenShift namespace's UID range (`openshift.io/sa.scc.uid-range: 1000680000/10000`).
DEFAULT_UID_RANGE = (1_000_680_000, 10_000)


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []),
            *pod.get("ephemeralContainers", [])]


def _volume_type(volume: dict[str, Any]) -> str:
    types = [k for k in volume if k != "name"]
    return types[0] if len(types) == 1 else f"<{'+'.join(types) or 'none'}>"


def baseline_problems(pod: dict[str, Any]) -> list[str]:
    """The Baseline policy's violations of a pod spec (empty: admitted)."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} must be false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("windowsOptions.hostProcess must be false")
    for v in pod.get("volumes", []):
        if "hostPath" in v:
            out.append(f"volume {v['name']}: hostPath is not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    contexts = [("pod", psc)]
    for c in _containers(pod):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        contexts.append((f"container {name}", sc))
        if sc.get("privileged"):
            out.append(f"container {name}: privileged must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"container {name}: windowsOptions.hostProcess must be false")
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if cap not in BASELINE_CAPABILITIES:
                out.append(f"container {name}: capability {cap} may not be added")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"container {name}: hostPort must be unset or 0")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"container {name}: procMount must be Default")
    for where, sc in contexts:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: seccompProfile Unconfined is not allowed")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: appArmorProfile Unconfined is not allowed")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}: seLinuxOptions not allowed")
    return out


def restricted_problems(pod: dict[str, Any]) -> list[str]:
    """The Restricted policy's violations (Baseline's included) of a pod spec."""
    out = baseline_problems(pod)
    psc = pod.get("securityContext") or {}
    for v in pod.get("volumes", []):
        kind = _volume_type(v)
        if kind not in RESTRICTED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {kind} is not allowed")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser must not be 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for c in _containers(pod):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"container {name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"container {name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"container {name}: seccompProfile must be RuntimeDefault or Localhost "
                       "(pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"container {name}: capabilities must drop ALL")
        for cap in caps.get("add") or []:
            if cap not in RESTRICTED_CAPABILITIES:
                out.append(f"container {name}: only NET_BIND_SERVICE may be added, not {cap}")
    return out


def openshift_restricted_v2_problems(
        pod: dict[str, Any], uid_range: tuple[int, int] = DEFAULT_UID_RANGE) -> list[str]:
    """What the restricted-v2 SCC refuses in a pod spec, in a namespace with `uid_range`
    (first UID, count). Fixed IDs are the usual failure: a runAsUser, runAsGroup or fsGroup
    outside the range (an image's USER is fine: the SCC overrides it with the range's UID)."""
    out: list[str] = []
    first, count = uid_range
    psc = pod.get("securityContext") or {}

    def in_range(value: Any) -> bool:
        return value is None or first <= value < first + count

    for field in ("runAsUser", "fsGroup"):
        if not in_range(psc.get(field)):
            out.append(f"pod: {field} {psc[field]} is outside the namespace's range "
                       f"{first}/{count}")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} is not allowed")
    for v in pod.get("volumes", []):
        kind = _volume_type(v)
        if kind not in RESTRICTED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {kind} is not allowed")
    seccomp_pod = (psc.get("seccompProfile") or {}).get("type")
    for c in _containers(pod):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if not in_range(sc.get("runAsUser")):
            out.append(f"container {name}: runAsUser {sc['runAsUser']} is outside the "
                       f"namespace's range {first}/{count}")
        if sc.get("privileged"):
            out.append(f"container {name}: privileged is not allowed")
        if sc.get("allowPrivilegeEscalation") is True:
            out.append(f"container {name}: allowPrivilegeEscalation must be false")
        for cap in (sc.get("capabilities") or {}).get("add") or []:
            if cap != "NET_BIND_SERVICE":
                out.append(f"container {name}: capability {cap} may not be added")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"container {name}: hostPort is not allowed")
        seccomp = (sc.get("seccompProfile") or {}).get("type", seccomp_pod)
        if seccomp not in (None, "RuntimeDefault"):
            out.append(f"container {name}: seccompProfile must be runtime/default")
    return out
