"""Evaluation on PSC6k-format benchmarks: PCK exactly as the release computes it, the evaluation loop with the
identity baseline and per-class table, the paper's consistency measure, the synthetic ground truth, and the
flow probe (what the stage-2 loss alone reaches with an encoder's features).

    from pscfast.evaluation import evaluate
    result = evaluate(predict_fn, PSCTestPairs(root, csv))   # result["pck05"], result["pck10"]
"""
from pscfast.evaluation.ground_truth import GroundTruthFlows
from pscfast.evaluation.loop import evaluate, format_table
from pscfast.evaluation.pck import consistency, pair_scores, pck, transfer_keypoints, upsample_flow
from pscfast.evaluation.probe import FlowProbe

__all__ = ["FlowProbe", "GroundTruthFlows", "evaluate", "format_table", "consistency", "pair_scores", "pck",
           "transfer_keypoints", "upsample_flow"]
