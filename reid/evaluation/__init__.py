"""Evaluation: re-identification ranking metrics (CMC, mAP, mINP) and their plots."""

from reid.evaluation.rank_metrics import rank_metrics

__all__ = ["rank_metrics"]
