"""Start-up check: is the SpecServeDeployment CRD in the cluster the one this operator needs?

Helm installs a chart's `crds/` once and never upgrades them, and a hand-applied CRD stays
whatever was applied; an operator newer than its CRD then runs against a schema that prunes
fields it writes or lacks rules it relies on, and nothing says so. crdgen records
`specserve_contract.CRD_SCHEMA_VERSION` in the CRD's annotation ANNOTATION_SCHEMA_VERSION;
at start-up the operator reads the CRD (`get` on that one CustomResourceDefinition, granted by
name in the chart) and refuses to start when the CRD is missing or older (`problem`). A newer
CRD is accepted (an older operator after a rollback: schema changes keep old fields).
"""

from __future__ import annotations

from typing import Any

from specserve_contract import ANNOTATION_SCHEMA_VERSION, CRD_SCHEMA_VERSION, GROUP, PLURAL

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
UPGRADE_HINT = ("upgrade the chart (its CRD is a template with crds.install: true) or "
                "`kubectl apply --server-side -f crds/specserve.io_specservedeployments.yaml`")


def schema_version(crd: dict[str, Any]) -> int:
    """The CRD's schema version; 0 for a CRD from before the annotation (or a garbled one)."""
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(ANNOTATION_SCHEMA_VERSION, "0"))
    except (TypeError, ValueError):
        return 0


def problem(crd: dict[str, Any] | None, needed: int = CRD_SCHEMA_VERSION) -> str | None:
    """Why the operator must not run against this CRD (None when it may), in one line."""
    if crd is None:
        return f"the CRD {CRD_NAME} is not installed: {UPGRADE_HINT}"
    found = schema_version(crd)
    if found < needed:
        return (f"the CRD {CRD_NAME} has schema version {found} ({ANNOTATION_SCHEMA_VERSION}), "
                f"this operator needs {needed}: {UPGRADE_HINT}")
    return None


def describe(crd: dict[str, Any], needed: int = CRD_SCHEMA_VERSION) -> str:
    """The log line of a CRD the operator accepts."""
    found = schema_version(crd)
    newer = " (newer than this operator's: fine)" if found > needed else ""
    return f"the CRD {CRD_NAME} has schema version {found}{newer}; this operator needs {needed}"
