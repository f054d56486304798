"""``--worker-cls specserve_engine.vllm.gpu_worker.SpecServeGPUWorker`` (official GPU image)."""

from vllm.v1.worker.gpu_worker import Worker

from specserve_engine.vllm.worker import DraftConfidenceMixin


class SpecServeGPUWorker(DraftConfidenceMixin, Worker):
    """vLLM's GPU worker, plus draft-confidence capture."""
