"""SpecServe gateway: one OpenAI-compatible endpoint for every model served in the cluster.

    python -m specserve_gateway --port 8080 --backend tiny=http://127.0.0.1:8000
    python -m specserve_gateway --port 8080 --kubernetes        # in a pod: watch the cluster

`routing` is pure (route table, least-outstanding choice, OpenAI-shaped errors), `sources` turns
flags, files or the Kubernetes API into route tables, `app` is the thin ASGI proxy.
"""
