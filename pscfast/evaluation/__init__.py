"""Evaluation on PSC6k-format benchmarks: PCK exactly as the release computes it, the evaluation loop with the
identity baseline and per-class table, the paper's consistency measure, the predictors of a model and of the
identity, the synthetic ground truth, the flow probe (what the stage-2 loss alone reaches with an encoder's
features), nearest-neighbour feature matching (the flow with no estimator) and the mismatched-photo baseline
of any predictor.

    from pscfast.evaluation import evaluate
    result = evaluate(predict_fn, PSCTestPairs(root, csv))   # result["pck05"], result["pck10"]
"""
from pscfast.evaluation.ground_truth import GroundTruthFlows
from pscfast.evaluation.loop import evaluate, format_table
from pscfast.evaluation.matching import FeatureMatch, match_flow
from pscfast.evaluation.mismatch import Mismatched
from pscfast.evaluation.pck import consistency, pair_scores, pck, transfer_keypoints, upsample_flow
from pscfast.evaluation.predictor import identity_predictor, model_predictor
from pscfast.evaluation.probe import FlowProbe

__all__ = ["FeatureMatch", "FlowProbe", "GroundTruthFlows", "Mismatched", "evaluate", "format_table", "consistency",
           "identity_predictor", "match_flow", "model_predictor", "pair_scores", "pck", "transfer_keypoints",
           "upsample_flow"]
