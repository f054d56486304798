"""``--worker-cls specserve_engine.vllm.cpu_worker.SpecServeCPUWorker`` (vLLM CPU build)."""

from vllm.v1.worker.cpu_worker import CPUWorker

from specserve_engine.vllm.worker import DraftConfidenceMixin


class SpecServeCPUWorker(DraftConfidenceMixin, CPUWorker):
    """vLLM's CPU worker, plus draft-confidence capture."""
